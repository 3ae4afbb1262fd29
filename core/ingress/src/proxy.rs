//! The reverse proxy: `NAME.<domain>` → one of NAME's backends, bodies streamed both
//! ways, upgrades (WebSocket) tunnelled.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::routes::{InFlight, Pick, RouteTable};
use crate::upstream;

/// How the ingress runs. Build it with [`IngressConfig::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Project `blog` is served at `blog.<domain>`.
    pub domain: String,
    /// How long to wait for a backend to accept a connection before answering 502.
    pub connect_timeout: Duration,
    /// After `shutdown` resolves, how long open connections get to finish their request.
    pub shutdown_grace: Duration,
}

impl IngressConfig {
    pub fn new(domain: impl Into<String>) -> Self {
        IngressConfig {
            domain: domain.into(),
            connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What the requests of one ingress thread share.
struct Shared {
    table: RouteTable,
    /// `.<domain>`, lowercase, so matching a Host is one case-insensitive suffix compare.
    suffix: Box<str>,
    connect_timeout: Duration,
    /// This thread's index, to reuse the backend connections its own runtime drives.
    shard: usize,
}

/// Serves the ingress on `listener` until `shutdown` resolves (then lets open requests
/// finish, for at most `config.shutdown_grace`).
///
/// `Host: NAME.<domain>[:port]` (any case) goes to NAME's backends in `table`; an unknown
/// name gets a 404 page, a project without backends a 503 page, an unreachable backend a
/// 502 page.
///
/// The proxying runs on threads of its own, one per core, each a single-threaded tokio
/// runtime accepting on the same socket: a request, its backend exchange and the
/// response are then all handled by one thread, with no cross-thread wakeup on the way
/// (on a multi-thread runtime those cost about a third of the CPU time at low
/// concurrency). The caller's runtime only waits for `shutdown`. Dropping the returned
/// future stops the threads too.
pub async fn serve(
    listener: TcpListener,
    config: IngressConfig,
    table: RouteTable,
    shutdown: impl Future<Output = ()>,
) {
    let domain = config.domain.trim_matches('.').to_ascii_lowercase();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, domain = %domain, "ingress listening");
    }
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "cannot take over the ingress socket");
            return;
        }
    };
    let suffix: Box<str> = format!(".{domain}").into_boxed_str();

    // `true` (or the sender dropped with this future) stops every thread.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each thread holds a sender; `recv` returns `None` once they have all finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let (handoff, mut inboxes): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let balance = Arc::new(Balance { loads: (0..threads).map(|_| AtomicUsize::new(0)).collect(), handoff });
    let mut listener = Some(listener);
    for (i, inbox) in inboxes.drain(..).enumerate() {
        // The last thread takes the socket itself, the others a duplicate of it, so it is
        // closed once every thread stopped accepting.
        let socket = if i + 1 == threads {
            listener.take()
        } else {
            match listener.as_ref().map(std::net::TcpListener::try_clone) {
                Some(Ok(socket)) => Some(socket),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "cannot duplicate the ingress socket");
                    None
                }
                None => None,
            }
        };
        let shared = Arc::new(Shared {
            table: table.clone(),
            suffix: suffix.clone(),
            connect_timeout: config.connect_timeout,
            shard: i,
        });
        let thread = Thread { shared, balance: balance.clone(), inbox, grace: config.shutdown_grace };
        let (mut stop, done) = (stop_rx.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new().name(format!("ingress-{i}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start an ingress thread's runtime");
                    return;
                }
            };
            runtime.block_on(thread.run(socket, async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }));
            drop(done);
        });
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start an ingress thread");
            // Never pick it as the least busy.
            balance.loads[i].store(usize::MAX / 2, Ordering::Relaxed);
        }
    }
    drop((done_tx, stop_rx, balance));

    shutdown.await;
    let _ = stop_tx.send(true);
    // The threads give open connections `shutdown_grace` themselves.
    let _ = done_rx.recv().await;
}

/// A new client connection, moved between threads.
type Handoff = (std::net::TcpStream, SocketAddr);

/// Spreads client connections evenly over the ingress threads. Whichever thread accepts
/// a connection (the first awake, often the same one in a burst) passes it on when
/// another thread serves fewer; once placed, a connection stays on its thread.
struct Balance {
    /// Open client connections per thread.
    loads: Box<[AtomicUsize]>,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Balance {
    /// Which thread should serve a connection `shard` just accepted; counts it there.
    fn place(&self, shard: usize) -> usize {
        let mine = self.loads[shard].load(Ordering::Relaxed);
        let (least, load) = self
            .loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, load)| load)
            .unwrap_or((shard, mine));
        let to = if load + 1 < mine { least } else { shard };
        self.loads[to].fetch_add(1, Ordering::Relaxed);
        to
    }
}

/// Counts a connection on its thread until the connection ends.
struct Load(Arc<Balance>, usize);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.loads[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One ingress thread: its share of the work and how it gets connections.
struct Thread {
    shared: Arc<Shared>,
    balance: Arc<Balance>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    grace: Duration,
}

impl Thread {
    /// Accepts on `socket` (when there is one) and serves connections accepted here or
    /// handed over by other threads, until `stopped`.
    async fn run(mut self, socket: Option<std::net::TcpListener>, stopped: impl Future<Output = ()>) {
        let listener = match socket.map(TcpListener::from_std) {
            Some(Ok(listener)) => Some(listener),
            Some(Err(err)) => {
                tracing::error!(error = %err, "cannot register the ingress socket");
                None
            }
            None => None,
        };
        // hyper arms a header read timer (30 s) for every request. Tokio wakes its driver
        // through an eventfd whenever a timer becomes the earliest one, which with no
        // other timer is every request: one more write and one more epoll_wait each. A
        // timer that is always due sooner avoids that for the price of one wakeup a second.
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let shard = self.shared.shard;
        let connections = crate::server::Connections::new();
        tokio::pin!(stopped);
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut stopped => break,
                Some((stream, peer)) = self.inbox.recv() => match TcpStream::from_std(stream) {
                    Ok(stream) => (stream, peer),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot take over a client connection");
                        drop(Load(self.balance.clone(), shard));
                        continue;
                    }
                },
                (stream, peer) = accept(listener.as_ref()) => {
                    let to = self.balance.place(shard);
                    if to == shard {
                        (stream, peer)
                    } else {
                        match self.hand_over(to, stream, peer) {
                            Some(stream) => (stream, peer),
                            None => continue,
                        }
                    }
                }
            };
            let shared = self.shared.clone();
            // Rendered once per connection, reused by every request on it.
            let client_ip = client_ip_header(peer);
            let service = service_fn(move |req| proxy(shared.clone(), client_ip.clone(), req));
            connections.serve(stream, peer, service, Load(self.balance.clone(), shard));
        }
        drop(listener);
        drop(self.inbox);
        connections.finish(self.grace).await;
    }

    /// Passes a connection to thread `to`; gives it back, counted here, if that fails.
    fn hand_over(&self, to: usize, stream: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
        let shard = self.shared.shard;
        let back = match stream.into_std() {
            Ok(stream) => match self.balance.handoff[to].send((stream, peer)) {
                Ok(()) => return None,
                Err(mpsc::error::SendError((stream, _))) => TcpStream::from_std(stream),
            },
            Err(err) => Err(err),
        };
        drop(Load(self.balance.clone(), to));
        match back {
            Ok(stream) => {
                self.balance.loads[shard].fetch_add(1, Ordering::Relaxed);
                Some(stream)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot hand over a client connection");
                None
            }
        }
    }
}

/// The next connection on `listener`; never, without one.
async fn accept(listener: Option<&TcpListener>) -> (TcpStream, SocketAddr) {
    match listener {
        Some(listener) => crate::server::accept(listener).await,
        None => std::future::pending().await,
    }
}

fn client_ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_canonical().to_string()).expect("an IP address is a valid header value")
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

async fn proxy(
    shared: Arc<Shared>,
    client_ip: HeaderValue,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // An absolute-form request line names the host itself and wins over `Host`.
    let host = match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let Some(host) = host else {
        return Ok(page(Page::NotFound));
    };
    let guard = {
        let Some(name) = host.to_str().ok().and_then(|h| project_of(h, &shared.suffix)) else {
            return Ok(page(Page::NotFound));
        };
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        match shared.table.pick(&name) {
            Pick::UnknownProject => return Ok(page(Page::NotFound)),
            Pick::NoBackends => return Ok(page(Page::NoDeployment)),
            Pick::Backend(guard) => guard,
        }
    };

    let upgrading = is_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    // Upstream requests use the origin form (`/path?query`): the backend learns the host
    // from `Host`. Nearly every client already sends that form, which is then kept as is.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = std::mem::take(&mut parts.uri)
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    // Always speak HTTP/1.1 upstream so backend connections stay open, whatever the
    // client speaks; hyper downgrades the response for HTTP/1.0 clients.
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrading);
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.insert(header::HOST, host.clone());
    append_forwarded_for(headers, client_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    headers.insert(X_FORWARDED_HOST.clone(), host);

    let backend = guard.backend();
    let mut req = Request::from_parts(parts, body);
    let (mut resp, sender) = loop {
        let (mut sender, pooled) = match backend.conns().take(shared.shard) {
            Some(sender) => (sender, true),
            None => match upstream::connect(backend.addr(), shared.connect_timeout, shared.shard).await {
                Ok(sender) => (sender, false),
                Err(err) => {
                    tracing::warn!(backend = %backend.addr(), error = %error_chain(&err), "backend connection failed");
                    return Ok(page(Page::BadGateway));
                }
            },
        };
        match sender.send.try_send_request(req).await {
            Ok(resp) => break (resp, sender),
            Err(mut err) => match err.take_message() {
                // The backend closed an idle connection just as it was picked, before any
                // of the request went out: send it again, on a new connection if need be.
                Some(unsent) if pooled => req = unsent,
                _ => {
                    tracing::warn!(
                        backend = %backend.addr(),
                        error = %error_chain(err.error()),
                        "backend request failed"
                    );
                    return Ok(page(Page::BadGateway));
                }
            },
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client_upgrade, backend_upgrade, guard));
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(Response::from_parts(parts, ProxyBody::Page(None)));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = BackendBody { body, conn: Some(sender), done: false, in_flight: guard };
    Ok(Response::from_parts(parts, ProxyBody::Backend(body)))
}

/// Copies bytes both ways between the client and the backend once both sides switched
/// protocols. The request stays counted in flight until the tunnel closes.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, _in_flight: InFlight) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `NAME` out of `NAME.<domain>[:port][.]`, or `None` when the host is not one label
/// under our domain. `suffix` is `.<domain>` in lowercase.
fn project_of<'a>(host: &'a str, suffix: &str) -> Option<&'a str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let (name, tail) = host.split_at_checked(host.len().checked_sub(suffix.len())?)?;
    if name.is_empty() || name.contains('.') || !tail.eq_ignore_ascii_case(suffix) {
        return None;
    }
    Some(name)
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && headers.get_all(header::CONNECTION).iter().any(|v| has_token(v, "upgrade"))
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
];

/// Removes hop-by-hop headers, including any the `Connection` header names. Framing
/// (`Transfer-Encoding`) is hyper's business on each hop. `Upgrade` survives only on an
/// upgrade exchange, where it must reach the other side.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let (first, rest) = {
        let mut values = headers.get_all(header::CONNECTION).iter();
        // Nearly always one value (`keep-alive`); an empty Vec does not allocate.
        (values.next().cloned(), values.cloned().collect::<Vec<_>>())
    };
    for value in first.iter().chain(rest.iter()) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if token.is_empty() || (keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
                continue;
            }
            headers.remove(token);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Appends the client's address to any `X-Forwarded-For` it sent.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: HeaderValue) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR.clone(), client_ip);
        return;
    }
    let mut joined = BytesMut::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client_ip.as_bytes());
    let value = HeaderValue::from_maybe_shared(joined.freeze()).unwrap_or(client_ip);
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

/// The response body: the backend's, streamed as it arrives, or one of our own pages.
pub(crate) enum ProxyBody {
    Backend(BackendBody),
    Page(Option<Bytes>),
}

/// A backend's response body. Once it has been read to the end, its connection goes back
/// to the backend's idle connections; a body dropped before its end (the client went
/// away) drops the connection instead, since unread bytes are still on it.
pub(crate) struct BackendBody {
    body: Incoming,
    conn: Option<upstream::Sender>,
    /// The body returned its last frame.
    done: bool,
    /// Keeps the request counted in flight until the body is fully sent or dropped.
    in_flight: InFlight,
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        let Some(mut sender) = self.conn.take() else { return };
        if !(self.done || self.body.is_end_stream()) {
            return;
        }
        let backend = self.in_flight.backend();
        if sender.send.is_ready() {
            backend.conns().put(sender);
        } else if !sender.send.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The connection task has not caught up with the end of the exchange yet
            // (or the request body is still being sent): keep it once it has.
            let backend = backend.clone();
            runtime.spawn(async move {
                if sender.send.ready().await.is_ok() {
                    backend.conns().put(sender);
                }
            });
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Backend(b) => {
                let frame = Pin::new(&mut b.body).poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    b.done = true;
                }
                frame
            }
            ProxyBody::Page(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend(b) => b.body.is_end_stream(),
            ProxyBody::Page(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Backend(b) => b.body.size_hint(),
            ProxyBody::Page(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[derive(Clone, Copy)]
enum Page {
    NotFound,
    NoDeployment,
    BadGateway,
}

const NOT_FOUND_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>No app here</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>404 &mdash; no app here</h1><p>There is no app at this address.</p>\
<p><small>paastech</small></p></body></html>\n";

const NO_DEPLOYMENT_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>No live deployment</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>503 &mdash; no live deployment</h1><p>This app exists but has no live deployment right now. Push to deploy it, or scale its web processes above zero.</p>\
<p><small>paastech</small></p></body></html>\n";

const BAD_GATEWAY_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Bad gateway</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>502 &mdash; bad gateway</h1><p>The app did not answer. It may be restarting; try again in a moment.</p>\
<p><small>paastech</small></p></body></html>\n";

fn page(which: Page) -> Response<ProxyBody> {
    let (status, html) = match which {
        Page::NotFound => (StatusCode::NOT_FOUND, NOT_FOUND_HTML),
        Page::NoDeployment => (StatusCode::SERVICE_UNAVAILABLE, NO_DEPLOYMENT_HTML),
        Page::BadGateway => (StatusCode::BAD_GATEWAY, BAD_GATEWAY_HTML),
    };
    let mut resp = Response::new(ProxyBody::Page(Some(Bytes::from_static(html.as_bytes()))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_of_host() {
        let s = ".apps.example";
        let cases: &[(&str, Option<&str>)] = &[
            ("blog.apps.example", Some("blog")),
            ("blog.apps.example:8000", Some("blog")),
            ("BLOG.Apps.Example", Some("BLOG")),
            ("blog.apps.example.", Some("blog")),
            ("blog.apps.example.:80", Some("blog")),
            ("apps.example", None),
            (".apps.example", None),
            ("a.b.apps.example", None),
            ("blog.other.example", None),
            ("blog.apps.example:x", None),
            ("[::1]:8000", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(project_of(host, s), *want, "host {host:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Foo"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
    }

    #[test]
    fn connections_spread_over_threads() {
        let (handoff, _inboxes): (Vec<_>, Vec<_>) = (0..3).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance { loads: (0..3).map(|_| AtomicUsize::new(0)).collect(), handoff });
        // Thread 0 accepts a burst: it keeps one more than the others at most.
        let placed: Vec<usize> = (0..7).map(|_| balance.place(0)).collect();
        assert_eq!(placed, vec![0, 0, 1, 2, 0, 1, 2]);
        let loads = |b: &Balance| b.loads.iter().map(|l| l.load(Ordering::Relaxed)).collect::<Vec<_>>();
        assert_eq!(loads(&balance), vec![3, 2, 2]);
        // A connection ending on thread 2 makes it the next pick.
        drop(Load(balance.clone(), 2));
        drop(Load(balance.clone(), 2));
        assert_eq!(balance.place(0), 2);
        assert_eq!(loads(&balance), vec![3, 2, 1]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, HeaderValue::from_static("10.0.0.2"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2");
        append_forwarded_for(&mut h, HeaderValue::from_static("10.0.0.3"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2, 10.0.0.3");
    }
}
