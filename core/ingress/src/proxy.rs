//! The reverse proxy: `NAME.<domain>` → one of NAME's backends, bodies streamed both
//! ways, upgrades (WebSocket) tunnelled.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{self, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::routes::{InFlight, Pick, RouteTable};

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

type BackendClient = Client<HttpConnector, Incoming>;

struct Shared {
    table: RouteTable,
    /// `.<domain>`, lowercase, so matching a Host is one case-insensitive suffix compare.
    suffix: Box<str>,
    client: BackendClient,
}

/// Serves the ingress on `listener` until `shutdown` resolves (then lets open requests
/// finish, for at most `config.shutdown_grace`).
///
/// `Host: NAME.<domain>[:port]` (any case) goes to NAME's backends in `table`; an unknown
/// name gets a 404 page, a project without backends a 503 page, an unreachable backend a
/// 502 page.
pub async fn serve(
    listener: TcpListener,
    config: IngressConfig,
    table: RouteTable,
    shutdown: impl Future<Output = ()>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    let domain = config.domain.trim_matches('.').to_ascii_lowercase();
    let shared = Arc::new(Shared { table, suffix: format!(".{domain}").into_boxed_str(), client });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, domain = %domain, "ingress listening");
    }

    crate::server::run(listener, shutdown, config.shutdown_grace, move |peer| {
        let shared = shared.clone();
        // Rendered once per connection, reused by every request on it.
        let client_ip = client_ip_header(peer);
        service_fn(move |req| proxy(shared.clone(), client_ip.clone(), req))
    })
    .await;
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
    let mut target = uri::Parts::default();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(guard.backend().authority().clone());
    target.path_and_query = Some(
        std::mem::take(&mut parts.uri).into_parts().path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = match Uri::from_parts(target) {
        Ok(uri) => uri,
        Err(err) => {
            tracing::warn!(error = %err, "cannot build the upstream URI");
            return Ok(page(Page::BadGateway));
        }
    };
    // Always speak HTTP/1.1 upstream so backend connections stay pooled, whatever the
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

    let mut resp = match shared.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(err) => {
            tracing::warn!(
                backend = %guard.backend().addr(),
                error = %error_chain(&err),
                "backend request failed"
            );
            return Ok(page(Page::BadGateway));
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
    Ok(Response::from_parts(parts, ProxyBody::Backend { body, _in_flight: guard }))
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
    Backend {
        body: Incoming,
        /// Keeps the request counted in flight until the body is fully sent or dropped.
        _in_flight: InFlight,
    },
    Page(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Backend { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Page(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend { body, .. } => body.is_end_stream(),
            ProxyBody::Page(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Backend { body, .. } => body.size_hint(),
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
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, HeaderValue::from_static("10.0.0.2"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2");
        append_forwarded_for(&mut h, HeaderValue::from_static("10.0.0.3"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2, 10.0.0.3");
    }
}
