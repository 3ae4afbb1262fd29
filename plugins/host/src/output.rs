//! Where a hook's words go: its `log` calls and its stdout/stderr become lines of the push
//! output and the build log, through a channel the async side drains while the guest runs.
//! A guest cannot flood the log: past a budget of lines, the rest is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The most lines one invocation may write; beyond, lines are dropped.
const MAX_LINES: usize = 1000;
/// Longer lines are cut.
const MAX_LINE_CHARS: usize = 2000;
/// Lines of stderr kept to explain a crash (a panic message).
const STDERR_TAIL: usize = 4;

struct Inner {
    tx: UnboundedSender<String>,
    left: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stderr_tail: VecDeque<String>,
}

/// The shared output of one invocation.
#[derive(Clone)]
pub(crate) struct Output {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Output {
    pub(crate) fn new(tx: UnboundedSender<String>) -> Output {
        Output {
            inner: Arc::new(Mutex::new(Inner {
                tx,
                left: MAX_LINES,
                stdout: Vec::new(),
                stderr: Vec::new(),
                stderr_tail: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another writer panicked mid-line; the text is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One line the hook logged.
    pub(crate) fn line(&self, line: &str) {
        self.lock().send(line);
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let buffer = match stream {
            Stream::Stdout => &mut inner.stdout,
            Stream::Stderr => &mut inner.stderr,
        };
        buffer.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        // A guest that never ends a line still may not grow the buffer without bound.
        if buffer.len() > MAX_LINE_CHARS * 4 {
            let line: Vec<u8> = std::mem::take(buffer);
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        for line in lines {
            if let Stream::Stderr = stream {
                inner.remember(&line);
            }
            inner.send(&line);
        }
    }

    /// Sends what is left without a newline; called once the guest returned.
    pub(crate) fn finish(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = match stream {
                Stream::Stdout => std::mem::take(&mut inner.stdout),
                Stream::Stderr => std::mem::take(&mut inner.stderr),
            };
            if !rest.is_empty() {
                let line = String::from_utf8_lossy(&rest).into_owned();
                if let Stream::Stderr = stream {
                    inner.remember(&line);
                }
                inner.send(&line);
            }
        }
    }

    /// The last lines the guest wrote to stderr (a panic message, typically).
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.lock().stderr_tail.iter().cloned().collect()
    }

    pub(crate) fn pipe(&self, stream: Stream) -> Pipe {
        Pipe { output: self.clone(), stream }
    }
}

impl Inner {
    fn send(&mut self, line: &str) {
        if self.left == 0 {
            return;
        }
        self.left -= 1;
        let line = if line.chars().count() > MAX_LINE_CHARS {
            let cut: String = line.chars().take(MAX_LINE_CHARS).collect();
            format!("{cut}…")
        } else {
            line.to_owned()
        };
        let line = if self.left == 0 { format!("{line} (output limit reached; the rest is dropped)") } else { line };
        // The receiver is gone only when the caller stopped waiting (a timeout); drop it.
        let _ = self.tx.send(line);
    }

    fn remember(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if self.stderr_tail.len() == STDERR_TAIL {
            self.stderr_tail.pop_front();
        }
        self.stderr_tail.push_back(line.chars().take(MAX_LINE_CHARS).collect());
    }
}

/// A guest's stdout or stderr.
pub(crate) struct Pipe {
    output: Output,
    stream: Stream,
}

impl Clone for Pipe {
    fn clone(&self) -> Self {
        Pipe { output: self.output.clone(), stream: self.stream }
    }
}

impl IsTerminal for Pipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Pipe {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Pipe {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Pipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.output.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
