//! The hyper server of the static file server (HTTP/1.1 with keep-alive, and a graceful
//! stop), and the accept loop it shares with the proxy.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The future whose end stops a server, boxed so that no serving code is generic over it.
pub(crate) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A serving future as the public entry points return it: made and boxed (coerced to
/// `dyn Future`) in a non-generic function of this crate, so that its code is compiled here,
/// at this crate's opt-level. An `async fn` returned as it is would be compiled in the
/// caller's crate (an async body is instantiated wherever it is polled), and the binary's
/// crate builds at opt-level 0 (the workspace's release profile).
pub type Serving<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves connections from `listener` until `shutdown` resolves, then asks every open
/// connection to finish its current request and waits up to `grace` for them.
pub(crate) async fn run<F, S>(listener: TcpListener, shutdown: Shutdown, grace: Duration, mut make_service: F)
where
    F: FnMut(SocketAddr) -> S,
    S: HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as Body>::Data: Send,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = Connections::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        connections.serve(stream, peer, make_service(peer));
    }
    drop(listener);
    connections.finish(grace).await;
}

/// The next connection on `listener`.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(err) => {
                // Usually EMFILE: back off instead of spinning on the error.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The HTTP connections being served, each in a task of its own, and their graceful stop.
struct Connections {
    builder: http1::Builder,
    // Every connection task holds a receiver; `closed()` on the sender then tells when the
    // last one is gone.
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
}

impl Connections {
    fn new() -> Self {
        let mut builder = http1::Builder::new();
        // The timer enables hyper's header read timeout, which closes idle slow-loris sockets.
        builder.keep_alive(true).timer(TokioTimer::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        Connections { builder, stop_tx, stop_rx }
    }

    /// Serves HTTP on `stream` in a new task.
    fn serve<S>(&self, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: HttpService<Incoming> + Send + 'static,
        S::Future: Send + 'static,
        S::ResBody: Send + 'static,
        <S::ResBody as Body>::Data: Send,
        <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Small request/response exchanges must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let conn = self.builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let mut stop = self.stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(err) = res {
                        tracing::debug!(error = %err, %peer, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed() => {}
            }
            conn.as_mut().graceful_shutdown();
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
            drop(stop);
        });
    }

    /// Asks every connection to finish its current request and waits up to `grace` for
    /// them to close.
    async fn finish(self, grace: Duration) {
        let Connections { stop_tx, stop_rx, .. } = self;
        drop(stop_rx);
        let _ = stop_tx.send(true);
        if tokio::time::timeout(grace, stop_tx.closed()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period");
        }
    }
}
