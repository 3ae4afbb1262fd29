//! One client connection of the ingress: requests read, routed and forwarded to a
//! backend, responses streamed back, for as long as both sides keep the connection.
//!
//! This is the ingress's hot path, so it works on bytes: a head is parsed and rewritten
//! for the next hop in one pass ([`h1`]), bodies are copied without being decoded, and a
//! small response goes out in the same write as its head. One task serves the client and
//! the backend side of an exchange, so a request wakes nothing but itself, and nothing is
//! allocated per request once a connection's buffers have grown to its traffic.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use paastech_core::metrics::Method;

use crate::h1::{self, Answering, Chunked, Framing};
use crate::proxy::{Shared, project_of};
use crate::routes::{InFlight, Pick};
use crate::wake::WakeRefused;
use crate::{static_serve, upstream};

/// How long a client has to send a whole request head, counted from when the ingress
/// starts waiting for it (so idle keep-alive connections close after this too).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// A connection's buffers shrink back once idle if they grew past this (one huge head
/// must not keep its memory for the life of a keep-alive connection).
const KEEP_CAPACITY: usize = 64 * 1024;
/// How long a request body or a response may make no progress on the client's side
/// (nginx's `client_body_timeout` and `send_timeout`), and a request body on the
/// backend's, before the exchange is cut off.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After an error page, how long (and how many bytes) the client's unread request is
/// read and dropped before closing, so that closing does not reset the connection
/// before the client read the page.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// A client connection: plain TCP, or TLS over it. Generic rather than boxed, so the
/// plain path compiles to what it was before TLS existed.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// Whether the client spoke TLS to the ingress (`X-Forwarded-Proto: https`).
    const HTTPS: bool;
    type Read<'a>: AsyncRead + Unpin
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + Unpin
    where
        Self: 'a;
    /// The two directions, to read a request body while a response streams back.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
    /// The TCP socket itself when nothing is layered on it, for `sendfile(2)`.
    fn plain_tcp(&self) -> Option<&TcpStream>;
}

impl ClientIo for TcpStream {
    const HTTPS: bool = false;
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
    fn plain_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for TlsStream<TcpStream> {
    const HTTPS: bool = true;
    // A TLS session is one state for both directions: the halves share it behind a lock.
    type Read<'a> = tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// Serves one client connection until it closes, fails, times out, or the ingress stops.
///
/// `stop` changes when the ingress stops: an idle connection closes at once, a busy one
/// after its current exchange.
pub(crate) async fn connection<C: ClientIo>(
    shared: Arc<Shared>,
    mut client: C,
    client_ip: Box<str>,
    trusted: bool,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let deadline = tokio::time::sleep(HEAD_TIMEOUT);
    tokio::pin!(deadline);
    // For the backend's answer (see `IngressConfig::backend_timeout`).
    let backend_deadline = tokio::time::sleep(shared.backend_timeout);
    tokio::pin!(backend_deadline);
    let fwd = h1::Forwarded { client_ip: &client_ip, trusted, https: C::HTTPS };
    let mut cbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut bbuf: Vec<u8> = Vec::new();
    // The request head as the backend gets it, and the response as the client gets it.
    let mut up: Vec<u8> = Vec::with_capacity(1024);
    let mut down: Vec<u8> = Vec::with_capacity(4096);

    loop {
        crate::turns::between_requests();
        // 1. A whole request head, rewritten for the backend into `up`.
        extend(deadline.as_mut(), HEAD_TIMEOUT);
        for buf in [&mut cbuf, &mut bbuf, &mut up, &mut down] {
            if buf.capacity() > KEEP_CAPACITY && buf.len() < KEEP_CAPACITY / 16 {
                buf.shrink_to(KEEP_CAPACITY / 16);
            }
        }
        // `cbuf[..scanned]` holds no end of a head: a head sent a byte at a time is
        // parsed once, not once per byte.
        let mut scanned = 0;
        let req = loop {
            up.clear();
            if head_may_end(&cbuf, scanned) {
                match h1::request(&cbuf, &fwd, &mut up) {
                    Ok(Some(req)) => break req,
                    Ok(None) => {}
                    Err(err) => return refuse(&mut client, &client_ip, err).await,
                }
            } else if cbuf.len() >= h1::MAX_HEAD_BYTES {
                return refuse(&mut client, &client_ip, h1::RequestError::TooLarge).await;
            }
            scanned = cbuf.len();
            reserve(&mut cbuf);
            let read = tokio::select! {
                biased;
                read = client.read_buf(&mut cbuf) => read,
                _ = &mut stopped, if cbuf.is_empty() => return,
                () = &mut deadline => {
                    if !cbuf.is_empty() {
                        let _ = send(&mut client, &error_page(408, "Request Timeout", "the request head did not arrive in time")).await;
                        linger(&mut client).await;
                    }
                    return;
                }
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let started = Instant::now();
        let method = Method::of(&cbuf);
        // A stopping ingress says so on its last response.
        let keep_alive = req.keep_alive && !shared.stopping.load(Ordering::Relaxed);
        let answering =
            Answering { head_method: req.head_method, http10: req.http10, keep_alive, upgrade: req.upgrade };

        // ACME's HTTP-01 validation of a name this server orders a certificate for: answered
        // before routing, as the name may have no deployment yet.
        if !C::HTTPS
            && let Some(answer) = acme_http01(&shared, &cbuf[req.path.clone()])
        {
            let keep_alive = keep_alive && req.framing == Framing::Empty;
            cbuf.drain(..req.head_len);
            if send(&mut client, &text_answer(&answer, answering, keep_alive)).await.is_err() {
                return;
            }
            if !keep_alive {
                linger(&mut client).await;
                return;
            }
            continue;
        }

        // 2. Which backend.
        let host = req.host.as_ref().and_then(|r| std::str::from_utf8(&cbuf[r.clone()]).ok());
        let pick = pick(&shared, host);
        // Plain HTTP to a project that wants HTTPS: the same URL over HTTPS instead.
        if !C::HTTPS
            && let Some(location) = https_redirect(&shared, &pick, &cbuf[..req.head_len], req.host.as_ref())
        {
            let keep_alive = keep_alive && req.framing == Framing::Empty;
            let safe = matches!(method, Method::Get | Method::Head);
            let sent = write_redirect(&mut client, &location, safe, answering, keep_alive).await;
            cbuf.drain(..req.head_len);
            let Ok(sent) = sent else { return };
            pick.requests().record(method, if safe { 301 } else { 308 }, sent, started.elapsed());
            drop(pick);
            if !keep_alive {
                linger(&mut client).await;
                return;
            }
            continue;
        }
        // A sleeping project: the request is held while it wakes, then routed again.
        let pick = match pick {
            Pick::Asleep(_, requests, project) => match woken(&shared, &project, host).await {
                Ok(pick) => pick,
                Err(why) => {
                    // The body was not read: the connection cannot carry another request.
                    let keep_alive = keep_alive && req.framing == Framing::Empty;
                    cbuf.drain(..req.head_len);
                    let Ok(sent) = write_wake_refused(&mut client, &why, answering, keep_alive).await else { return };
                    requests.record(method, 503, sent, started.elapsed());
                    if !keep_alive {
                        linger(&mut client).await;
                        return;
                    }
                    continue;
                }
            },
            other => other,
        };
        let hsts = if C::HTTPS { pick.https().and_then(|p| p.hsts_max_age) } else { None };
        let in_flight = match pick {
            Pick::Backend(in_flight, _) => in_flight,
            Pick::UnknownProject | Pick::NoBackends(..) | Pick::Stopped(..) | Pick::Asleep(..) => {
                let which = match pick {
                    Pick::NoBackends(..) | Pick::Asleep(..) => Page::NoDeployment,
                    Pick::Stopped(..) => Page::Stopped,
                    _ => Page::NotFound,
                };
                // The body was not read: the connection cannot carry another request.
                let keep_alive = keep_alive && req.framing == Framing::Empty;
                cbuf.drain(..req.head_len);
                let Ok(sent) = write_page(&mut client, which, answering, keep_alive).await else { return };
                pick.requests().record(method, page(which).0, sent, started.elapsed());
                if !keep_alive {
                    linger(&mut client).await;
                    return;
                }
                continue;
            }
        };

        // A static site: answered from its files here, without the hop to its process.
        if let Some(site) = in_flight.backend().site() {
            // The body was not read: the connection cannot carry another request.
            let keep_alive = keep_alive && req.framing == Framing::Empty;
            let served =
                static_serve::serve(site, &mut client, &cbuf[..req.head_len], answering, keep_alive, &mut down, hsts);
            let served = served.await;
            if let Ok(served) = &served {
                in_flight.backend().requests().record(method, served.status, served.bytes, started.elapsed());
            }
            drop(in_flight);
            cbuf.drain(..req.head_len);
            match served.map(|served| served.keep_alive) {
                Ok(true) if !shared.stopping.load(Ordering::Relaxed) => continue,
                Ok(_) => linger(&mut client).await,
                Err(err) => tracing::debug!(error = %err, "static answer failed"),
            }
            return;
        }

        // 3. The exchange.
        down.clear();
        // Kept for the count: the exchange may move to another backend of the project.
        let requests = Arc::clone(in_flight.backend().requests_handle());
        let buffers = Buffers { cbuf: &mut cbuf, bbuf: &mut bbuf, up: &mut up, down: &mut down };
        let exchanged = exchange(
            &shared,
            &mut client,
            buffers,
            backend_deadline.as_mut(),
            &req,
            answering,
            Routed { in_flight, hsts },
        )
        .await;
        if let Ok(answered) = &exchanged {
            requests.record(method, answered.status, answered.bytes, started.elapsed());
        }
        match exchanged {
            Ok(Answered { keep_alive: true, .. }) if !shared.stopping.load(Ordering::Relaxed) => {}
            Ok(_) => return,
            Err(Failed::BeforeResponse(err)) => {
                tracing::warn!(error = %err, "backend request failed");
                let which = match err {
                    BackendError::Timeout => Page::GatewayTimeout,
                    _ => Page::BadGateway,
                };
                if let Ok(sent) = write_page(&mut client, which, answering, false).await {
                    requests.record(method, page(which).0, sent, started.elapsed());
                    linger(&mut client).await;
                }
                return;
            }
            Err(Failed::Client | Failed::AfterResponse) => return,
        }
    }
}

/// The backend for a request to `host` (its `Host`, or its HTTP/2 authority).
pub(crate) fn pick(shared: &Shared, host: Option<&str>) -> Pick {
    match host.and_then(|h| project_of(h, &shared.suffix)) {
        Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => shared.table.pick(&name.to_ascii_lowercase()),
        Some(name) => shared.table.pick(name),
        // Not `NAME.<domain>`: a project's custom domain, or nobody's.
        None => host.map_or(Pick::UnknownProject, |h| shared.table.pick_by_host(h)),
    }
}

/// Holds a request for the sleeping `project` until it is woken, then routes it again:
/// a backend, or why it gets none (the wake failed, timed out, too many wait).
pub(crate) async fn woken(shared: &Shared, project: &Arc<str>, host: Option<&str>) -> Result<Pick, WakeRefused> {
    shared.wakes.wait(project).await?;
    match pick(shared, host) {
        // Woken, and asleep again already (or its web has no instance to start).
        Pick::Asleep(..) => Err(WakeRefused::Failed("it has no web instance running".into())),
        pick => Ok(pick),
    }
}

/// The key authorization for a request to `/.well-known/acme-challenge/TOKEN`, while
/// the validation of TOKEN is in progress.
fn acme_http01(shared: &Shared, target: &[u8]) -> Option<Box<str>> {
    let token = target.strip_prefix(b"/.well-known/acme-challenge/")?;
    let certs = shared.certs.as_ref()?;
    certs.http01(std::str::from_utf8(token).ok()?)
}

/// A `200` with `body` as plain text.
fn text_answer(body: &str, req: Answering, keep_alive: bool) -> Vec<u8> {
    let version = if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let connection = match (keep_alive, req.http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let mut answer = format!(
        "{version} 200 OK\r\nServer: paastech\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    if !req.head_method {
        answer.extend_from_slice(body.as_bytes());
    }
    answer
}

/// Where a plain-HTTP request goes instead, over HTTPS: when it is for a project whose
/// policy redirects, the ingress holds a certificate for its host, and it is not an ACME
/// HTTP-01 challenge (which must be answered over plain HTTP). `head` is the request
/// head, `host` the range of its host in it. `None`: served as it is.
fn https_redirect(shared: &Shared, pick: &Pick, head: &[u8], host: Option<&std::ops::Range<usize>>) -> Option<String> {
    if !pick.https()?.redirect {
        return None;
    }
    let certs = shared.certs.as_ref()?;
    let host = std::str::from_utf8(&head[host?.clone()]).ok()?;
    if !certs.serves(host_name(host)) {
        return None;
    }
    let target = request_target(head)?;
    if is_acme_challenge(target) {
        return None;
    }
    https_location(host, shared.https_port, target)
}

/// The request target of a head (`/path?query`, or an absolute URL).
fn request_target(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\n').next()?;
    let mut parts = line.split(|&b| b == b' ');
    parts.next()?;
    std::str::from_utf8(parts.next()?).ok()
}

/// Whether a request target is an ACME HTTP-01 challenge (RFC 8555 §8.3).
pub(crate) fn is_acme_challenge(target: &str) -> bool {
    origin_form(target).is_some_and(|path| path.starts_with("/.well-known/acme-challenge/"))
}

/// The path and query of a request target: itself in origin form, what follows the
/// authority in absolute form (empty, or starting with `?`, when the path is empty);
/// `None` for `*` and authority form.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    Some(rest.find(['/', '?']).map_or("", |at| &rest[at..]))
}

/// A host without its port and trailing dot.
fn host_name(host: &str) -> &str {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// `https://HOST[:PORT]/path?query` for a request to `host` (its port dropped) with
/// `target`; the port is left out when it is 443.
fn https_location(host: &str, port: u16, target: &str) -> Option<String> {
    let path = origin_form(target)?;
    let name = host_name(host);
    if name.is_empty() {
        return None;
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    Some(if port == 443 {
        format!("https://{name}{slash}{path}")
    } else {
        format!("https://{name}:{port}{slash}{path}")
    })
}

/// Adds `Strict-Transport-Security` to a response head rewritten for the client (which
/// ends with its blank line), unless the app sent its own: the app's word wins.
fn add_hsts(head: &mut Vec<u8>, max_age: u32) {
    use std::io::Write as _;
    const NAME: &[u8] = b"strict-transport-security:";
    let sent = head
        .split(|&b| b == b'\n')
        .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME));
    if sent || !head.ends_with(b"\r\n\r\n") {
        return;
    }
    head.truncate(head.len() - 2);
    let _ = write!(head, "Strict-Transport-Security: max-age={max_age}\r\n\r\n");
}

/// Sends the redirect to HTTPS: `301` for `GET`/`HEAD` (`safe`), `308` for the others, so
/// that a client sends its method and body again rather than turning them into a `GET`.
async fn write_redirect(
    client: &mut (impl AsyncWrite + Unpin),
    location: &str,
    safe: bool,
    req: Answering,
    keep_alive: bool,
) -> io::Result<u64> {
    let status = if safe { "301 Moved Permanently" } else { "308 Permanent Redirect" };
    let version = if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let connection = match (keep_alive, req.http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let head = format!(
        "{version} {status}\r\nServer: paastech\r\nLocation: {location}\r\nContent-Length: 0\r\n{connection}\r\n"
    );
    send(client, head.as_bytes()).await?;
    Ok(head.len() as u64)
}

/// Moves `deadline` to `timeout` from now, unless it is that far already but for a
/// sixteenth: a registered timer then stays untouched for most requests, and a wait is
/// cut off after between 15/16 of `timeout` and all of it.
fn extend(deadline: Pin<&mut Sleep>, timeout: Duration) {
    let now = Instant::now();
    if deadline.deadline() < now + (timeout - timeout / 16) {
        deadline.reset(now + timeout);
    }
}

/// Whether `buf` may hold a whole head, given that `buf[..scanned]` ends none: a blank
/// line (CRLF CRLF, or bare LFs, which httparse accepts too) in the new bytes.
fn head_may_end(buf: &[u8], scanned: usize) -> bool {
    buf[scanned.saturating_sub(3)..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r")
}

/// Answers a request that cannot be served at all, then closes.
async fn refuse(client: &mut (impl AsyncRead + AsyncWrite + Unpin), client_ip: &str, err: h1::RequestError) {
    tracing::debug!(error = %err, client = %client_ip, "refused a request");
    let (status, reason) = err.status();
    if send(client, &error_page(status, reason, &err.to_string())).await.is_ok() {
        linger(client).await;
    }
}

/// Closes our side, then reads and drops what the client still sends, for a while: a
/// close with unread bytes resets the connection, which can destroy the answer before
/// the client read it.
async fn linger(client: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    if client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut dropped = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// `io` with [`IDLE_TIMEOUT`]: a timeout is an error like any other.
async fn idle<T>(io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, io).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// How an exchange went wrong.
enum Failed {
    /// The backend failed before the client got anything: it gets a 502 page.
    BeforeResponse(BackendError),
    /// The backend failed in the middle of the response: the client connection closes.
    AfterResponse,
    /// The client went away or sent a malformed body.
    Client,
}

#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error(transparent)]
    Connect(#[from] upstream::ConnectError),
    #[error("sending the request to the backend failed")]
    Write(#[source] io::Error),
    #[error("reading the backend's response failed")]
    Io(#[source] io::Error),
    #[error("backend closed the connection before answering")]
    Closed,
    #[error("backend sent an invalid response")]
    Response(#[from] h1::ResponseError),
    #[error("backend switched protocols without being asked to")]
    UnaskedSwitch,
    #[error("backend did not start its answer in time")]
    Timeout,
}

/// Where a request goes, as its lookup found it.
struct Routed {
    /// The backend, with the request counted as in flight to it.
    in_flight: InFlight,
    /// Over HTTPS, the project's HSTS max-age, sent with the answer.
    hsts: Option<u32>,
}

/// A connection's buffers, lent to one exchange.
struct Buffers<'a> {
    /// From the client: the request head, then body bytes.
    cbuf: &'a mut Vec<u8>,
    /// From the backend.
    bbuf: &'a mut Vec<u8>,
    /// To the backend: the rewritten head and body bytes.
    up: &'a mut Vec<u8>,
    /// To the client.
    down: &'a mut Vec<u8>,
}

/// An answer that went out whole.
struct Answered {
    /// Whether the client connection can carry another request.
    keep_alive: bool,
    status: u16,
    /// Sent to the client, head and body.
    bytes: u64,
}

/// Forwards one request (its head, rewritten, in `up`; its body after `req.head_len` in
/// `cbuf`) and the response.
/// `deadline` is the connection's timer for the backend's answer.
async fn exchange<C: ClientIo>(
    shared: &Shared,
    client: &mut C,
    buffers: Buffers<'_>,
    mut deadline: Pin<&mut Sleep>,
    req: &h1::Request,
    answering: Answering,
    routed: Routed,
) -> Result<Answered, Failed> {
    let Routed { mut in_flight, hsts } = routed;
    let Buffers { cbuf, bbuf, up, down } = buffers;
    let timeout = shared.backend_timeout;
    // The body bytes that came with the head go out in the same write (a chunked body
    // chunked anew, see `Chunked::rechunk`).
    let mut chunked = Chunked::default();
    let body = &cbuf[req.head_len..];
    let (used, body_done) = match req.framing {
        Framing::Empty | Framing::UntilClose => (0, true),
        Framing::Length(n) => {
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(body.len());
            up.extend_from_slice(&body[..k]);
            (k, k as u64 == n)
        }
        Framing::Chunked => {
            let k = chunked.rechunk(body, up).map_err(|_| Failed::Client)?;
            (k, chunked.is_done())
        }
    };
    cbuf.drain(..req.head_len + used);
    let mut remaining = match req.framing {
        Framing::Length(n) => n - used as u64,
        _ => 0,
    };

    if req.expect_continue && !req.http10 && !body_done {
        send(client, b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| Failed::Client)?;
    }

    // The backends whose connect failed for this request; allocated only on a failure.
    let mut tried = Vec::new();
    loop {
        let backend = in_flight.backend();
        let mut conn = match backend.conns().take(shared.shard) {
            Some(conn) => conn,
            None => match upstream::connect(backend.addr(), shared.connect_timeout, shared.shard).await {
                Ok(conn) => {
                    backend.connected();
                    conn
                }
                // Nothing of the request reached any app: it goes to another backend of
                // the project, each tried once (nginx's `proxy_next_upstream error timeout`).
                Err(err) => {
                    backend.connect_failed();
                    tried.push(backend.addr());
                    match shared.table.pick_other(backend.project(), &tried) {
                        Some(next) => {
                            tracing::warn!(error = %err, backend = %backend.addr(), next = %next.backend().addr(), "backend unreachable, trying another");
                            in_flight = next;
                            continue;
                        }
                        None => return Err(Failed::BeforeResponse(err.into())),
                    }
                }
            },
        };
        bbuf.clear();
        if let Err(err) = idle(conn.stream.write_all(up)).await {
            // The backend closed an idle connection just as it was picked: nothing of the
            // request reached the app, and what it has of the body is still in `up` and on
            // the client's socket, so it goes again on another connection.
            if conn.reused {
                continue;
            }
            return Err(Failed::BeforeResponse(BackendError::Write(err)));
        }
        let head_seen = AtomicBool::new(false);
        let responded = if body_done {
            extend(deadline.as_mut(), timeout);
            let wait = Wait { head: Some(deadline.as_mut()), head_seen: &head_seen, body: timeout, hsts };
            respond(&mut conn.stream, bbuf, client, down, answering, wait).await
        } else {
            // The rest of the request body and the response stream at the same time: a
            // backend may answer (and stream its answer) before the body ended.
            let (mut cr, mut cw) = client.halves();
            let (mut br, mut bw) = conn.stream.split();
            let body = pump_body(&mut cr, cbuf, &mut bw, up, req.framing, &mut chunked, &mut remaining);
            // The backend may wait for the whole body before it answers: its time to
            // answer counts from then, here.
            let wait = Wait { head: None, head_seen: &head_seen, body: timeout, hsts };
            let response = respond(&mut br, bbuf, &mut cw, down, answering, wait);
            tokio::pin!(body, response);
            let (mut body_sent, mut responded) = (None, None);
            // Whichever side fails first ends the exchange: waiting for the other could
            // be waiting forever (a backend that waits for the rest of a body the client
            // will never send).
            while body_sent.is_none() || responded.is_none() {
                tokio::select! {
                    sent = &mut body, if body_sent.is_none() => match sent {
                        Err(Side::Client) => return Err(Failed::Client),
                        sent => {
                            body_sent = Some(sent);
                            extend(deadline.as_mut(), timeout);
                        }
                    },
                    () = deadline.as_mut(), if body_sent.is_some() && !head_seen.load(Ordering::Relaxed) => {
                        // The head may have come in while this waited.
                        if !head_seen.load(Ordering::Relaxed) {
                            return Err(Failed::BeforeResponse(BackendError::Timeout));
                        }
                    },
                    response = &mut response, if responded.is_none() => match response {
                        Err(err) => return Err(err),
                        Ok(response) => responded = Some(response),
                    },
                }
            }
            match (body_sent, responded) {
                // The backend stopped reading the body, and answered: the answer went
                // out, but neither connection can carry another request (the rest of
                // the body is still on the client's).
                (Some(Err(Side::Backend)), Some(Responded::Done { status, bytes, .. })) => {
                    Ok(Responded::Done { backend_keep_alive: false, client_keep_alive: false, status, bytes })
                }
                (_, Some(response)) => Ok(response),
                (_, None) => Err(Failed::AfterResponse),
            }
        };
        match responded {
            Ok(Responded::Done { backend_keep_alive, client_keep_alive, status, bytes }) => {
                if backend_keep_alive {
                    backend.conns().put(conn);
                }
                drop(in_flight);
                return Ok(Answered { keep_alive: client_keep_alive && req.keep_alive, status, bytes });
            }
            Ok(Responded::Switched) => {
                // Both sides switched protocols: bytes both ways until either closes.
                // What the client sent past its head belongs to the backend.
                conn.stream.write_all(cbuf).await.map_err(|_| Failed::AfterResponse)?;
                if let Err(err) = tokio::io::copy_bidirectional(client, &mut conn.stream).await {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
                drop(in_flight);
                return Ok(Answered { keep_alive: false, status: 101, bytes: 0 });
            }
            // Dropped without an answer after the request went out: the app may have run
            // it, so only a request that may run twice goes again.
            Err(Failed::BeforeResponse(BackendError::Closed))
                if conn.reused && req.framing == Framing::Empty && req.idempotent => {}
            Err(err) => return Err(err),
        }
    }
}

/// How a response went out.
enum Responded {
    /// All of it (`bytes` to the client, head and body); whether each connection can carry
    /// another exchange.
    Done { backend_keep_alive: bool, client_keep_alive: bool, status: u16, bytes: u64 },
    /// A `101 Switching Protocols`, head and any bytes after it: the connection is now
    /// a tunnel.
    Switched,
}

/// How long [`respond`] waits for the backend.
struct Wait<'a> {
    /// Until when the response head may take (`None`: the caller keeps the time).
    head: Option<Pin<&'a mut Sleep>>,
    /// Set once the response head arrived.
    head_seen: &'a AtomicBool,
    /// How long the backend may then send nothing.
    body: Duration,
    /// `Strict-Transport-Security: max-age=N` is added to the head, unless the app sent one.
    hsts: Option<u32>,
}

/// Reads the backend's response and sends it to the client as it arrives: head
/// rewritten, body copied (or decoded for an HTTP/1.0 client). What came with the head
/// goes in the same write.
async fn respond<R, W>(
    backend: &mut R,
    bbuf: &mut Vec<u8>,
    client: &mut W,
    down: &mut Vec<u8>,
    answering: Answering,
    wait: Wait<'_>,
) -> Result<Responded, Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let resp = read_response_head(backend, bbuf, client, down, answering, wait.head, wait.hsts)
        .await
        .map_err(Failed::BeforeResponse)?;
    wait.head_seen.store(true, Ordering::Relaxed);
    // `bbuf[at..]` is what is left to forward.
    let mut at = resp.head_len;
    if resp.status == 101 {
        down.extend_from_slice(&bbuf[at..]);
        bbuf.clear();
        idle(send(client, down)).await.map_err(|_| Failed::Client)?;
        return Ok(Responded::Switched);
    }
    let mut chunked = Chunked::default();
    let mut remaining = match resp.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut backend_open = true;
    let mut sent = 0u64;
    loop {
        let input = &bbuf[at..];
        match resp.framing {
            Framing::Empty => {}
            Framing::Length(_) => {
                let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len());
                down.extend_from_slice(&input[..n]);
                remaining -= n as u64;
                at += n;
            }
            Framing::Chunked if resp.raw_chunked => {
                let n = chunked.measure(input).map_err(|_| Failed::AfterResponse)?;
                down.extend_from_slice(&input[..n]);
                at += n;
            }
            Framing::Chunked => {
                // An HTTP/1.0 client: the data alone, ended by closing the connection.
                at += chunked.decode(input, down).map_err(|_| Failed::AfterResponse)?;
            }
            Framing::UntilClose => {
                down.extend_from_slice(input);
                at = bbuf.len();
            }
        }
        if !down.is_empty() {
            idle(send(client, down)).await.map_err(|_| Failed::Client)?;
            sent += down.len() as u64;
            down.clear();
        }
        let done = match resp.framing {
            Framing::Empty => true,
            Framing::Length(_) => remaining == 0,
            Framing::Chunked => chunked.is_done(),
            Framing::UntilClose => !backend_open,
        };
        if done {
            break;
        }
        bbuf.drain(..at);
        at = 0;
        reserve(bbuf);
        match tokio::time::timeout(wait.body, backend.read_buf(bbuf)).await {
            Ok(Ok(0)) if resp.framing == Framing::UntilClose => backend_open = false,
            Ok(Ok(0) | Err(_)) => return Err(Failed::AfterResponse),
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::warn!(after = ?wait.body, "backend stopped sending in the middle of its answer");
                return Err(Failed::AfterResponse);
            }
        }
    }
    let leftover = at < bbuf.len();
    bbuf.clear();
    // Bytes past the response mean the backend and the ingress disagree on framing:
    // never send another request on that connection.
    Ok(Responded::Done {
        backend_keep_alive: resp.backend_keep_alive && !leftover && backend_open,
        client_keep_alive: resp.client_keep_alive,
        status: resp.status,
        bytes: sent,
    })
}

/// Which side of an exchange failed.
enum Side {
    Client,
    Backend,
}

/// Copies the rest of a request body from the client to the backend (a chunked one
/// chunked anew through `scratch`).
#[allow(clippy::too_many_arguments)]
async fn pump_body<R, W>(
    client: &mut R,
    cbuf: &mut Vec<u8>,
    backend: &mut W,
    scratch: &mut Vec<u8>,
    framing: Framing,
    chunked: &mut Chunked,
    remaining: &mut u64,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let done = match framing {
            Framing::Length(_) => *remaining == 0,
            Framing::Chunked => chunked.is_done(),
            Framing::Empty | Framing::UntilClose => true,
        };
        if done {
            return Ok(());
        }
        if cbuf.is_empty() {
            reserve(cbuf);
            match idle(client.read_buf(cbuf)).await {
                Ok(0) | Err(_) => return Err(Side::Client),
                Ok(_) => {}
            }
        }
        let sent = match framing {
            Framing::Chunked => {
                scratch.clear();
                let n = chunked.rechunk(cbuf, scratch).map_err(|_| Side::Client)?;
                cbuf.drain(..n);
                idle(backend.write_all(scratch)).await
            }
            _ => {
                let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(cbuf.len());
                *remaining -= n as u64;
                let sent = idle(backend.write_all(&cbuf[..n])).await;
                cbuf.drain(..n);
                sent
            }
        };
        sent.map_err(|_| Side::Backend)?;
    }
}

/// Reads the response head into `bbuf` and rewrites it for the client into `out`;
/// interim (1xx) responses are passed on to the client as they come. Gives up when
/// `deadline` passes.
async fn read_response_head<R, W>(
    backend: &mut R,
    bbuf: &mut Vec<u8>,
    client: &mut W,
    out: &mut Vec<u8>,
    answering: Answering,
    mut deadline: Option<Pin<&mut Sleep>>,
    hsts: Option<u32>,
) -> Result<h1::Response, BackendError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut got_any = false;
    loop {
        if !bbuf.is_empty() {
            out.clear();
            if let Some(resp) = h1::response(bbuf, answering, out)? {
                match resp.status {
                    101 if answering.upgrade => return Ok(resp),
                    101 => return Err(BackendError::UnaskedSwitch),
                    100..=199 => {
                        // An HTTP/1.0 client knows no interim responses.
                        if !answering.http10 && resp.status != 100 {
                            send(client, out).await.map_err(BackendError::Io)?;
                        }
                        bbuf.drain(..resp.head_len);
                        continue;
                    }
                    _ => {
                        if let Some(max_age) = hsts {
                            add_hsts(out, max_age);
                        }
                        return Ok(resp);
                    }
                }
            }
        }
        reserve(bbuf);
        let read = match deadline.as_mut() {
            // The read first: a timer that is not polled is not registered.
            Some(deadline) => tokio::select! {
                biased;
                read = backend.read_buf(bbuf) => read,
                () = deadline.as_mut() => return Err(BackendError::Timeout),
            },
            None => backend.read_buf(bbuf).await,
        };
        match read {
            // Closed or reset before a byte of answer: the backend dropped the connection.
            Ok(0) | Err(_) if !got_any => return Err(BackendError::Closed),
            Ok(0) => return Err(BackendError::Response(h1::ResponseError::Malformed)),
            Ok(_) => got_any = true,
            Err(err) => return Err(BackendError::Io(err)),
        }
    }
}

/// Writes `bytes` to the client and flushes them: over TLS, a write can leave the end of
/// a record in the session's buffer, which a flush sends (a no-op on plain TCP).
async fn send<W: AsyncWrite + Unpin>(client: &mut W, bytes: &[u8]) -> io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// Makes sure `buf` has room for a read.
fn reserve(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Our own answers.
#[derive(Clone, Copy)]
pub(crate) enum Page {
    NotFound,
    NoDeployment,
    Stopped,
    BadGateway,
    GatewayTimeout,
}

const NOT_FOUND_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>No app here</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>404 &mdash; no app here</h1><p>There is no app at this address.</p>\
<p><small>paastech</small></p></body></html>\n";

const NO_DEPLOYMENT_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>No live deployment</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>503 &mdash; no live deployment</h1><p>This app exists but has no live deployment right now. Push to deploy it, or scale its web processes above zero.</p>\
<p><small>paastech</small></p></body></html>\n";

const STOPPED_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>App stopped</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>503 &mdash; app stopped</h1><p>This app has been stopped by its owner. It serves again once they start it (<code>paastech start</code>).</p>\
<p><small>paastech</small></p></body></html>\n";

const GATEWAY_TIMEOUT_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Gateway timeout</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>504 &mdash; gateway timeout</h1><p>The app took too long to answer.</p>\
<p><small>paastech</small></p></body></html>\n";

const BAD_GATEWAY_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Bad gateway</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>502 &mdash; bad gateway</h1><p>The app did not answer. It may be restarting; try again in a moment.</p>\
<p><small>paastech</small></p></body></html>\n";

/// A page's status code and HTML.
pub(crate) fn page(which: Page) -> (u16, &'static str) {
    match which {
        Page::NotFound => (404, NOT_FOUND_HTML),
        Page::NoDeployment => (503, NO_DEPLOYMENT_HTML),
        Page::Stopped => (503, STOPPED_HTML),
        Page::BadGateway => (502, BAD_GATEWAY_HTML),
        Page::GatewayTimeout => (504, GATEWAY_TIMEOUT_HTML),
    }
}

async fn write_page(
    client: &mut (impl AsyncWrite + Unpin),
    which: Page,
    req: Answering,
    keep_alive: bool,
) -> io::Result<u64> {
    let (_, html) = page(which);
    let status = match which {
        Page::NotFound => "404 Not Found",
        Page::NoDeployment | Page::Stopped => "503 Service Unavailable",
        Page::BadGateway => "502 Bad Gateway",
        Page::GatewayTimeout => "504 Gateway Timeout",
    };
    let version = if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let connection = match (keep_alive, req.http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let mut page = format!(
        "{version} {status}\r\nServer: paastech\r\nContent-Type: text/html; charset=utf-8\r\n\
         Cache-Control: no-store\r\nContent-Length: {}\r\n{connection}\r\n",
        html.len()
    )
    .into_bytes();
    if !req.head_method {
        page.extend_from_slice(html.as_bytes());
    }
    send(client, &page).await?;
    Ok(page.len() as u64)
}

/// The 503 page of a request for a sleeping app that could not be woken, saying why.
pub(crate) fn wake_refused_html(why: &WakeRefused) -> String {
    let why = why.to_string().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>App not started</title></head>\
<body style=\"font-family:sans-serif;margin:4em auto;max-width:40em\">\
<h1>503 &mdash; app not started</h1><p>This app was asleep and could not be woken: {why}.</p>\
<p>Try again in a moment; its owner sees the reason in <code>paastech ps</code>.</p>\
<p><small>paastech</small></p></body></html>\n"
    )
}

async fn write_wake_refused(
    client: &mut (impl AsyncWrite + Unpin),
    why: &WakeRefused,
    req: Answering,
    keep_alive: bool,
) -> io::Result<u64> {
    let html = wake_refused_html(why);
    let version = if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let connection = match (keep_alive, req.http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let mut page = format!(
        "{version} 503 Service Unavailable\r\nServer: paastech\r\nContent-Type: text/html; charset=utf-8\r\n\
         Cache-Control: no-store\r\nRetry-After: 5\r\nContent-Length: {}\r\n{connection}\r\n",
        html.len()
    )
    .into_bytes();
    if !req.head_method {
        page.extend_from_slice(html.as_bytes());
    }
    send(client, &page).await?;
    Ok(page.len() as u64)
}

/// A plain answer to a request that cannot be served at all; the connection closes.
/// `why` says what was wrong with the request.
fn error_page(status: u16, reason: &str, why: &str) -> Vec<u8> {
    let body = format!("{status} {reason}: {why}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: paastech\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_location_keeps_host_path_and_query() {
        // (Host, https port, request target, Location)
        let cases: &[(&str, u16, &str, Option<&str>)] = &[
            ("blog.apps.example", 443, "/", Some("https://blog.apps.example/")),
            ("blog.apps.example:8000", 443, "/a/b?x=1&y=2", Some("https://blog.apps.example/a/b?x=1&y=2")),
            ("blog.apps.example:8000", 8443, "/a?x", Some("https://blog.apps.example:8443/a?x")),
            ("www.example.com.", 443, "/p", Some("https://www.example.com/p")),
            ("www.example.com", 443, "http://www.example.com/p?q", Some("https://www.example.com/p?q")),
            ("www.example.com", 443, "http://www.example.com", Some("https://www.example.com/")),
            ("www.example.com", 443, "http://www.example.com?q=1", Some("https://www.example.com/?q=1")),
            ("www.example.com", 443, "*", None),
            ("www.example.com", 443, "www.example.com:80", None),
            ("www.example.com", 443, "ftp://www.example.com/", None),
            (":80", 443, "/", None),
        ];
        for (host, port, target, want) in cases {
            assert_eq!(https_location(host, *port, target).as_deref(), *want, "{host} {port} {target}");
        }
    }

    #[test]
    fn acme_challenges_are_recognized_in_both_forms() {
        assert!(is_acme_challenge("/.well-known/acme-challenge/abc"));
        assert!(is_acme_challenge("http://blog.apps.example/.well-known/acme-challenge/abc"));
        assert!(!is_acme_challenge("/.well-known/acme-challenge"));
        assert!(!is_acme_challenge("/.well-known/other"));
        assert!(!is_acme_challenge("/x/.well-known/acme-challenge/abc"));
    }

    #[test]
    fn request_target_is_the_second_word_of_the_request_line() {
        assert_eq!(request_target(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"), Some("/a?b"));
        assert_eq!(request_target(b"OPTIONS * HTTP/1.1\r\n\r\n"), Some("*"));
        assert_eq!(request_target(b"GET\r\n"), None);
    }

    #[test]
    fn hsts_is_added_once_before_the_blank_line() {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec();
        add_hsts(&mut head, 300);
        assert_eq!(head, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nStrict-Transport-Security: max-age=300\r\n\r\n");
        let mut own = b"HTTP/1.1 200 OK\r\nstrict-transport-security: max-age=5\r\n\r\n".to_vec();
        let before = own.clone();
        add_hsts(&mut own, 300);
        assert_eq!(own, before, "the app's own header wins");
    }
}
