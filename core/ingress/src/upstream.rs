//! Keep-alive HTTP/1.1 connections to backends.
//!
//! Each backend keeps its idle connections itself (so they go away with the backend), in
//! one stack per ingress thread: a thread reuses the connections its own runtime drives,
//! and borrows another thread's only when it has none, so in the steady state a request
//! never wakes another thread. This replaces hyper-util's shared pool, whose checkout,
//! locking and extra connection tasks were a visible part of the per-request cost.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends requests on one backend connection.
pub(crate) struct Sender {
    pub(crate) send: http1::SendRequest<Incoming>,
    /// The ingress thread whose runtime drives the connection: its idle stack is where
    /// the connection goes back, whichever thread used it last.
    shard: usize,
}

/// A connection idle for longer than this is closed instead of reused, as hyper-util's
/// pool did: the backend may be about to close it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to the backend timed out")]
    Timeout,
    #[error("connecting to the backend failed")]
    Io(#[source] io::Error),
    #[error("HTTP handshake with the backend failed")]
    Handshake(#[source] hyper::Error),
}

struct Idle {
    send: http1::SendRequest<Incoming>,
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

    /// An idle connection ready for a request: the most recently used of `shard`'s, or
    /// another thread's as long as `shard` never had one of its own.
    pub(crate) fn take(&self, shard: usize) -> Option<Sender> {
        let mut stacks = self.lock();
        if let Some(own) = stacks.get_mut(shard)
            && own.owns
        {
            return pop_ready(&mut own.idle).map(|send| Sender { send, shard });
        }
        // Borrowing keeps a little-used backend at one connection, however the client
        // connections spread over the threads; each request on it wakes the owner thread,
        // so a busy thread opens its own connections instead.
        stacks
            .iter_mut()
            .enumerate()
            .find_map(|(shard, stack)| Some(Sender { send: pop_ready(&mut stack.idle)?, shard }))
    }

    /// Keeps `sender` for the next request; call it once its previous exchange is over.
    pub(crate) fn put(&self, sender: Sender) {
        let Sender { send, shard } = sender;
        let idle = Idle { send, since: Instant::now() };
        let mut stacks = self.lock();
        if stacks.len() <= shard {
            stacks.resize_with(shard + 1, Stack::default);
        }
        let stack = &mut stacks[shard];
        stack.owns = true;
        stack.idle.push(idle);
    }
}

/// Pops connections until one is ready; the others (closed by the backend, or still busy
/// because their exchange ended abnormally) are dropped, which closes them.
fn pop_ready(stack: &mut Vec<Idle>) -> Option<http1::SendRequest<Incoming>> {
    while let Some(idle) = stack.pop() {
        if idle.since.elapsed() >= IDLE_TIMEOUT {
            // The stack is most recent on top: everything below is older still.
            stack.clear();
            return None;
        }
        if idle.send.is_ready() {
            return Some(idle.send);
        }
    }
    None
}

/// Opens a new connection to `addr`, driven by a task on the calling thread's runtime,
/// the one of ingress thread `shard`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration, shard: usize) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(ConnectError::Io(err)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    // Small request/response exchanges must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, backend = %addr, "backend connection ended with an error");
        }
    });
    Ok(Sender { send, shard })
}
