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
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
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
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;

use crate::forward::{self, Page};
use crate::h1;
use crate::proxy::Shared;
use crate::routes::{InFlight, Pick};
use crate::static_files;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The HTTP/1.1 client of one ingress thread, to the backends.
pub(crate) type Upstream = Client<HttpConnector, Incoming>;

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
        async move { Ok::<_, Infallible>(forward_request(&shared, &client_ip, req, busy).await) }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(client), service);
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

/// One request: routed by its authority (or `Host`), sent to a backend as HTTP/1.1, the
/// answer streamed back.
async fn forward_request(shared: &Shared, client_ip: &str, req: Request<Incoming>, busy: Busy) -> Response<Body> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    let in_flight = match forward::pick(shared, host.as_deref()) {
        Pick::Backend(in_flight) => in_flight,
        Pick::NoBackends => return page(Page::NoDeployment, &req),
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
        let response = static_files::respond(&site, &req).await;
        // Counted in flight, and the stream open, until the whole answer went out.
        return response.map(|body| Kept { inner: body, _kept: (in_flight, busy) }.boxed_unsync());
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = Uri::try_from(format!("http://{}{path}", in_flight.backend().addr())) else {
        return plain(StatusCode::BAD_REQUEST, "the request target is not valid");
    };
    let mut up = Request::builder().method(parts.method.clone()).uri(uri).version(Version::HTTP_11);
    let Some(headers) = up.headers_mut() else {
        return plain(StatusCode::BAD_REQUEST, "the request is not valid");
    };
    let Ok(host_value) = HeaderValue::from_str(&host) else {
        return plain(StatusCode::BAD_REQUEST, "the request's authority is not a valid host");
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
    let has_body = !hyper::body::Body::is_end_stream(&body);
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).filter(|_| has_body) {
        headers.insert(header::CONTENT_LENGTH, len.clone());
    }
    let Ok(up) = up.body(body) else {
        return plain(StatusCode::BAD_REQUEST, "the request is not valid");
    };

    let head_method = parts.method == Method::HEAD;
    let answered = tokio::time::timeout(shared.backend_timeout, shared.h2_upstream.request(up)).await;
    let response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, backend = %in_flight.backend().addr(), "backend request failed");
            return page_for(Page::BadGateway, head_method);
        }
        Err(_) => {
            tracing::warn!(backend = %in_flight.backend().addr(), "backend did not start its answer in time");
            return page_for(Page::GatewayTimeout, head_method);
        }
    };
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_2;
    let names: Vec<HeaderName> =
        parts.headers.keys().filter(|n| h1::dropped_response_header(n.as_str())).cloned().collect();
    for name in names {
        parts.headers.remove(&name);
    }
    let body = Watched {
        inner: body,
        timeout: shared.backend_timeout,
        sleep: Box::pin(tokio::time::sleep(shared.backend_timeout)),
        waiting: false,
        _kept: (in_flight, busy),
    };
    Response::from_parts(parts, body.boxed_unsync())
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
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BoxError::from))),
            Poll::Pending => Poll::Pending,
        }
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

fn plain(status: StatusCode, why: &'static str) -> Response<Body> {
    let body = format!("{} {}: {why}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
