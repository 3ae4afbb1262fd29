//! Real sockets for the ingress tests: tiny hyper backends, an HTTP client, raw TCP.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use paastech_ingress::{IngressConfig, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const DOMAIN: &str = "apps.test";

pub type TestBody = BoxBody<Bytes, hyper::Error>;
pub type ClientBody = BoxBody<Bytes, Infallible>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// An ingress on a random port, serving `DOMAIN`, until the test's runtime ends.
pub async fn start_ingress() -> (SocketAddr, RouteTable) {
    start_ingress_with(IngressConfig::new(DOMAIN)).await
}

/// [`start_ingress`] with another configuration (its domain should be `DOMAIN`).
pub async fn start_ingress_with(config: IngressConfig) -> (SocketAddr, RouteTable) {
    let listener = listen_loopback().await;
    let addr = listener.local_addr().expect("ingress addr");
    let table = RouteTable::new();
    tokio::spawn(paastech_ingress::serve(listener, config, table.clone(), std::future::pending()));
    (addr, table)
}

/// A listener on a loopback port below the kernel's ephemeral range, where the platform
/// puts apps too (`paastech_core::ports`). A port from that range (`127.0.0.1:0`) is also
/// the local end of client connections: with hundreds of connections a test, a connect to
/// a new listener there now and then meets a TIME_WAIT of an earlier connection with the
/// same two ports, and is refused.
pub async fn listen_loopback() -> TcpListener {
    for _ in 0..20 {
        let port = paastech_core::ports::free_loopback_port().expect("a free port");
        // Another test process may bind it between the check and here: the next one.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    panic!("no free loopback port below the ephemeral range after 20 tries")
}

pub struct TestBackend {
    pub addr: SocketAddr,
    /// TCP connections this backend accepted.
    pub connections: Arc<AtomicUsize>,
}

impl TestBackend {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A hyper HTTP/1.1 backend answering every request with `handler`.
pub async fn backend<F, Fut>(handler: F) -> TestBackend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = listen_loopback().await;
    let addr = listener.local_addr().expect("backend addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    TestBackend { addr, connections }
}

/// A backend that answers `200 <text>`.
pub async fn text_backend(text: &'static str) -> TestBackend {
    backend(move |_req| async move { Response::new(full(text)) }).await
}

/// A client for the ingress (pooled, like a browser).
pub fn client() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn empty() -> ClientBody {
    Empty::new().boxed()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// `GET path` on the ingress with the given `Host`.
pub async fn get(ingress: SocketAddr, host: &str, path: &str) -> Answer {
    let req = Request::get(format!("http://{ingress}{path}"))
        .header(http::header::HOST, host)
        .body(empty())
        .expect("request");
    send(req).await
}

pub async fn send(req: Request<ClientBody>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("answer within 10s")
        .expect("request through the ingress");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Writes `request` as is on a new TCP connection and reads until the server closes.
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("answer within 10s")
        .expect("read answer");
    String::from_utf8_lossy(&out).into_owned()
}

/// A request body fed from a channel, to stream it chunk by chunk.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
