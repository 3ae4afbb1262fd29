//! The API's cap on open connections: a listener that hands axum at most `limit`
//! connections at once and answers the ones past it itself.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ErrorBody, ErrorDetail};

/// Connections past the cap being answered their `503` at once. Each is held for at most
/// [`REFUSAL_LINGER`]; past this many, a connection over the cap is closed without a word.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is held: to send the answer, then to read and drop what
/// the client sent, so that closing does not reset the connection before it read the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL_LINGER_BYTES: usize = 64 * 1024;

/// A `TcpListener` that gives out at most `limit` connections at once. A connection holds
/// its place until axum drops it.
pub(crate) struct CappedListener {
    inner: TcpListener,
    open: Arc<Semaphore>,
    limit: usize,
    refusing: Arc<Semaphore>,
    /// The whole `503` answer, made once.
    refusal: Arc<[u8]>,
    /// When a refusal was last logged: a flood of them is said once a minute, not once each.
    warned: Option<Instant>,
}

impl CappedListener {
    pub(crate) fn new(inner: TcpListener, limit: NonZeroUsize) -> Self {
        CappedListener {
            inner,
            // A semaphore holds at most MAX_PERMITS; no machine has that many descriptors.
            open: Arc::new(Semaphore::new(limit.get().min(Semaphore::MAX_PERMITS))),
            limit: limit.get(),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            refusal: refusal().into(),
            warned: None,
        }
    }

    fn refuse(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            self.warned = Some(Instant::now());
            tracing::warn!(%peer, limit = self.limit,
                "too many open API connections: answering new ones 503 until some close ([api] max_connections)");
        }
        if let Ok(refusing) = self.refusing.clone().try_acquire_owned() {
            let refusal = Arc::clone(&self.refusal);
            tokio::spawn(async move {
                linger(stream, &refusal).await;
                drop(refusing);
            });
        }
    }
}

impl Listener for CappedListener {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // axum's own accept, which backs off on errors (out of descriptors).
            let (stream, peer) = Listener::accept(&mut self.inner).await;
            match self.open.clone().try_acquire_owned() {
                Ok(place) => return (Counted { stream, _place: place }, peer),
                Err(_) => self.refuse(stream, peer),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The answer past the cap: `503`, the API's error body, and when to try again.
fn refusal() -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "too_many_connections".to_owned(),
            message: "the server has too many open connections: try again shortly".to_owned(),
        },
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `answer`, then reads and drops what the client sent, within [`REFUSAL_LINGER`].
async fn linger(mut stream: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < REFUSAL_LINGER_BYTES {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// A connection holding its place under the cap until it is dropped.
pub(crate) struct Counted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get;

    use super::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n";

    /// An API serving the peer's address at `/`, capped at `cap` connections.
    async fn start(cap: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }));
        let cap = NonZeroUsize::new(cap).expect("not zero");
        tokio::spawn(crate::serve_router(listener, app, cap, std::future::pending()));
        addr
    }

    /// Reads until `stream` has sent a whole answer ending with `tail`, or closed.
    async fn read_answer(stream: &mut TcpStream, tail: &[u8]) -> String {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(tail) {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A new connection that was served, tried every 20 ms for at most 2 s.
    async fn open_when_served(api: SocketAddr) -> TcpStream {
        for _ in 0..100 {
            let mut stream = TcpStream::connect(api).await.expect("connect");
            stream.write_all(REQUEST).await.expect("write");
            let answer = read_answer(&mut stream, b"\r\n\r\n127.0.0.1").await;
            if answer.starts_with("HTTP/1.1 200") {
                return stream;
            }
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no connection was served within 2 s of one closing");
    }

    #[tokio::test]
    async fn any_cap_is_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let capped = CappedListener::new(listener, NonZeroUsize::MAX);
        assert_eq!(capped.limit, usize::MAX);
    }

    #[tokio::test]
    async fn past_the_cap_a_new_connection_gets_503_with_the_error_body_until_one_closes() {
        const CAP: usize = 3;
        let api = start(CAP).await;
        // CAP connections, each served once (with its peer address), then left idle.
        let mut held = Vec::new();
        for _ in 0..CAP {
            let mut stream = TcpStream::connect(api).await.expect("connect");
            stream.write_all(REQUEST).await.expect("write");
            let answer = read_answer(&mut stream, b"\r\n\r\n127.0.0.1").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            held.push(stream);
        }

        // One more: 503, the error body naming the reason, when to retry, then closed.
        let mut extra = TcpStream::connect(api).await.expect("connect");
        extra.write_all(REQUEST).await.expect("write");
        let answer = read_answer(&mut extra, b"\0never").await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("too many open connections")), "{body}");

        // Once one closes, a new connection is served and takes the freed place.
        drop(held.pop());
        held.push(open_when_served(api).await);
        let mut again = TcpStream::connect(api).await.expect("connect");
        again.write_all(REQUEST).await.expect("write");
        assert!(read_answer(&mut again, b"\0never").await.starts_with("HTTP/1.1 503"), "the cap is full again");
        // The held ones are still served.
        for stream in &mut held {
            stream.write_all(REQUEST).await.expect("write");
            assert!(read_answer(stream, b"\r\n\r\n127.0.0.1").await.starts_with("HTTP/1.1 200"));
        }
    }
}
