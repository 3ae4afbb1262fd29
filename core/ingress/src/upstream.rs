//! Keep-alive connections to backends.
//!
//! Each backend keeps its idle connections itself (so they go away with the backend), in
//! one stack per ingress thread: a thread reuses the connections its own runtime drives,
//! and borrows another thread's only when it has none, so in the steady state a request
//! never wakes another thread.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// An open connection to a backend, between two exchanges.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// The ingress thread whose runtime drives the socket: its idle stack is where the
    /// connection goes back, whichever thread used it last.
    shard: usize,
    /// It came from the idle stack (so the backend may have closed it meanwhile).
    pub(crate) reused: bool,
}

/// A connection idle for longer than this is closed instead of reused: the backend may
/// be about to close it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to the backend timed out")]
    Timeout,
    #[error("connecting to the backend failed")]
    Io(#[source] io::Error),
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// The idle connections to one backend, one stack per ingress thread (`shard`).
#[derive(Default)]
pub(crate) struct IdleConns(Mutex<Vec<Stack>>);

#[derive(Default)]
struct Stack {
    idle: Vec<Idle>,
    /// The thread has had connections of its own to this backend: from then on it opens
    /// more rather than borrow another thread's.
    owns: bool,
}

impl IdleConns {
    // A poisoned lock only means a panic happened while holding it; the stacks stay
    // consistent (a push or a pop), so keep using them.
    fn lock(&self) -> MutexGuard<'_, Vec<Stack>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection that still looks open: the most recently used of `shard`'s, or
    /// another thread's as long as `shard` never had one of its own.
    pub(crate) fn take(&self, shard: usize) -> Option<Conn> {
        let mut stacks = self.lock();
        if let Some(own) = stacks.get_mut(shard)
            && own.owns
        {
            return pop_open(&mut own.idle).map(|stream| Conn { stream, shard, reused: true });
        }
        // Borrowing keeps a little-used backend at one connection, however the client
        // connections spread over the threads; each request on it wakes the owner thread,
        // so a busy thread opens its own connections instead.
        stacks
            .iter_mut()
            .enumerate()
            .find_map(|(shard, stack)| Some(Conn { stream: pop_open(&mut stack.idle)?, shard, reused: true }))
    }

    /// Keeps `conn` for the next request; call it only between two complete exchanges.
    pub(crate) fn put(&self, conn: Conn) {
        let Conn { stream, shard, .. } = conn;
        let idle = Idle { stream, since: Instant::now() };
        let mut stacks = self.lock();
        if stacks.len() <= shard {
            stacks.resize_with(shard + 1, Stack::default);
        }
        let stack = &mut stacks[shard];
        stack.owns = true;
        stack.idle.push(idle);
    }
}

/// Pops connections until one is still open; the others (closed by the backend, idle too
/// long, or with unexpected bytes on them) are dropped, which closes them.
fn pop_open(stack: &mut Vec<Idle>) -> Option<TcpStream> {
    while let Some(idle) = stack.pop() {
        if idle.since.elapsed() >= IDLE_TIMEOUT {
            // The stack is most recent on top: everything below is older still.
            stack.clear();
            return None;
        }
        // Nothing may be readable on an idle connection: an end of stream means the
        // backend closed it. This costs a system call only when the socket was reported
        // readable since its last exchange.
        match idle.stream.try_read(&mut [0u8; 1]) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Some(idle.stream),
            _ => continue,
        }
    }
    None
}

/// Opens a new connection to `addr`, registered with the calling thread's runtime, the
/// one of ingress thread `shard`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration, shard: usize) -> Result<Conn, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(ConnectError::Io(err)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    // Small request/response exchanges must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(Conn { stream, shard, reused: false })
}
