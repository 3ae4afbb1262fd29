//! Splitting a child's output into lines for a `LogSink`, with bounded memory.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longer lines are cut into pieces of this many bytes, so that output without newlines
/// cannot grow memory without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;

pub(crate) struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Lines { reader: BufReader::new(reader), buf: Vec::new() }
    }

    /// The next line without its line ending, invalid UTF-8 replaced; `None` at the end.
    /// A read error ends the stream too: the output is lost, the process is unaffected.
    pub(crate) async fn next_line(&mut self) -> Option<String> {
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::debug!(error = %err, "reading process output");
                    return self.take_rest();
                }
            };
            if available.is_empty() {
                return self.take_rest();
            }
            let room = MAX_LINE_BYTES - self.buf.len();
            let window = &available[..available.len().min(room)];
            if let Some(end) = window.iter().position(|&b| b == b'\n') {
                self.buf.extend_from_slice(&window[..end]);
                self.reader.consume(end + 1);
                return Some(self.take_line());
            }
            let taken = window.len();
            self.buf.extend_from_slice(window);
            self.reader.consume(taken);
            if self.buf.len() >= MAX_LINE_BYTES {
                return Some(self.take_line());
            }
        }
    }

    fn take_rest(&mut self) -> Option<String> {
        if self.buf.is_empty() { None } else { Some(self.take_line()) }
    }

    fn take_line(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8]) -> Vec<String> {
        let mut lines = Lines::new(input);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_lines() {
        assert_eq!(all(b"a\nb\r\n\nlast").await, ["a", "b", "", "last"]);
        assert_eq!(all(b"").await, Vec::<String>::new());
        assert_eq!(all(b"\xffbad\n").await, ["\u{fffd}bad"]);
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 3];
        let lens: Vec<usize> = all(&long).await.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE_BYTES, MAX_LINE_BYTES, 3]);
    }
}
