//! HTTP/1.x messages as the proxy forwards them (RFC 9112): heads are parsed by httparse
//! and rewritten for the next hop in one pass; bodies are never parsed, only measured, so
//! the proxy knows where each message ends.
//!
//! A proxy and the server behind it must agree on where every message ends, or a crafted
//! request can smuggle a second one past the proxy. So framing is strict here: one
//! `Content-Length` value, `Transfer-Encoding` only as `chunked`, never both, chunk lines
//! ended by CRLF. Anything else is refused before a byte reaches a backend.

use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::ops::Range;

/// The most header lines a head may have.
pub(crate) const MAX_HEADERS: usize = 100;
/// The largest head accepted, request line or status line included.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// There is none.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a request head is refused; each maps to the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head too large")]
    TooLarge,
    #[error("transfer coding not supported")]
    UnsupportedCoding,
}

impl RequestError {
    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            RequestError::Malformed(_) => (400, "Bad Request"),
            RequestError::TooLarge => (431, "Request Header Fields Too Large"),
            RequestError::UnsupportedCoding => (501, "Not Implemented"),
        }
    }
}

/// A request head, read and already rewritten for the backend.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes of the head in the input, blank line included.
    pub head_len: usize,
    /// The host the request is for (from an absolute-form target, else `Host`), as a range
    /// of the input.
    pub host: Option<Range<usize>>,
    /// The target's path and query (without an absolute form's scheme and authority), as
    /// a range of the input.
    pub path: Range<usize>,
    pub framing: Framing,
    /// HTTP/1.0 (else 1.1).
    pub http10: bool,
    /// The client wants its connection kept open after this exchange.
    pub keep_alive: bool,
    /// A protocol upgrade (WebSocket) is asked for.
    pub upgrade: bool,
    /// `HEAD`: the response has no body, whatever its headers say.
    pub head_method: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before its body.
    pub expect_continue: bool,
    /// Sending the request twice has the effect of sending it once (RFC 9110 §9.2.2): it
    /// may go again if the backend dropped the connection without answering.
    pub idempotent: bool,
}

/// What the proxy adds to every request it forwards.
pub(crate) struct Forwarded<'a> {
    /// The client's address, for `X-Forwarded-For`.
    pub client_ip: &'a str,
    /// The client is a trusted proxy: its `X-Forwarded-Proto` is passed on.
    pub trusted: bool,
    /// The client spoke TLS to the ingress itself: `X-Forwarded-Proto: https`, whoever
    /// the client is.
    pub https: bool,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), and `Transfer-Encoding`, which each hop sets
/// for its own framing: never copied either way. `Upgrade` is handled apart, since an
/// upgrade must reach the other side.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// What the proxy itself sets on a request, from what it parsed (the length) or knows
/// (`X-Forwarded-For` is appended to, apart), or answers itself (`Expect`).
const SET_ON_REQUESTS: [&str; 5] = ["content-length", "host", "x-forwarded-proto", "x-forwarded-host", "expect"];

pub(crate) fn dropped_request_header(name: &str) -> bool {
    [&HOP_BY_HOP[..], &SET_ON_REQUESTS]
        .into_iter()
        .any(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)) || aliases(name, names))
        || aliases(name, &["x-forwarded-for"])
}

pub(crate) fn dropped_response_header(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether a comma-separated header value holds `token` (any case).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether `name` is one of `names` once its underscores are read as dashes. CGI-style
/// servers (WSGI, Rack, PHP) read `X_Forwarded_For` and `X-Forwarded-For` as the same
/// variable, so a client must not slip past the proxy's own headers with underscores.
fn aliases(name: &str, names: &[&str]) -> bool {
    name.contains('_')
        && names.iter().any(|n| {
            n.len() == name.len()
                && n.bytes().zip(name.bytes()).all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
        })
}

/// Whether `name` is listed in one of the `Connection` values (which makes it hop-by-hop).
fn named_by_connection(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|v| has_token(v, name))
}

/// The offset of `part` (a slice of `input`) in `input`.
fn offset(input: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - input.as_ptr() as usize
}

/// The value of `Content-Length` fields: all must be the same number (RFC 9112 §6.3),
/// leading zeros and all, that fits in 64 bits.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))).ok_or(())?;
            match found {
                Some(m) if m != n => return Err(()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Whether `Transfer-Encoding` ends in `chunked`; `None` when there is no such field.
/// Empty list elements do not count (RFC 9110 §5.6.1): `chunked,` ends in `chunked` (and
/// [`response`] passes it on as `chunked` alone, which no parser reads otherwise).
fn ends_chunked<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<bool> {
    let mut found = None;
    for value in values {
        let last = value.split(|&b| b == b',').map(<[u8]>::trim_ascii).rfind(|c| !c.is_empty());
        match last {
            Some(coding) => found = Some(coding.eq_ignore_ascii_case(b"chunked")),
            None => found = found.or(Some(false)),
        }
    }
    found
}

/// Parses a request head at the start of `input` and writes it, rewritten for the
/// backend, to `out`: origin-form target, HTTP/1.1, hop-by-hop headers dropped, `Host`
/// and the `X-Forwarded-*` headers set. `Ok(None)`: the head is not complete yet.
pub(crate) fn request(input: &[u8], fwd: &Forwarded<'_>, out: &mut Vec<u8>) -> Result<Option<Request>, RequestError> {
    // Uninitialised: filling 100 empty headers on every request costs more than parsing.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD_BYTES => return Err(RequestError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(_) => return Err(RequestError::Malformed("not an HTTP/1 request head")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(RequestError::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("incomplete request line"));
    };
    if method == "CONNECT" {
        return Err(RequestError::Malformed("CONNECT is not supported"));
    }
    let http10 = version == 0;
    let headers = req.headers;
    let named = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));

    // An absolute-form target names the host itself and wins over `Host` (RFC 9112 §3.2.2).
    let (target, authority) = split_absolute(target);
    let mut hosts = named("host");
    let host_field = hosts.next().map(|h| h.value);
    if hosts.next().is_some() {
        return Err(RequestError::Malformed("more than one Host"));
    }
    let host = authority.map(str::as_bytes).or(host_field);
    if host.is_none() && !http10 {
        return Err(RequestError::Malformed("no Host"));
    }

    let connection: Vec<&[u8]> = named("connection").map(|h| h.value).collect();
    let upgrade = named("upgrade").next().is_some() && connection.iter().any(|v| has_token(v, "upgrade"));
    let keep_alive = if connection.iter().any(|v| has_token(v, "close")) {
        false
    } else {
        !http10 || connection.iter().any(|v| has_token(v, "keep-alive"))
    };

    let length = content_length(named("content-length").map(|h| h.value))
        .map_err(|()| RequestError::Malformed("invalid Content-Length"))?;
    // A request body is `chunked` alone, in one field, or has a length.
    let mut codings = named("transfer-encoding");
    let framing = match (codings.next(), codings.next()) {
        (None, _) => match length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
        _ if http10 => return Err(RequestError::Malformed("Transfer-Encoding in an HTTP/1.0 request")),
        _ if length.is_some() => return Err(RequestError::Malformed("both Content-Length and Transfer-Encoding")),
        (Some(h), None) if h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        // Where the body ends cannot be known (RFC 9112 §6.3 rule 4).
        _ if ends_chunked(named("transfer-encoding").map(|h| h.value)) != Some(true) => {
            return Err(RequestError::Malformed("Transfer-Encoding does not end in chunked"));
        }
        // Codings the proxy does not decode before `chunked`, or `chunked` twice.
        _ => return Err(RequestError::UnsupportedCoding),
    };
    // A protocol switch on a request with a body is not one the proxy can tunnel.
    let upgrade = upgrade && framing == Framing::Empty;
    let expect_continue = named("expect").any(|h| h.value.eq_ignore_ascii_case(b"100-continue"));

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if !target.starts_with('/') && target != "*" {
        // Origin form never has an empty path.
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // HTTP/1.1 requires the field; empty when an HTTP/1.0 client named no host (RFC 9112
    // §3.2).
    put_header(out, b"Host", host.unwrap_or_default());
    let mut forwarded_for = false;
    for h in headers.iter() {
        let is_upgrade = h.name.eq_ignore_ascii_case("upgrade");
        if dropped_request_header(h.name)
            || (is_upgrade && !upgrade)
            || (!is_upgrade && named_by_connection(&connection, h.name))
        {
            continue;
        }
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            // One field, the earlier proxies' addresses first (RFC 7239's older cousin).
            if !forwarded_for {
                forwarded_for = true;
                out.extend_from_slice(b"X-Forwarded-For: ");
                for v in named("x-forwarded-for") {
                    out.extend_from_slice(v.value);
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(fwd.client_ip.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        put_header(out, h.name.as_bytes(), h.value);
    }
    if !forwarded_for {
        put_header(out, b"X-Forwarded-For", fwd.client_ip.as_bytes());
    }
    // Only a trusted proxy in front knows whether the client spoke TLS to it.
    // The first proxy's word is first in the list; an untrusted client's is not read.
    let said = || named("x-forwarded-proto").next().and_then(|h| h.value.split(|&b| b == b',').next());
    let proto = match fwd.trusted.then(said).flatten().map(<[u8]>::trim_ascii) {
        _ if fwd.https => "https",
        Some(v) if v.eq_ignore_ascii_case(b"https") => "https",
        _ => "http",
    };
    put_header(out, b"X-Forwarded-Proto", proto.as_bytes());
    if let Some(host) = host {
        put_header(out, b"X-Forwarded-Host", host);
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(Bytes(out), "Content-Length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        // Some frameworks want a length on a POST even when the body is empty.
        Framing::Empty if length == Some(0) => out.extend_from_slice(b"Content-Length: 0\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(Request {
        head_len,
        host: host.map(|h| {
            let start = offset(input, h);
            start..start + h.len()
        }),
        path: {
            let start = offset(input, target.as_bytes());
            start..start + target.len()
        },
        framing,
        http10,
        keep_alive,
        upgrade,
        head_method: method == "HEAD",
        expect_continue,
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
    }))
}

/// `(path and query, authority)` of a request target; the path is empty (and the query
/// may follow at once) in `http://host` and `http://host?q`.
fn split_absolute(target: &str) -> (&str, Option<&str>) {
    let rest = match target.get(..7) {
        Some(s) if s.eq_ignore_ascii_case("http://") => &target[7..],
        _ => match target.get(..8) {
            Some(s) if s.eq_ignore_ascii_case("https://") => &target[8..],
            _ => return (target, None),
        },
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // The authority may carry user info, which never belongs in `Host`.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    (path, Some(authority))
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `fmt::Write` into a byte buffer, for numbers.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Why a backend's response head cannot be forwarded (the client gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResponseError {
    #[error("malformed response head")]
    Malformed,
    #[error("response head too large")]
    TooLarge,
    #[error("invalid Content-Length in the response")]
    Length,
}

/// A response head, read and already rewritten for the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub head_len: usize,
    pub status: u16,
    /// How the backend delimits the body (what the proxy reads).
    pub framing: Framing,
    /// The body goes to the client chunked as it came: only the framing is tracked. Else
    /// a chunked body is decoded (for an HTTP/1.0 client) and the client connection
    /// closes after it.
    pub raw_chunked: bool,
    /// The backend connection can carry another request after this one.
    pub backend_keep_alive: bool,
    /// The client connection can carry another request after this one.
    pub client_keep_alive: bool,
}

/// What the proxy knows of the request a response answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answering {
    pub head_method: bool,
    pub http10: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

/// Parses a response head at the start of `input` and writes it, rewritten for the
/// client, to `out`. `Ok(None)`: the head is not complete yet.
pub(crate) fn response(input: &[u8], req: Answering, out: &mut Vec<u8>) -> Result<Option<Response>, ResponseError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, input, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD_BYTES => return Err(ResponseError::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
            Err(_) => return Err(ResponseError::Malformed),
        };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(ResponseError::Malformed);
    };
    let reason = resp.reason.unwrap_or("");
    let headers = resp.headers;
    let named = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    let connection: Vec<&[u8]> = named("connection").map(|h| h.value).collect();
    let switching = status == 101 && req.upgrade;

    let length = content_length(named("content-length").map(|h| h.value)).map_err(|()| ResponseError::Length)?;
    let chunked = ends_chunked(named("transfer-encoding").map(|h| h.value));
    let framing = if req.head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let backend_keep_alive = framing != Framing::UntilClose
        // Both framings at once (RFC 9112 §6.3): the message is read by its chunks, but
        // the connection is not to be trusted with another.
        && !(chunked.is_some() && length.is_some())
        && !connection.iter().any(|v| has_token(v, "close"))
        && (version == 1 || connection.iter().any(|v| has_token(v, "keep-alive")));
    let raw_chunked = framing == Framing::Chunked && !req.http10;
    let client_keep_alive =
        req.keep_alive && !switching && framing != Framing::UntilClose && (framing != Framing::Chunked || raw_chunked);

    out.extend_from_slice(if req.http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    let _ = write!(Bytes(out), "{status} ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for h in headers.iter() {
        let framing_field = h.name.eq_ignore_ascii_case("content-length");
        let is_upgrade = h.name.eq_ignore_ascii_case("upgrade");
        if dropped_response_header(h.name)
            || (is_upgrade && !switching)
            // The length is the framing the client reads by, whatever `Connection` lists.
            || (!is_upgrade && !framing_field && named_by_connection(&connection, h.name))
            // Decoded or read until close: the length the client sees is not the backend's.
            || (framing_field && matches!(framing, Framing::Chunked | Framing::UntilClose))
        {
            continue;
        }
        if framing_field {
            // One field with the one number, where the backend's first one was: a client
            // that refuses `5, 5` or two fields reads the same length as the proxy.
            if let (Some(n), false) = (length, length_written) {
                length_written = true;
                let _ = write!(Bytes(out), "Content-Length: {n}\r\n");
            }
            continue;
        }
        put_header(out, h.name.as_bytes(), h.value);
    }
    // A coding other than chunked (read until close) reaches the client with its name.
    // In one field without empty list elements, so that no client can read another
    // final coding than the proxy did (`chunked,` is not `chunked` to every parser).
    // Never to an HTTP/1.0 client (RFC 9112 §6.1), which could not read it.
    if !req.http10 && (raw_chunked || chunked == Some(false) || (framing == Framing::Empty && chunked.is_some())) {
        out.extend_from_slice(b"Transfer-Encoding: ");
        let codings = named("transfer-encoding").flat_map(|h| h.value.split(|&b| b == b','));
        for (i, coding) in codings.map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()).enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(coding);
        }
        out.extend_from_slice(b"\r\n");
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !client_keep_alive && (100..200).contains(&status) {
        // An interim response says nothing about the connection.
    } else if !client_keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response { head_len, status, framing, raw_chunked, backend_keep_alive, client_keep_alive }))
}

/// A chunked body, measured as it streams by (RFC 9112 §7.1).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Data bytes left in the current chunk.
    remaining: u64,
    /// Hex digits of the current size line.
    digits: u8,
    /// [`Chunked::rechunk`] wrote the last chunk.
    finished: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Spaces after the size, before `;` or CR.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A run of a chunked body, as [`Chunked::step`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// Size lines, CRLFs and trailers: `n` bytes that carry no data.
    Framing(usize),
    /// `n` bytes of the message's data.
    Data(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct ChunkError;

impl Chunked {
    /// The body ended (the last chunk and the trailers were seen).
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The first piece of `input`, which continues the body; `Framing(0)` once done.
    fn step(&mut self, input: &[u8]) -> Result<Piece, ChunkError> {
        use ChunkState::*;
        if self.state == Data {
            let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(input.len());
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.state = DataCr;
            }
            return Ok(Piece::Data(n));
        }
        let mut used = 0;
        for &b in input {
            if self.state == Data || self.state == Done {
                break;
            }
            used += 1;
            self.state = match (self.state, b) {
                (Size, _) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > 15 {
                        return Err(ChunkError);
                    }
                    self.remaining = self.remaining * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    Size
                }
                (Size | SizeSpace, b' ' | b'\t') if self.digits > 0 => SizeSpace,
                (Size | SizeSpace, b';') if self.digits > 0 => Extension,
                (Size | SizeSpace | Extension, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\n') => return Err(ChunkError),
                (Extension, b) if b == b'\t' || !b.is_ascii_control() => Extension,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.remaining == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, b) if b == b'\t' || !b.is_ascii_control() => Trailer,
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(ChunkError),
            };
        }
        Ok(Piece::Framing(used))
    }

    /// Goes through the body's bytes at the start of `input` (all of them, unless it ends
    /// inside `input`), handing each run of data to `data`. Returns how many bytes of
    /// `input` belong to the body.
    fn each_data(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < input.len() && !self.is_done() {
            match self.step(&input[at..])? {
                Piece::Data(n) => {
                    data(&input[at..at + n]);
                    at += n;
                }
                Piece::Framing(n) => at += n,
            }
        }
        Ok(at)
    }

    /// How many bytes at the start of `input` belong to the body.
    pub(crate) fn measure(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        self.each_data(input, |_| {})
    }

    /// Like [`Chunked::measure`], appending the body's data alone to `out`.
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        self.each_data(input, |data| out.extend_from_slice(data))
    }

    /// Like [`Chunked::measure`], appending the body to `out` chunked anew: each run of
    /// data in a chunk of its own, the last chunk once the body ends. Extensions and
    /// trailers are dropped, so a backend never parses what the proxy merely measured.
    pub(crate) fn rechunk(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let used = self.each_data(input, |data| {
            let _ = write!(Bytes(out), "{:x}\r\n", data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        })?;
        if self.is_done() && !self.finished {
            self.finished = true;
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Option<(Request, String)>, RequestError> {
        let mut out = Vec::new();
        let fwd = Forwarded { client_ip: "10.0.0.9", trusted: false, https: false };
        Ok(request(raw.as_bytes(), &fwd, &mut out)?.map(|r| (r, String::from_utf8(out).expect("utf-8"))))
    }

    #[test]
    fn request_heads_are_rewritten_for_the_backend() {
        const REQ: &str = "GET /a?b HTTP/1.1\r\nHost: Blog.apps\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                            Keep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\nX-Forwarded-For: 1.2.3.4\r\n\
                            X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nrest";
        let (r, out) = req(REQ).expect("valid").expect("complete");
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: Blog.apps\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nAccept: */*\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: Blog.apps\r\n\r\n"
        );
        assert_eq!(r.head_len, REQ.len() - "rest".len());
        assert_eq!(&"GET /a?b HTTP/1.1\r\nHost: Blog.apps\r\n"[r.host.clone().expect("host")], "Blog.apps");
        assert_eq!((r.framing, r.http10, r.keep_alive, r.upgrade), (Framing::Empty, false, true, false));
    }

    #[test]
    fn only_a_trusted_proxy_says_the_request_came_over_https() {
        let proto_over = |https: bool, trusted: bool, header: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{header}\r\n");
            let mut out = Vec::new();
            let fwd = Forwarded { client_ip: "10.0.0.9", trusted, https };
            request(raw.as_bytes(), &fwd, &mut out).expect("valid").expect("complete");
            let out = String::from_utf8(out).expect("utf-8");
            let protos: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("X-Forwarded-Proto: ")).collect();
            assert_eq!(protos.len(), 1, "one X-Forwarded-Proto: {out}");
            protos[0].to_owned()
        };
        let proto = |trusted: bool, header: &str| proto_over(false, trusted, header);
        // Over the ingress's own TLS it is https, whatever a client says.
        for trusted in [false, true] {
            for header in ["", "X-Forwarded-Proto: http\r\n", "X-Forwarded-Proto: https\r\n"] {
                assert_eq!(proto_over(true, trusted, header), "https", "over TLS, trusted {trusted}, {header:?}");
            }
        }
        let cases: &[(bool, &str, &str)] = &[
            (true, "X-Forwarded-Proto: https\r\n", "https"),
            (true, "X-Forwarded-Proto:  HTTPS \r\n", "https"),
            (true, "X-Forwarded-Proto: https, http\r\n", "https"),
            (true, "X-Forwarded-Proto: http\r\n", "http"),
            (true, "X-Forwarded-Proto: gopher\r\n", "http"),
            (true, "", "http"),
            (true, "X_Forwarded_Proto: https\r\n", "http"),
            (false, "X-Forwarded-Proto: https\r\n", "http"),
        ];
        for &(trusted, header, want) in cases {
            assert_eq!(proto(trusted, header), want, "trusted {trusted}, {header:?}");
        }
    }

    #[test]
    fn request_framing_and_connection_table() {
        use Framing::*;
        type Want = Result<(Framing, bool), RequestError>;
        let cases: &[(&str, Want)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok((Empty, true))),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Ok((Empty, false))),
            ("GET / HTTP/1.0\r\n\r\n", Ok((Empty, false))),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", Ok((Empty, true))),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n", Ok((Length(12), true))),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Ok((Empty, true))),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Ok((Length(5), true))),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ok((Chunked, true))),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n", Ok((Chunked, true))),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Err(RequestError::Malformed("invalid Content-Length")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                Err(RequestError::Malformed("invalid Content-Length")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
                Err(RequestError::Malformed("invalid Content-Length")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(RequestError::Malformed("both Content-Length and Transfer-Encoding")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(RequestError::Malformed("Transfer-Encoding does not end in chunked")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Err(RequestError::Malformed("Transfer-Encoding does not end in chunked")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
                Err(RequestError::Malformed("Transfer-Encoding does not end in chunked")),
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", Err(RequestError::UnsupportedCoding)),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(RequestError::UnsupportedCoding),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(RequestError::UnsupportedCoding),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(RequestError::Malformed("Transfer-Encoding in an HTTP/1.0 request")),
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err(RequestError::Malformed("more than one Host"))),
            ("GET / HTTP/1.1\r\n\r\n", Err(RequestError::Malformed("no Host"))),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Err(RequestError::Malformed("CONNECT is not supported"))),
            ("GET / HTTP/1.1\r\nHost a\r\n\r\n", Err(RequestError::Malformed("not an HTTP/1 request head"))),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err(RequestError::Malformed("not an HTTP/1 request head"))),
        ];
        for (raw, want) in cases {
            let got = req(raw).map(|r| {
                let (r, _) = r.expect("complete");
                (r.framing, r.keep_alive)
            });
            assert_eq!(&got, want, "{raw:?}");
        }
    }

    #[test]
    fn headers_the_proxy_sets_cannot_be_smuggled_with_underscores_or_connection() {
        let (_, out) = req("POST / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n\
                            Content_Length: 9\r\nX_Custom: kept\r\nContent-Length: 0\r\n\r\n")
        .expect("valid")
        .expect("complete");
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nX_Custom: kept\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: a\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn idempotent_methods() {
        for (method, want) in
            [("GET", true), ("HEAD", true), ("PUT", true), ("DELETE", true), ("POST", false), ("PATCH", false)]
        {
            let (r, _) = req(&format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n")).expect("valid").expect("complete");
            assert_eq!(r.idempotent, want, "{method}");
        }
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n").expect("valid so far").map(|(r, _)| r.head_len), None);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(req(&huge).err(), Some(RequestError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(req(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(), Some(RequestError::TooLarge));
    }

    #[test]
    fn absolute_form_targets() {
        let cases = [
            ("http://blog.apps:8000/x?y", ("/x?y", Some("blog.apps:8000"))),
            ("HTTP://blog.apps", ("", Some("blog.apps"))),
            ("http://user@blog.apps/", ("/", Some("blog.apps"))),
            ("http://blog.apps?q=1", ("?q=1", Some("blog.apps"))),
            ("/plain", ("/plain", None)),
            ("*", ("*", None)),
        ];
        for (target, want) in cases {
            assert_eq!(split_absolute(target), want, "{target}");
        }
        let (r, out) = req("GET http://blog.apps/p HTTP/1.1\r\nHost: other\r\n\r\n").expect("valid").expect("complete");
        assert!(out.starts_with("GET /p HTTP/1.1\r\nHost: blog.apps\r\n"), "{out}");
        assert!(r.host.is_some());
        let (_, out) = req("GET http://blog.apps?q HTTP/1.1\r\n\r\n").expect("valid").expect("complete");
        assert!(out.starts_with("GET /?q HTTP/1.1\r\nHost: blog.apps\r\n"), "{out}");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let (r, out) = req("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(r.upgrade);
        assert!(out.contains("Upgrade: websocket\r\n") && out.ends_with("Connection: upgrade\r\n\r\n"), "{out}");
        let (r, out) =
            req("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").expect("valid").expect("complete");
        assert!(!r.upgrade);
        assert!(!out.contains("pgrade"), "{out}");
    }

    /// Cases the property tests (`props.rs`) found, shrunk.
    #[test]
    fn framing_cases_found_by_the_property_tests() {
        // An HTTP/1.1 head always has a Host, empty when an HTTP/1.0 client named none.
        let (r, out) = req("A * HTTP/1.0\r\n\r\n").expect("valid").expect("complete");
        assert_eq!(r.host, None);
        assert!(out.starts_with("A * HTTP/1.1\r\nHost: \r\n"), "{out}");
        // Any number of leading zeros, and every length that fits in 64 bits.
        for (length, want) in [
            ("18446744073709551615", Ok(Framing::Length(u64::MAX))),
            ("0000000000000000000000012", Ok(Framing::Length(12))),
            ("18446744073709551616", Err(RequestError::Malformed("invalid Content-Length"))),
        ] {
            let got = req(&format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n"))
                .map(|r| r.expect("complete").0.framing);
            assert_eq!(got, want, "{length}");
        }
        // An empty list element is no coding: `chunked,` ends in chunked, and reaches the
        // client so that no parser can read it otherwise.
        let (r, out) = resp("HTTP/1.1 200 OK\r\ntransfer-encoding:chunked,\r\n\r\n", GET11).expect("valid");
        assert_eq!((r.framing, r.raw_chunked), (Framing::Chunked, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Lengths the backend repeated reach the client as one field.
        let (r, out) =
            resp("HTTP/1.1 200 OK\r\ncontent-length:1\r\nX: y\r\ncontent-length: 1\r\n\r\n", GET11).expect("valid");
        assert_eq!(r.framing, Framing::Length(1));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: y\r\n\r\n");
        // No Transfer-Encoding to an HTTP/1.0 client (hyper refuses the response): the
        // body is read until the backend closes, and so is it by the client.
        let http10 = Answering { http10: true, ..GET11 };
        let (r, out) = resp("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", http10).expect("valid");
        assert_eq!((r.framing, r.client_keep_alive), (Framing::UntilClose, false));
        assert_eq!(out, "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n");
    }

    fn resp(raw: &str, answering: Answering) -> Result<(Response, String), ResponseError> {
        let mut out = Vec::new();
        let r = response(raw.as_bytes(), answering, &mut out)?.expect("complete");
        Ok((r, String::from_utf8(out).expect("utf-8")))
    }

    const GET11: Answering = Answering { head_method: false, http10: false, keep_alive: true, upgrade: false };

    #[test]
    fn response_framing_table() {
        use Framing::*;
        let head = Answering { head_method: true, ..GET11 };
        let http10 = Answering { http10: true, ..GET11 };
        // (raw, answering, framing, raw_chunked, backend keep-alive, client keep-alive)
        let cases: &[(&str, Answering, Framing, bool, bool, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", GET11, Length(5), false, true, true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", GET11, Empty, false, true, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GET11, Chunked, true, true, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", http10, Chunked, false, true, false),
            ("HTTP/1.1 200 OK\r\n\r\n", GET11, UntilClose, false, false, false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GET11, UntilClose, false, false, false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head, Empty, false, true, true),
            ("HTTP/1.1 204 No Content\r\n\r\n", GET11, Empty, false, true, true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", GET11, Empty, false, true, true),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", GET11, Length(1), false, false, true),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", GET11, Length(1), false, false, true),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                GET11,
                Length(1),
                false,
                true,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET11,
                Chunked,
                true,
                false,
                true,
            ),
        ];
        for &(raw, answering, framing, raw_chunked, backend, client) in cases {
            let (r, _) = resp(raw, answering).expect(raw);
            assert_eq!(
                (r.framing, r.raw_chunked, r.backend_keep_alive, r.client_keep_alive),
                (framing, raw_chunked, backend, client),
                "{raw:?}"
            );
        }
        assert_eq!(resp("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", GET11).err(), Some(ResponseError::Length));
        assert_eq!(resp("HTTP/1.1 2000 OK\r\n\r\n", GET11).err(), Some(ResponseError::Malformed));
    }

    #[test]
    fn response_heads_are_rewritten_for_the_client() {
        let (_, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nContent-Length: 2\r\nX-App: y\r\n\r\nhi",
            GET11,
        )
        .expect("valid");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: y\r\n\r\n");
        let http10 = Answering { http10: true, ..GET11 };
        let (_, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", http10).expect("valid");
        assert_eq!(out, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
        let (_, out) =
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", http10).expect("valid");
        assert_eq!(out, "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n");
        let (_, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GET11).expect("valid");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        // `Connection` may not take away the length the client reads the body by.
        let (r, out) =
            resp("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok", GET11).expect("ok");
        assert_eq!((r.framing, out.as_str()), (Framing::Length(2), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"));
        // A coding the proxy does not decode is named to the client, which reads until close.
        let (_, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GET11).expect("ok");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n");
        let upgrade = Answering { upgrade: true, ..GET11 };
        let (r, out) =
            resp("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", upgrade)
                .expect("ok");
        assert_eq!(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n");
        assert!(!r.client_keep_alive);
    }

    /// Runs `body` through a fresh decoder in pieces of `split` bytes: (data, bytes used).
    fn decode(body: &[u8], split: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut at = 0;
        for piece in body.chunks(split) {
            at += c.decode(piece, &mut data)?;
            if c.is_done() {
                return Ok((data, at));
            }
        }
        Err(ChunkError)
    }

    #[test]
    fn chunked_bodies_table() {
        let good: &[(&str, &str)] = &[
            ("0\r\n\r\n", ""),
            ("5\r\nhello\r\n0\r\n\r\n", "hello"),
            ("5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\n\r\n", "hello world"),
            ("A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", "0123456789"),
            ("1\r\na\r\n0\r\n\r\n", "a"),
        ];
        for (body, want) in good {
            for split in [1, 2, 3, 7, 1000] {
                let with_next = format!("{body}GET / HTTP/1.1");
                let (data, used) = decode(with_next.as_bytes(), split).expect(body);
                assert_eq!(String::from_utf8(data).expect("utf-8"), *want, "{body:?} split {split}");
                assert_eq!(used, body.len(), "{body:?} split {split}: the next message is not the body's");
                let mut c = Chunked::default();
                assert_eq!(c.measure(with_next.as_bytes()), Ok(body.len()), "{body:?}");
            }
        }
        // Re-encoded for the backend: the data alone, in chunks of our own making.
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let body = b"5;ext=\"x\"\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        let used = c.rechunk(&body[..14], &mut out).expect("first part");
        let used = used + c.rechunk(&body[used..], &mut out).expect("the rest");
        assert_eq!(used, body.len() - "GET /next".len());
        assert_eq!(String::from_utf8(out).expect("utf-8"), "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");

        let bad = [
            "x\r\n",
            "\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "5\r\nhelloX\r\n",
            "5\r\nhello\n0\r\n\r\n",
            "1000000000000000\r\n",
            "5;a\nb\r\n",
            "0\r\nX: 1\n\r\n",
            "0\r\n\n",
        ];
        for body in bad {
            assert_eq!(decode(body.as_bytes(), 1000).err(), Some(ChunkError), "{body:?}");
        }
    }
}

#[cfg(test)]
mod props;
