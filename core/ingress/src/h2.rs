//! HTTP/2 from clients (negotiated by ALPN `h2` on the TLS listener), served by hyper and
//! forwarded to apps as HTTP/1.1: same routing, same forwarded headers, same error pages
//! and timeouts as the HTTP/1 path in `forward.rs`.
//!
//! A request for a static site is answered from the site's files here, as on the HTTP/1
//! path (`static_serve.rs`), without the hop to its process.
//!
//! Each other request is sent through a per-thread hyper client, whose pool keeps the backend
//! connections alive between requests (apps only speak HTTP/1.1, so each stream in
//! flight needs a backend connection of its own).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use paastech_core::metrics::{self, ProjectRequests};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;

use crate::forward::{self, Page};
use crate::h1;
use crate::proxy::Shared;
use crate::routes::{InFlight, Pick, unrouted};
use crate::static_files;
use crate::upstream::{self, Conn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The HTTP/1.1 client of one ingress thread, to the backends.
pub(crate) type Upstream = Client<HttpConnector, Lent>;

/// A request body while it may still go to another backend.
type BodySlot = Arc<Mutex<Option<Incoming>>>;

/// A client's request body lent to hyper's client for one backend: taken out of its slot
/// only when hyper first reads it, which it does once connected. When the connect fails,
/// hyper drops the request unread and the body is still in the slot, whole, for the next
/// backend.
pub(crate) struct Lent {
    slot: BodySlot,
    body: Option<Incoming>,
}

impl Lent {
    /// `f` of the body, wherever it is now.
    fn peek<R>(&self, f: impl FnOnce(&Incoming) -> R) -> Option<R> {
        match &self.body {
            Some(body) => Some(f(body)),
            None => self.slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(f),
        }
    }
}

impl hyper::body::Body for Lent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this.slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
        match this.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peek(hyper::body::Body::is_end_stream).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(hyper::body::Body::size_hint).unwrap_or_default()
    }
}

/// A client for one ingress thread: connections kept alive between requests, connect
/// attempts bounded by `connect_timeout`.
pub(crate) fn upstream(connect_timeout: std::time::Duration) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        // Apps speak HTTP/1.1 only: never try anything else on their sockets.
        .http09_responses(false)
        .build(connector)
}

/// How long an HTTP/2 connection may have no stream open before it is closed (GOAWAY),
/// as an idle HTTP/1 connection is after [`forward::HEAD_TIMEOUT`].
const IDLE_TIMEOUT: Duration = forward::HEAD_TIMEOUT;

/// The streams open on one connection, and since when none is.
struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        let since = *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner);
        (self.open.load(Ordering::Acquire) == 0).then(|| since.elapsed())
    }
}

/// One stream open, until its answer has gone out (or was dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// hyper's executor for a connection's streams: each stream's task is polled once where
/// hyper hands it over, in the connection's own task, and spawned only if that did not
/// finish it. A static file from memory, or a page of the ingress's own, is answered in
/// that first poll: no task is made, scheduled and freed for it. On the static site over
/// HTTP/2 that took a tenth or more off the CPU time per request.
///
/// The first poll has a waker that does nothing; that is sound because the spawned task
/// polls the future again at once, which registers its own waker, and every future looks
/// at its state anew on each poll.
#[derive(Clone, Copy)]
struct FirstPollHere;

impl<F> hyper::rt::Executor<F> for FirstPollHere
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Box::pin(fut);
        if fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending() {
            tokio::spawn(fut);
        }
    }
}

/// Serves one HTTP/2 connection until it closes, stays idle for [`IDLE_TIMEOUT`], or the
/// ingress stops (in the last two cases the client is told with GOAWAY and open streams
/// finish).
pub(crate) async fn connection(
    shared: Arc<Shared>,
    client: TlsStream<TcpStream>,
    client_ip: Box<str>,
    mut stop: watch::Receiver<bool>,
) {
    let client_ip: Arc<str> = client_ip.into();
    let activity = Arc::new(Activity { open: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) });
    let streams = activity.clone();
    let service = service_fn(move |req| {
        let (shared, client_ip, busy) = (shared.clone(), client_ip.clone(), Busy::start(&streams));
        async move {
            let started = Instant::now();
            let method = metrics::Method::of(req.method().as_str().as_bytes());
            let mut requests = None;
            let response = forward_request(&shared, &client_ip, req, busy, &mut requests).await;
            // A streamed body of unknown length counts its head only.
            let bytes = hyper::body::Body::size_hint(response.body()).exact().unwrap_or(0);
            let requests = requests.as_deref().unwrap_or_else(|| unrouted());
            requests.record(method, response.status().as_u16(), bytes, started.elapsed());
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http2::Builder::new(FirstPollHere);
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(Coalesced::new(client)), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(err) = res {
                    tracing::debug!(error = %err, "http/2 connection ended with an error");
                }
                return;
            }
            _ = stop.changed() => break,
            // Checked now and then rather than timed exactly: closed after between
            // IDLE_TIMEOUT and 5/4 of it.
            () = tokio::time::sleep(IDLE_TIMEOUT / 4) => {
                if activity.idle_for().is_some_and(|idle| idle >= IDLE_TIMEOUT) {
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    if let Err(err) = conn.await {
        tracing::debug!(error = %err, "http/2 connection ended with an error");
    }
}

/// What is written to a TLS stream gathered, and a flush put off once, to the end of
/// the current pass of the thread's run queue. The streams of one connection are tasks
/// of their own, and the connection flushes whatever is ready each time one of them
/// wakes it: ten answers to requests that came in one read went out as ten TLS records
/// and ten system calls (`strace`: 10 `writev` a `recvfrom`). Put off once, the flush
/// finds the frames of every stream that was already running.
struct Coalesced<S> {
    inner: S,
    buf: Vec<u8>,
    /// A flush was put off once already.
    deferred: bool,
}

/// Past this, written bytes go out before more are taken (and a larger write passes
/// straight through).
const COALESCE_MAX: usize = 64 * 1024;

impl<S> Coalesced<S> {
    fn new(inner: S) -> Self {
        Coalesced { inner, buf: Vec::new(), deferred: false }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> Coalesced<S> {
    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.buf.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.buf.drain(..n);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Coalesced<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > COALESCE_MAX {
            if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
                return Poll::Ready(Err(err));
            }
            if !this.buf.is_empty() {
                return Poll::Pending;
            }
            if data.len() >= COALESCE_MAX {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > COALESCE_MAX {
            if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
                return Poll::Ready(Err(err));
            }
            if !this.buf.is_empty() {
                return Poll::Pending;
            }
            if total >= COALESCE_MAX {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() && !this.deferred {
            this.deferred = true;
            // Polled again after the tasks already queued on this thread.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.deferred = false;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

/// One request: routed by its authority (or `Host`), sent to a backend as HTTP/1.1, the
/// answer streamed back.
/// Answers one stream; `requests` is set to where its project's requests are counted.
async fn forward_request(
    shared: &Shared,
    client_ip: &str,
    req: Request<Incoming>,
    busy: Busy,
    requests: &mut Option<Arc<ProjectRequests>>,
) -> Response<Body> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    let mut pick = forward::pick(shared, host.as_deref());
    // A sleeping project: the stream is held while it wakes, then routed again.
    if let Pick::Asleep(_, project_requests, project) = pick {
        pick = match forward::woken(shared, &project, host.as_deref()).await {
            Ok(pick) => pick,
            Err(why) => {
                *requests = Some(project_requests);
                return wake_refused(&why, req.method() == Method::HEAD);
            }
        };
    }
    let (in_flight, hsts) = match pick {
        Pick::Backend(in_flight, https) => {
            *requests = Some(Arc::clone(in_flight.backend().requests_handle()));
            (in_flight, https.hsts_max_age)
        }
        Pick::NoBackends(_, project) | Pick::Asleep(_, project, _) => {
            *requests = Some(project);
            return page(Page::NoDeployment, &req);
        }
        Pick::Stopped(_, project) => {
            *requests = Some(project);
            return page(Page::Stopped, &req);
        }
        Pick::UnknownProject => return page(Page::NotFound, &req),
    };
    if req.method() == Method::CONNECT {
        return plain(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT (and WebSocket over HTTP/2) is not supported; use HTTP/1.1",
        );
    }
    let Some(host) = host else {
        return page(Page::NotFound, &req);
    };
    if let Some(site) = in_flight.backend().site().cloned() {
        let response = with_hsts(static_files::respond(&site, &req).await, hsts);
        // Counted in flight, and the stream open, until the whole answer went out.
        return response.map(|body| Kept { inner: body, _kept: (in_flight, busy) }.boxed_unsync());
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let has_body = !hyper::body::Body::is_end_stream(&body);
    let up = match to_backend(&parts, &host, client_ip, in_flight.backend().addr(), has_body) {
        Ok(up) => up,
        Err(why) => return plain(StatusCode::BAD_REQUEST, why),
    };
    let head_method = parts.method == Method::HEAD;
    if !has_body {
        // Almost every GET: sent on the ingress's own backend connections (those of the
        // HTTP/1 path) and answered in this task. hyper's client would pass each request
        // to a connection task and its answer back through channels: three task wakeups
        // a request, which made HTTP/2 cost half as much CPU again as HTTP/1.
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in up.headers_ref().into_iter().flatten() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let response = direct(shared, in_flight, busy, &head, parts.method.is_idempotent(), head_method).await;
        return with_hsts(response, hsts);
    }
    let (mut up, mut in_flight) = (up, in_flight);
    let slot: BodySlot = Arc::new(Mutex::new(Some(body)));
    // The backends whose connect failed for this request.
    let mut tried = Vec::new();
    let response = loop {
        let Ok(request) = up.body(Lent { slot: slot.clone(), body: None }) else {
            return plain(StatusCode::BAD_REQUEST, "the request is not valid");
        };
        let answered = tokio::time::timeout(shared.backend_timeout, shared.h2_upstream.request(request)).await;
        let backend = in_flight.backend();
        match answered {
            Ok(Ok(response)) => {
                backend.connected();
                break response;
            }
            // No connection, so hyper dropped the request before taking its body: the
            // body is whole, and goes to another backend of the project.
            Ok(Err(err)) if err.is_connect() && slot.lock().unwrap_or_else(PoisonError::into_inner).is_some() => {
                backend.connect_failed();
                tried.push(backend.addr());
                let Some(next) = shared.table.pick_other(backend.project(), &tried) else {
                    tracing::warn!(error = %err, backend = %backend.addr(), "backend request failed");
                    return page_for(Page::BadGateway, head_method);
                };
                tracing::warn!(error = %err, backend = %backend.addr(), next = %next.backend().addr(), "backend unreachable, trying another");
                up = match to_backend(&parts, &host, client_ip, next.backend().addr(), has_body) {
                    Ok(up) => up,
                    Err(why) => return plain(StatusCode::BAD_REQUEST, why),
                };
                in_flight = next;
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, backend = %backend.addr(), "backend request failed");
                return page_for(Page::BadGateway, head_method);
            }
            Err(_) => {
                tracing::warn!(backend = %backend.addr(), "backend did not start its answer in time");
                return page_for(Page::GatewayTimeout, head_method);
            }
        }
    };
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_2;
    let names: Vec<HeaderName> =
        parts.headers.keys().filter(|n| h1::dropped_response_header(n.as_str())).cloned().collect();
    for name in names {
        parts.headers.remove(&name);
    }
    add_hsts(&mut parts.headers, hsts);
    let body = Watched {
        inner: body,
        timeout: shared.backend_timeout,
        sleep: Box::pin(tokio::time::sleep(shared.backend_timeout)),
        waiting: false,
        _kept: (in_flight, busy),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// The request as the app at `addr` gets it (HTTP/1.1, forwarded headers): made anew for
/// each backend tried, so a connect that failed costs the first try nothing. `Err` says
/// why the client's request cannot be sent on (a 400).
fn to_backend(
    parts: &http::request::Parts,
    host: &str,
    client_ip: &str,
    addr: std::net::SocketAddr,
    has_body: bool,
) -> Result<http::request::Builder, &'static str> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = Uri::try_from(format!("http://{addr}{path}")) else {
        return Err("the request target is not valid");
    };
    let mut up = Request::builder().method(parts.method.clone()).uri(uri).version(Version::HTTP_11);
    let Some(headers) = up.headers_mut() else {
        return Err("the request is not valid");
    };
    let Ok(host_value) = HeaderValue::from_str(host) else {
        return Err("the request's authority is not a valid host");
    };
    headers.insert(header::HOST, host_value.clone());
    let (mut forwarded_for, mut cookies) = (Vec::new(), Vec::new());
    for (name, value) in &parts.headers {
        if name == X_FORWARDED_FOR {
            forwarded_for.push(value.as_bytes());
        } else if name == header::COOKIE {
            cookies.push(value.as_bytes());
        } else if !h1::dropped_request_header(name.as_str()) && name != header::CONNECTION {
            headers.append(name, value.clone());
        }
    }
    // HTTP/2 may split cookies into several fields; HTTP/1.1 has one (RFC 9113 §8.2.3).
    if !cookies.is_empty()
        && let Ok(cookie) = HeaderValue::from_bytes(&cookies.join(&b"; "[..]))
    {
        headers.insert(header::COOKIE, cookie);
    }
    // The earlier proxies' addresses first, as on the HTTP/1 path.
    let mut xff = forwarded_for.join(&b", "[..]);
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(client_ip.as_bytes());
    if let Ok(xff) = HeaderValue::from_bytes(&xff) {
        headers.insert(X_FORWARDED_FOR, xff);
    }
    // The ingress terminated TLS itself: whatever a client says, this is https.
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("https"));
    headers.insert(HeaderName::from_static("x-forwarded-host"), host_value);
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).filter(|_| has_body) {
        headers.insert(header::CONTENT_LENGTH, len.clone());
    }
    Ok(up)
}

/// A backend's answer on its way to the client: cut off when the backend sends nothing
/// for `timeout` while the ingress waits for more (the HTTP/1 path's rule). It also keeps
/// the request counted as in flight until the whole answer went out (a deployment
/// switch drains it before stopping the old instance), and its stream as open.
struct Watched {
    inner: Incoming,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether a frame is being waited for: the time counts from the first ask, not
    /// from the last frame (a slow client, not polling, is not the backend's fault).
    waiting: bool,
    _kept: (InFlight, Busy),
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.waiting {
            this.waiting = true;
            let deadline = tokio::time::Instant::now() + this.timeout;
            this.sleep.as_mut().reset(deadline);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!(after = ?this.timeout, "backend stopped sending in the middle of its answer");
                    Poll::Ready(Some(Err("backend stopped sending in the middle of its answer".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a backend gave no usable response head.
enum HeadError {
    /// The connection closed (or failed) before a byte of answer.
    Closed,
    /// Something else: a malformed or oversized head, or a failure after some bytes.
    Bad(String),
}

/// Sends `head` (a request without a body) to `in_flight`'s backend on one of the
/// ingress's kept-alive connections, and answers with its response; the body is streamed
/// from that connection, which goes back to the idle ones once the body is complete.
async fn direct(
    shared: &Shared,
    mut in_flight: InFlight,
    busy: Busy,
    head: &[u8],
    idempotent: bool,
    head_method: bool,
) -> Response<Body> {
    let mut retried = false;
    // The backends whose connect failed for this request; allocated only on a failure.
    let mut tried = Vec::new();
    let (conn, mut buf, head_len) = loop {
        let backend = in_flight.backend();
        let conn = match backend.conns().take(shared.shard) {
            Some(conn) => conn,
            None => match upstream::connect(backend.addr(), shared.connect_timeout, shared.shard).await {
                Ok(conn) => {
                    backend.connected();
                    conn
                }
                // Nothing was sent: another backend of the project, as on the HTTP/1 path.
                Err(err) => {
                    backend.connect_failed();
                    tried.push(backend.addr());
                    match shared.table.pick_other(backend.project(), &tried) {
                        Some(next) => {
                            tracing::warn!(error = %err, backend = %backend.addr(), next = %next.backend().addr(), "backend unreachable, trying another");
                            in_flight = next;
                            continue;
                        }
                        None => {
                            tracing::warn!(error = %err, backend = %backend.addr(), "backend request failed");
                            return page_for(Page::BadGateway, head_method);
                        }
                    }
                }
            },
        };
        let mut conn = conn;
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let exchange = send_and_read_head(&mut conn.stream, head, &mut buf);
        match tokio::time::timeout(shared.backend_timeout, exchange).await {
            Ok(Ok(head_len)) => break (conn, buf, head_len),
            // A kept-alive connection the backend closed meanwhile: once more on another,
            // for a request that may run twice (as the HTTP/1 path does).
            Ok(Err(HeadError::Closed)) if conn.reused && idempotent && !retried => retried = true,
            Ok(Err(HeadError::Closed)) => {
                tracing::warn!(backend = %backend.addr(), "backend closed the connection without an answer");
                return page_for(Page::BadGateway, head_method);
            }
            Ok(Err(HeadError::Bad(why))) => {
                tracing::warn!(backend = %backend.addr(), error = %why, "backend answered with a bad response");
                return page_for(Page::BadGateway, head_method);
            }
            Err(_) => {
                tracing::warn!(backend = %backend.addr(), "backend did not start its answer in time");
                return page_for(Page::GatewayTimeout, head_method);
            }
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    if !matches!(parsed.parse(&buf), Ok(httparse::Status::Complete(_))) {
        return page_for(Page::BadGateway, head_method);
    }
    let Some(status) = parsed.code.and_then(|code| StatusCode::from_u16(code).ok()) else {
        return page_for(Page::BadGateway, head_method);
    };
    let mut response = Response::builder().status(status).version(Version::HTTP_2);
    // HTTP/1.0 closes by default; either side may say `close`.
    let mut keep_alive = parsed.version == Some(1);
    let (mut length, mut chunked, mut other_coding) = (None, false, false);
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") && h1::has_token(h.value, "close") {
            keep_alive = false;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if h1::has_token(h.value, "chunked") {
                chunked = true;
            } else {
                other_coding = true;
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return page_for(Page::BadGateway, head_method),
            }
        }
        // `Upgrade` advertised on an ordinary answer (Apache's `h2c`) is HTTP/1 only and
        // not allowed in HTTP/2.
        if h1::dropped_response_header(name) || name.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(h.value)) {
            response = response.header(name, value);
        }
    }
    let framing = if head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if chunked && !other_coding {
        Framing::Chunked(h1::Chunked::default())
    } else if other_coding {
        // A coding we cannot find the end of: the body lasts until the backend closes.
        Framing::Close
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    if chunked {
        // The client gets the body's data in HTTP/2 frames: no length to announce.
        if let Some(headers) = response.headers_mut() {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    buf.advance(head_len);
    if let Framing::Length(n) = framing
        && buf.len() as u64 >= n
    {
        // The whole body came with the head (the usual small answer): no stream to watch.
        let extra = buf.len() as u64 > n;
        let body = buf.split_to(n as usize).freeze();
        if keep_alive && !extra {
            in_flight.backend().conns().put(conn);
        }
        drop((in_flight, busy));
        return response
            .body(Full::new(body).map_err(|never| match never {}).boxed_unsync())
            .unwrap_or_else(|_| page_for(Page::BadGateway, head_method));
    }
    let body = Streamed {
        conn: Some(conn),
        pending: buf,
        framing,
        keep_alive,
        done: false,
        timeout: shared.backend_timeout,
        sleep: Box::pin(tokio::time::sleep(shared.backend_timeout)),
        waiting: false,
        kept: (in_flight, busy),
    };
    response.body(body.boxed_unsync()).unwrap_or_else(|_| page_for(Page::BadGateway, head_method))
}

/// Writes `head` and reads until a final response head is in `buf` (informational `1xx`
/// heads are skipped); returns the head's length.
async fn send_and_read_head(stream: &mut TcpStream, head: &[u8], buf: &mut BytesMut) -> Result<usize, HeadError> {
    if stream.write_all(head).await.is_err() {
        return Err(HeadError::Closed);
    }
    let mut got_any = false;
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) if !got_any => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Bad("closed in the middle of the response head".into())),
            Err(err) => return Err(HeadError::Bad(err.to_string())),
            Ok(_) => got_any = true,
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(n)) if parsed.code.is_some_and(|c| (100..200).contains(&c)) => {
                    if parsed.code == Some(101) {
                        return Err(HeadError::Bad("a protocol switch for a request that asked none".into()));
                    }
                    buf.advance(n);
                }
                Ok(httparse::Status::Complete(n)) => return Ok(n),
                Ok(httparse::Status::Partial) if buf.len() < h1::MAX_HEAD_BYTES => break,
                Ok(httparse::Status::Partial) => return Err(HeadError::Bad("response head too large".into())),
                Err(err) => return Err(HeadError::Bad(format!("malformed response head: {err}"))),
            }
        }
    }
}

/// How the end of a backend's body is found.
enum Framing {
    Length(u64),
    Chunked(h1::Chunked),
    /// At the end of the connection.
    Close,
}

/// A backend's body read from the ingress's own connection as the client takes it, with
/// [`Watched`]'s rule for a backend that stops sending; the connection goes back to the
/// idle ones once the body is complete and nothing more came on it.
struct Streamed {
    conn: Option<Conn>,
    /// Read but not yet passed on.
    pending: BytesMut,
    framing: Framing,
    keep_alive: bool,
    done: bool,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    kept: (InFlight, Busy),
}

impl Streamed {
    fn finish(&mut self) {
        self.done = true;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && self.pending.is_empty()
        {
            self.kept.0.backend().conns().put(conn);
        }
    }

    /// The next data out of `pending`, if the framing gives any yet.
    fn next_data(&mut self) -> Result<Option<Bytes>, BoxError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        match &mut self.framing {
            Framing::Length(remaining) => {
                let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(self.pending.len());
                *remaining -= n as u64;
                let data = self.pending.split_to(n).freeze();
                if *remaining == 0 {
                    self.finish();
                }
                Ok((!data.is_empty()).then_some(data))
            }
            Framing::Chunked(chunked) => {
                let mut out = Vec::new();
                let used = chunked.decode(&self.pending, &mut out)?;
                let done = chunked.is_done();
                self.pending.advance(used);
                if done {
                    self.finish();
                }
                Ok((!out.is_empty()).then(|| Bytes::from(out)))
            }
            Framing::Close => Ok(Some(self.pending.split().freeze())),
        }
    }
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.next_data() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => {}
                Err(err) => return Poll::Ready(Some(Err(err))),
            }
            if this.done {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !this.waiting {
                this.waiting = true;
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
            }
            if this.pending.capacity() - this.pending.len() < 4 * 1024 {
                this.pending.reserve(64 * 1024);
            }
            let read = match conn.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => conn.stream.try_read_buf(&mut this.pending),
                Poll::Ready(Err(err)) => Err(err),
                Poll::Pending => match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(after = ?this.timeout, "backend stopped sending in the middle of its answer");
                        this.conn = None;
                        return Poll::Ready(Some(Err("backend stopped sending in the middle of its answer".into())));
                    }
                    Poll::Pending => return Poll::Pending,
                },
            };
            match read {
                Ok(0) => {
                    this.conn = None;
                    if matches!(this.framing, Framing::Close) {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err("backend closed the connection in the middle of its answer".into())));
                }
                Ok(_) => this.waiting = false,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

/// A static site's answer on its way to the client, keeping its request counted as in
/// flight and its stream open as [`Watched`] does for a backend's.
struct Kept {
    inner: static_files::StaticBody,
    _kept: (InFlight, Busy),
}

impl hyper::body::Body for Kept {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // `Either`'s error is already boxed.
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn page(which: Page, req: &Request<Incoming>) -> Response<Body> {
    page_for(which, req.method() == Method::HEAD)
}

/// One of the ingress's own pages, as the HTTP/1 path sends it.
fn page_for(which: Page, head_method: bool) -> Response<Body> {
    let (status, html) = forward::page(which);
    let body = if head_method { Bytes::new() } else { Bytes::from_static(html.as_bytes()) };
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(html.len()));
    response
}

/// The 503 page of a stream for a sleeping app that could not be woken.
fn wake_refused(why: &crate::wake::WakeRefused, head_method: bool) -> Response<Body> {
    let html = forward::wake_refused_html(why);
    let length = html.len();
    let body = if head_method { Bytes::new() } else { Bytes::from(html) };
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn plain(status: StatusCode, why: &'static str) -> Response<Body> {
    let body = format!("{} {}: {why}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The project's HSTS, unless the app sent its own (as on the HTTP/1 path). Only ever
/// called over TLS: every HTTP/2 stream here came over it.
fn add_hsts(headers: &mut http::HeaderMap, hsts: Option<u32>) {
    if let Some(max_age) = hsts
        && let Ok(value) = HeaderValue::from_str(&format!("max-age={max_age}"))
    {
        headers.entry(header::STRICT_TRANSPORT_SECURITY).or_insert(value);
    }
}

fn with_hsts<B>(mut response: Response<B>, hsts: Option<u32>) -> Response<B> {
    add_hsts(response.headers_mut(), hsts);
    response
}
