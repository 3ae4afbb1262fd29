//! Property tests of the HTTP/1 framing: heads generated from a grammar (odd case, OWS,
//! obs-fold, duplicates, lengths with signs, leading zeros, lists and huge numbers,
//! `Transfer-Encoding` lists) and from random bytes, checked against httparse and against
//! the rules of RFC 9112 §6 written out here on their own; what the proxy sends read by
//! hyper, as the backend and as the client; and chunked bodies fed in random pieces,
//! checked against a reference decoder.
//!
//! The number of cases is fixed (`PROPTEST_CASES` overrides it), so the run is bounded.

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::*;

const CASES: u32 = 2000;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    // A failure is kept as a plain regression test in `h1.rs`, not in a file beside this.
    Config { cases, failure_persistence: None, ..Config::default() }
}

// ---------------------------------------------------------------------------------------
// The model: RFC 9112 §6 and RFC 9110 §7.6.1, and this proxy's documented strictness.
// ---------------------------------------------------------------------------------------

/// The elements of comma-separated field values (RFC 9110 §5.6.1): empty ones ignored.
fn list<'a>(values: &[&'a [u8]]) -> Vec<&'a [u8]> {
    values.iter().flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii).filter(|e| !e.is_empty()).collect()
}

/// Whether the final transfer coding is `chunked` (RFC 9112 §6.3, rules 3 and 4).
/// `chunked` with parameters (which it defines none of) is not: hyper does not take it
/// for `chunked` either, and reading it as such would be a guess.
fn final_chunked(te: &[&[u8]]) -> bool {
    list(te).last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

/// `Content-Length` (RFC 9110 §8.6: `1*DIGIT`, any number of leading zeros; a list of
/// identical values may be read as one): `Err` for anything else, or a number that does
/// not fit in 64 bits. Empty list elements are refused too: a length is never guessed.
fn model_length(values: &[&[u8]]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))).ok_or(())?;
            if found.is_some_and(|m| m != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn values<'a>(headers: &[httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
}

/// What the proxy must make of a request head that httparse read: the status it refuses
/// it with, or how its body is delimited and what else the proxy acts on.
#[derive(Debug, PartialEq, Eq)]
struct ModelRequest {
    framing: Framing,
    http10: bool,
    keep_alive: bool,
    upgrade: bool,
    host: Option<Vec<u8>>,
    /// The target in origin form.
    target: String,
}

fn model_request(req: &httparse::Request<'_, '_>) -> Result<ModelRequest, u16> {
    let (method, target, version) = (req.method.ok_or(400u16)?, req.path.ok_or(400u16)?, req.version.ok_or(400u16)?);
    let headers = &*req.headers;
    if method == "CONNECT" {
        return Err(400);
    }
    let http10 = version == 0;
    // Absolute form (RFC 9112 §3.2.2): its authority, user info dropped, is the host.
    let lower = target.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .map(|r| &target[target.len() - r.len()..]);
    let (path, authority) = match rest {
        Some(rest) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..end];
            (&rest[end..], Some(authority.rsplit('@').next().unwrap_or(authority)))
        }
        None => (target, None),
    };
    let hosts = values(headers, "host");
    if hosts.len() > 1 {
        return Err(400);
    }
    let host = authority.map(|a| a.as_bytes().to_vec()).or_else(|| hosts.first().map(|h| h.to_vec()));
    if host.is_none() && !http10 {
        return Err(400);
    }
    let length = model_length(&values(headers, "content-length")).map_err(|()| 400u16)?;
    let te = values(headers, "transfer-encoding");
    let framing = if te.is_empty() {
        match length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    } else if http10 || length.is_some() {
        // RFC 9112 §6.1 and §6.3 rule 3: such a message may be an attempt at smuggling.
        return Err(400);
    } else if !final_chunked(&te) {
        // RFC 9112 §6.3 rule 4: the length of the body cannot be known.
        return Err(400);
    } else if te.len() == 1 && te[0].trim_ascii().eq_ignore_ascii_case(b"chunked") {
        Framing::Chunked
    } else {
        // Codings before `chunked` that the proxy does not decode (RFC 9112 §6.1), or
        // `chunked` twice: not understood.
        return Err(501);
    };
    let connection = list(&values(headers, "connection"));
    let token = |t: &str| connection.iter().any(|c| c.eq_ignore_ascii_case(t.as_bytes()));
    let keep_alive = !token("close") && (!http10 || token("keep-alive"));
    let upgrade = token("upgrade") && !values(headers, "upgrade").is_empty() && framing == Framing::Empty;
    let target = if path.starts_with('/') || path == "*" { path.to_owned() } else { format!("/{path}") };
    Ok(ModelRequest { framing, http10, keep_alive, upgrade, host, target })
}

/// RFC 9112 §6.3 for a response: how its body is delimited.
fn model_response_framing(status: u16, head_method: bool, headers: &[httparse::Header<'_>]) -> Result<Framing, ()> {
    if head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let te = values(headers, "transfer-encoding");
    if !te.is_empty() {
        return Ok(if final_chunked(&te) { Framing::Chunked } else { Framing::UntilClose });
    }
    Ok(match model_length(&values(headers, "content-length"))? {
        None => Framing::UntilClose,
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Hop-by-hop: never forwarded as they came (RFC 9110 §7.6.1).
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The proxy's own request headers, and their spellings with underscores (which CGI-style
/// servers read as the same).
const PROXY_SET: [&str; 6] =
    ["content-length", "host", "x-forwarded-proto", "x-forwarded-host", "expect", "x-forwarded-for"];

fn spelled_as(name: &str, of: &str) -> bool {
    name.len() == of.len()
        && name.bytes().zip(of.bytes()).all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

fn parse_request<'h, 'b>(
    raw: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Option<(httparse::Request<'h, 'b>, usize)> {
    let mut req = httparse::Request::new(headers);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) => Some((req, n)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------

/// Bytes shown as a byte string when a case fails.
#[derive(Clone)]
struct Raw(Vec<u8>);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// `s` in a random mix of cases.
fn any_case(s: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), s.len())
        .prop_map(move |upper| s.chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect())
}

fn length_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{1,3}",
        1 => "0{1,25}[0-9]{1,2}",
        1 => "[1-9][0-9]{17,21}",
        1 => Just("18446744073709551615".to_owned()),
        1 => Just("18446744073709551616".to_owned()),
        1 => "[+-][0-9]{1,2}",
        1 => "[0-9]{1,2} ?, ?[0-9]{1,2}",
        1 => "[0-9]{1,2}".prop_map(|n| format!("{n},{n}")),
        1 => "[0-9],,?[0-9]?",
        1 => "0x[0-9a-f]{1,2}|1e3|1\\.0|| |[0-9] [0-9]",
    ]
}

fn coding_list() -> impl Strategy<Value = String> {
    let coding = prop_oneof![
        4 => any_case("chunked"),
        1 => Just("gzip".to_owned()),
        1 => Just("identity".to_owned()),
        1 => Just("chunked;q=1".to_owned()),
        1 => Just(String::new()),
    ];
    (proptest::collection::vec(coding, 1..4), prop_oneof![Just(","), Just(", "), Just(" ,")], any::<bool>())
        .prop_map(|(codings, sep, trailing)| codings.join(sep) + if trailing { "," } else { "" })
}

fn connection_value() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        any_case("close"),
        any_case("keep-alive"),
        any_case("upgrade"),
        Just("X-Hop".to_owned()),
        Just("TE".to_owned()),
        Just("Content-Length".to_owned()),
        Just("Transfer-Encoding".to_owned()),
        Just("X-App".to_owned()),
    ];
    proptest::collection::vec(token, 1..3).prop_map(|t| t.join(", "))
}

/// One header field: a name (odd case, underscores) and a value that matters for it.
fn field(response: bool) -> impl Strategy<Value = (String, String)> {
    let host = if response { Just("X-App".to_owned()).boxed() } else { any_case("host").boxed() };
    prop_oneof![
        3 => (any_case("content-length"), length_value()),
        3 => (any_case("transfer-encoding"), coding_list()),
        2 => (any_case("connection"), connection_value()),
        2 => (host, prop_oneof![Just("blog.apps".to_owned()), Just("Blog.apps:8000".to_owned()), Just(String::new())]),
        1 => (any_case("upgrade"), Just("websocket".to_owned())),
        1 => (any_case("expect"), Just("100-continue".to_owned())),
        1 => (any_case("x-forwarded-for"), Just("1.2.3.4".to_owned())),
        1 => (any_case("x-forwarded-proto"), Just("https".to_owned())),
        1 => (prop_oneof![
            Just("Keep-Alive"), Just("TE"), Just("Trailer"), Just("Proxy-Connection"), Just("Proxy-Authorization"),
            Just("Proxy-Authenticate"), Just("X-Hop"), Just("X_Forwarded_For"), Just("Content_Length"),
            Just("Transfer_Encoding"), Just("X_App"),
        ].prop_map(str::to_owned), "[a-z0-9]{0,4}"),
        2 => ("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}", "[ -~]{0,10}"),
        1 => ("[ -~]{1,6}", "[\t -~]{0,6}"),
    ]
}

/// A head's field lines, with OWS, bare LFs, obs-fold and a space before the colon at times.
fn fields(response: bool) -> impl Strategy<Value = Vec<u8>> {
    let line = (
        field(response),
        prop_oneof![8 => Just(":"), 1 => Just(" :")],
        prop_oneof![Just(""), Just(" "), Just("\t"), Just("  ")],
        prop_oneof![Just(""), Just(" "), Just("\t")],
        prop_oneof![12 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r\n more\r\n")],
    )
        .prop_map(|((name, value), colon, before, after, end)| format!("{name}{colon}{before}{value}{after}{end}"));
    // At times one field twice (same name and value), as duplicates must be read as one
    // list or refused.
    (proptest::collection::vec(line, 0..10), any::<prop::sample::Index>(), any::<bool>()).prop_map(
        |(mut lines, which, again)| {
            if again && !lines.is_empty() {
                let line = lines[which.index(lines.len())].clone();
                lines.push(line);
            }
            lines.concat().into_bytes()
        },
    )
}

fn request_head() -> impl Strategy<Value = Raw> {
    let method = prop_oneof![
        4 => prop_oneof![Just("GET"), Just("POST"), Just("HEAD"), Just("PUT"), Just("DELETE"), Just("PATCH")]
            .prop_map(str::to_owned),
        1 => Just("CONNECT".to_owned()),
        1 => "[A-Za-z]{1,7}",
    ];
    let target = prop_oneof![
        4 => "/[a-z0-9/._~%?=&-]{0,12}",
        1 => "(http|HTTP|https)://(user@)?(blog\\.apps|Blog\\.apps:8000)(/[a-z]{0,3})?(\\?q)?",
        1 => Just("*".to_owned()),
        1 => "[!-~]{1,8}",
    ];
    let version =
        prop_oneof![6 => Just("HTTP/1.1"), 3 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0"), 1 => Just("http/1.1")];
    (method, target, version, fields(false), prop_oneof![6 => Just("\r\n"), 1 => Just("\n")]).prop_map(
        |(method, target, version, fields, end)| {
            let mut raw = format!("{method} {target} {version}\r\n").into_bytes();
            raw.extend_from_slice(&fields);
            raw.extend_from_slice(end.as_bytes());
            raw.extend_from_slice(b"BODY");
            Raw(raw)
        },
    )
}

fn response_head() -> impl Strategy<Value = Raw> {
    let status = prop_oneof![
        2 => prop_oneof![Just(100u16), Just(101), Just(103), Just(204), Just(304)],
        3 => Just(200u16),
        2 => 100u16..600,
    ];
    (prop_oneof![3 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")], status, fields(true)).prop_map(
        |(version, status, fields)| {
            let mut raw = format!("{version} {status} Reason\r\n").into_bytes();
            raw.extend_from_slice(&fields);
            raw.extend_from_slice(b"\r\nBODY");
            Raw(raw)
        },
    )
}

fn answering() -> impl Strategy<Value = Answering> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(head_method, http10, keep_alive, upgrade)| Answering { head_method, http10, keep_alive, upgrade })
}

// ---------------------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------------------

const FWD: Forwarded<'static> = Forwarded { client_ip: "10.0.0.9", trusted: false, https: false };

/// Checks one request head against the model, and the head rewritten for the backend.
fn check_request(raw: &[u8]) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    let ours = request(raw, &FWD, &mut out);
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut oracle = httparse::Request::new(&mut storage);
    let parsed = oracle.parse(raw);
    let (model, head_len) = match parsed {
        Ok(httparse::Status::Complete(n)) => (model_request(&oracle), n),
        Ok(httparse::Status::Partial) => {
            prop_assert_eq!(ours, Ok(None));
            return Ok(());
        }
        Err(_) => {
            prop_assert!(matches!(ours, Err(RequestError::Malformed(_))), "httparse refuses, we said {:?}", ours);
            return Ok(());
        }
    };
    let got = match (ours, model) {
        (Err(err), Err(status)) => {
            prop_assert_eq!(err.status().0, status, "refused for another reason: {}", err);
            return Ok(());
        }
        (Ok(Some(got)), Ok(model)) => (got, model),
        (ours, model) => return Err(TestCaseError::fail(format!("we said {ours:?}, the RFC {model:?}"))),
    };
    let (got, model) = got;
    prop_assert_eq!(got.head_len, head_len);
    prop_assert_eq!(
        (got.framing, got.http10, got.keep_alive, got.upgrade),
        (model.framing, model.http10, model.keep_alive, model.upgrade)
    );
    prop_assert_eq!(got.host.map(|r| raw[r].to_vec()), model.host.clone());
    prop_assert_eq!(got.head_method, oracle.method == Some("HEAD"));

    // The head the backend gets: one clean HTTP/1.1 head it reads the same body from.
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let (sent, sent_len) =
        parse_request(&out, &mut storage).ok_or_else(|| TestCaseError::fail("the rewritten head does not parse"))?;
    prop_assert_eq!(sent_len, out.len(), "one head, nothing after it");
    prop_assert_eq!((sent.method, sent.version), (oracle.method, Some(1)));
    prop_assert_eq!(sent.path, Some(model.target.as_str()));
    let backend_view = model_request(&sent).map_err(|s| TestCaseError::fail(format!("the backend refuses it: {s}")))?;
    prop_assert_eq!(backend_view.framing, model.framing, "the backend reads another body");
    prop_assert_eq!(backend_view.host, Some(model.host.clone().unwrap_or_default()));
    let count = |name: &str| sent.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    let framing_fields = (count("content-length"), count("transfer-encoding"));
    match model.framing {
        Framing::Length(_) | Framing::Chunked => {
            prop_assert_eq!(framing_fields.0 + framing_fields.1, 1, "exactly one framing field")
        }
        _ => prop_assert_eq!(framing_fields.1, 0),
    }
    prop_assert!(count("content-length") <= 1);
    prop_assert_eq!(count("x-forwarded-for"), 1);
    prop_assert_eq!(values(sent.headers, "x-forwarded-proto"), vec![&b"http"[..]]);
    let connection = values(sent.headers, "connection");
    prop_assert_eq!(connection, if model.upgrade { vec![&b"upgrade"[..]] } else { vec![] });

    // End to end: every other field, in order; no hop-by-hop one, none that Connection
    // names, none that spells the proxy's own with underscores.
    let named = list(&values(oracle.headers, "connection"));
    // The proxy's own fields, and every spelling with underscores of a field it drops.
    let ours_only = |name: &str| {
        PROXY_SET.iter().any(|p| spelled_as(name, p))
            || ["transfer-encoding", "connection"].iter().any(|p| name.eq_ignore_ascii_case(p))
            || (name.contains('_') && HOP.iter().any(|p| spelled_as(name, p)))
    };
    let upgrade_ok = |name: &str| model.upgrade && name.eq_ignore_ascii_case("upgrade");
    let expected: Vec<(String, &[u8])> = oracle
        .headers
        .iter()
        .filter(|h| {
            upgrade_ok(h.name)
                || !(HOP.iter().any(|p| h.name.eq_ignore_ascii_case(p))
                    || ours_only(h.name)
                    || named.iter().any(|n| n.eq_ignore_ascii_case(h.name.as_bytes())))
        })
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect();
    let forwarded: Vec<(String, &[u8])> =
        sent.headers.iter().filter(|h| !ours_only(h.name)).map(|h| (h.name.to_ascii_lowercase(), h.value)).collect();
    prop_assert_eq!(forwarded, expected);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------------------

fn check_response(raw: &[u8], answering: Answering) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    let ours = response(raw, answering, &mut out);
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut oracle = httparse::Response::new(&mut storage);
    let head_len = match oracle.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            prop_assert_eq!(ours, Ok(None));
            return Ok(());
        }
        Err(_) => {
            prop_assert_eq!(ours, Err(ResponseError::Malformed));
            return Ok(());
        }
    };
    let status = oracle.code.expect("a complete response has a status");
    let headers = &*oracle.headers;
    let lengths = values(headers, "content-length");
    let got = match ours {
        Ok(Some(got)) => got,
        // Strictness of ours: an invalid length is refused even where RFC 9112 would
        // ignore it (HEAD, 204, 304, beside Transfer-Encoding). Never a guessed length.
        Err(ResponseError::Length) => {
            prop_assert!(model_length(&lengths).is_err(), "a valid length refused");
            return Ok(());
        }
        other => return Err(TestCaseError::fail(format!("a parsed response refused: {other:?}"))),
    };
    let model = model_response_framing(status, answering.head_method, headers);
    prop_assert_eq!(Ok(got.framing), model, "not the framing RFC 9112 §6.3 prescribes");
    prop_assert_eq!((got.head_len, got.status), (head_len, status));
    let te = values(headers, "transfer-encoding");
    let close = list(&values(headers, "connection")).iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    if got.backend_keep_alive {
        prop_assert!(got.framing != Framing::UntilClose && !close);
        prop_assert!(te.is_empty() || lengths.is_empty(), "both framings: the connection is not to be trusted");
    }

    // What the client reads: the same body, by one framing field.
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut sent = httparse::Response::new(&mut storage);
    let sent_len = match sent.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => return Err(TestCaseError::fail(format!("the rewritten head does not parse: {other:?}"))),
    };
    prop_assert_eq!(sent_len, out.len());
    prop_assert_eq!((sent.code, sent.version), (Some(status), Some(u8::from(!answering.http10))));
    let client_view = model_response_framing(status, answering.head_method, sent.headers)
        .map_err(|()| TestCaseError::fail("the client cannot read the length"))?;
    let want = match got.framing {
        Framing::Chunked if !got.raw_chunked => Framing::UntilClose,
        framing => framing,
    };
    prop_assert_eq!(client_view, want, "the client reads another body");
    let sent_te = values(sent.headers, "transfer-encoding");
    let sent_cl = values(sent.headers, "content-length");
    if matches!(client_view, Framing::Length(_) | Framing::Chunked) {
        prop_assert_eq!(sent_te.len().min(1) + sent_cl.len(), 1, "exactly one framing field");
    }
    if client_view == Framing::UntilClose {
        prop_assert!(!got.client_keep_alive);
        prop_assert!(sent_cl.is_empty());
    }
    let sent_connection = list(&values(sent.headers, "connection"));
    if !got.client_keep_alive && !(100..200).contains(&status) {
        prop_assert!(
            sent_connection.iter().any(|t| t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"upgrade"))
        );
    }
    // No hop-by-hop field the backend sent reaches the client, except the coding it
    // reads the body by and the protocol it switches to.
    let named = list(&values(headers, "connection"));
    for h in sent.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "transfer-encoding" | "connection" | "content-length" => {}
            "upgrade" => prop_assert!(status == 101 && answering.upgrade),
            _ => {
                prop_assert!(!HOP.contains(&name.as_str()), "{} forwarded", name);
                prop_assert!(
                    !named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes())),
                    "{} named by Connection",
                    name
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Chunked bodies.
// ---------------------------------------------------------------------------------------

/// What a chunked body at the start of some bytes is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// It ends after `used` bytes, with this data.
    Done {
        data: Vec<u8>,
        used: usize,
    },
    /// Not ended yet.
    Incomplete,
    Invalid,
}

/// RFC 9112 §7.1, as strict as this proxy reads it: 1 to 15 hex digits, optional
/// whitespace, extensions of any visible bytes, CRLF everywhere (never a bare LF), trailer
/// lines of visible bytes.
fn reference_chunked(input: &[u8]) -> Body {
    let visible = |b: u8| b == b'\t' || !b.is_ascii_control();
    let mut at = 0;
    let mut data = Vec::new();
    let crlf = |at: usize| -> Result<usize, Body> {
        match input.get(at..at + 2) {
            Some(b"\r\n") => Ok(at + 2),
            Some(_) => Err(Body::Invalid),
            None if input.get(at).is_some_and(|&b| b != b'\r') => Err(Body::Invalid),
            None => Err(Body::Incomplete),
        }
    };
    macro_rules! next {
        ($at:expr) => {
            match input.get($at) {
                Some(&b) => b,
                None => return Body::Incomplete,
            }
        };
    }
    loop {
        let start = at;
        while next!(at).is_ascii_hexdigit() {
            at += 1;
            if at - start > 15 {
                return Body::Invalid;
            }
        }
        let digits = &input[start..at];
        if digits.is_empty() {
            return Body::Invalid;
        }
        let size = digits.iter().fold(0u64, |n, &d| n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0)));
        while matches!(next!(at), b' ' | b'\t') {
            at += 1;
        }
        if next!(at) == b';' {
            while next!(at) != b'\r' {
                if !visible(input[at]) {
                    return Body::Invalid;
                }
                at += 1;
            }
        }
        at = match crlf(at) {
            Ok(at) => at,
            Err(body) => return body,
        };
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if input.len() - at < size {
            return Body::Incomplete;
        }
        data.extend_from_slice(&input[at..at + size]);
        at = match crlf(at + size) {
            Ok(at) => at,
            Err(body) => return body,
        };
    }
    // Trailer lines, then the blank line.
    loop {
        let start = at;
        while next!(at) != b'\r' {
            if !visible(input[at]) {
                return Body::Invalid;
            }
            at += 1;
        }
        at = match crlf(at) {
            Ok(at) => at,
            Err(body) => return body,
        };
        if at - start == 2 {
            return Body::Done { data, used: at };
        }
    }
}

/// Whether a chunked body has size lines of hex digits alone and no trailers.
fn canonical(body: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let digits = body[at..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let Some(size) =
            std::str::from_utf8(&body[at..at + digits]).ok().and_then(|d| usize::from_str_radix(d, 16).ok())
        else {
            return false;
        };
        at += digits;
        if body.get(at..at + 2) != Some(b"\r\n") {
            return false;
        }
        at += 2;
        if size == 0 {
            return body.get(at..) == Some(b"\r\n");
        }
        at += size + 2;
        if at > body.len() {
            return false;
        }
    }
}

/// Our decoder, fed `input` in pieces of the given sizes (then the rest at once).
fn ours_in_pieces(input: &[u8], pieces: &[usize]) -> Body {
    let mut c = Chunked::default();
    let mut data = Vec::new();
    let mut at = 0;
    let mut sizes = pieces.iter().copied().chain(std::iter::repeat(usize::MAX));
    while at < input.len() {
        let end = at.saturating_add(sizes.next().unwrap_or(usize::MAX).max(1)).min(input.len());
        match c.decode(&input[at..end], &mut data) {
            Err(ChunkError) => return Body::Invalid,
            Ok(used) => at += used,
        }
        if c.is_done() {
            return Body::Done { data, used: at };
        }
    }
    Body::Incomplete
}

/// A well-formed chunked body (hex in either case, leading zeros, extensions, trailers),
/// its data, and bytes of the next message after it.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let ext = prop_oneof![
        3 => Just(""),
        1 => Just(";a"),
        1 => Just(";a=b"),
        1 => Just("; a=\"x y\""),
        1 => Just(" ;a=1"),
        1 => Just("\t"),
        1 => Just(";\u{e9}"),
    ];
    let chunk = (proptest::collection::vec(any::<u8>(), 1..40), 0usize..3, any::<bool>(), ext.clone());
    let trailer = prop_oneof![Just("X-T: 1"), Just("Y:"), Just("z: a b\tc")];
    (proptest::collection::vec(chunk, 0..6), ext, 0usize..3, proptest::collection::vec(trailer, 0..3)).prop_map(
        |(chunks, last_ext, last_zeros, trailers)| {
            let mut body = Vec::new();
            let mut data = Vec::new();
            for (bytes, zeros, upper, ext) in chunks {
                let size = if upper { format!("{:X}", bytes.len()) } else { format!("{:x}", bytes.len()) };
                body.extend_from_slice(format!("{}{size}{ext}\r\n", "0".repeat(zeros)).as_bytes());
                body.extend_from_slice(&bytes);
                body.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            body.extend_from_slice(format!("{}0{last_ext}\r\n", "0".repeat(last_zeros)).as_bytes());
            for t in trailers {
                body.extend_from_slice(format!("{t}\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            (body, data)
        },
    )
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..9, 0..40)
}

// ---------------------------------------------------------------------------------------
// hyper, as the backend: another parser reads what the proxy forwards.
// ---------------------------------------------------------------------------------------

/// Each request hyper's HTTP/1 server reads from `wire`: method, target and body. Stops at
/// the first it cannot read.
fn hyper_reads(wire: Vec<u8>) -> Vec<(String, String, Vec<u8>)> {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let log = Arc::clone(&seen);
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let log = Arc::clone(&log);
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await?.to_bytes().to_vec();
                log.lock().expect("not poisoned").push((parts.method.to_string(), parts.uri.to_string(), body));
                Ok::<_, hyper::Error>(hyper::Response::new(Empty::<bytes::Bytes>::new()))
            }
        });
        // Half-close: the pipe is shut for writing once all is sent, and hyper is to read
        // every request in it all the same.
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let send = async move {
            client.write_all(&wire).await.expect("the pipe is open");
            client.shutdown().await.expect("the pipe is open");
            // Drain the answers, so hyper never waits on a full pipe.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(conn, send) }).await;
    });
    Arc::try_unwrap(seen).map(|m| m.into_inner().expect("not poisoned")).unwrap_or_default()
}

/// The bytes hyper's URI parser refuses in a target (RFC 3986 has no place for them);
/// httparse lets them through.
fn hyper_refuses_target(target: &str) -> bool {
    target.bytes().any(|b| b"\"<>\\^`{|}".contains(&b))
}

/// (b) with another parser: what the proxy forwards (head rewritten, body copied or
/// chunked anew) is read by hyper as the same request, with the same body, and the next
/// request after it as the next one.
fn check_request_with_hyper(raw: &[u8], chunked_body: &[u8], data: &[u8]) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    let Ok(Some(req)) = request(raw, &FWD, &mut out) else { return Ok(()) };
    if req.upgrade {
        // The connection is a tunnel after it: nothing more to read as HTTP.
        return Ok(());
    }
    let body = match req.framing {
        Framing::Empty | Framing::UntilClose => Vec::new(),
        Framing::Length(n) if n <= 4096 => vec![b'x'; usize::try_from(n).unwrap_or(0)],
        Framing::Length(_) => return Ok(()),
        Framing::Chunked => {
            let mut c = Chunked::default();
            let used = c.rechunk(chunked_body, &mut out).map_err(|_| TestCaseError::fail("a valid body"))?;
            prop_assert_eq!(used, chunked_body.len());
            data.to_vec()
        }
    };
    if req.framing != Framing::Chunked {
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    let seen = hyper_reads(out.clone());
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let (sent, _) = parse_request(&out, &mut storage).ok_or_else(|| TestCaseError::fail("the head parses"))?;
    let (method, target) = (sent.method.unwrap_or_default(), sent.path.unwrap_or_default());
    if seen.is_empty() && hyper_refuses_target(target) {
        return Ok(());
    }
    prop_assert_eq!(seen.len(), 2, "hyper read another number of requests from {:?}", Raw(out.clone()));
    // hyper drops a fragment (which has no place in a request target, RFC 9112 §3.2).
    let target = target.split('#').next().unwrap_or_default();
    prop_assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), (method, target));
    prop_assert_eq!(&seen[0].2, &body, "hyper read another body");
    prop_assert_eq!(seen[1].1.as_str(), "/next");
    Ok(())
}

/// The responses hyper's HTTP/1 client reads (status and body) for requests (`HEAD` or
/// `GET`) on one connection, each answered by one of `answers` once its head is in, the
/// connection shut after the last.
fn hyper_client_reads(answers: Vec<Vec<u8>>, head: bool) -> Result<Vec<(u16, Vec<u8>)>, String> {
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let requests = answers.len();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let serve = async {
            let mut heads = Vec::new();
            for (i, answer) in answers.iter().enumerate() {
                // An answer before its request is one the client may refuse.
                while heads.windows(4).filter(|w| w == b"\r\n\r\n").count() <= i {
                    let mut buf = [0u8; 1024];
                    match server.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => heads.extend_from_slice(&buf[..n]),
                    }
                }
                server.write_all(answer).await.expect("the pipe is open");
            }
            server.shutdown().await.expect("the pipe is open");
        };
        let ask = async {
            let mut got = Vec::new();
            for _ in 0..requests {
                let method = if head { "HEAD" } else { "GET" };
                let req = hyper::Request::builder()
                    .method(method)
                    .uri("/")
                    .header("host", "a")
                    .body(Empty::<bytes::Bytes>::new())
                    .expect("a valid request");
                sender.ready().await.map_err(|e| e.to_string())?;
                let response = sender.send_request(req).await.map_err(|e| format!("response {}: {e}", got.len()))?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
                got.push((status, body.to_vec()));
            }
            Ok::<_, String>(got)
        };
        let timed = tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(serve, ask).1 });
        let got = timed.await.map_err(|_| "hyper waited for more".to_owned())?;
        conn.abort();
        got
    })
}

/// (d) with another parser: hyper, as the client, reads the rewritten response with the
/// body the proxy sends after it as one response with that body, and the next response
/// after it as the next one.
fn check_response_with_hyper(
    raw: &[u8],
    answering: Answering,
    chunked_body: &[u8],
    data: &[u8],
) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    let Ok(Some(resp)) = response(raw, answering, &mut out) else { return Ok(()) };
    // Interim responses are skipped by a client, and a switch ends HTTP.
    if (100..200).contains(&resp.status) {
        return Ok(());
    }
    let (body, want) = match resp.framing {
        Framing::Empty => (Vec::new(), Vec::new()),
        Framing::Length(n) if n <= 4096 => {
            let body = vec![b'y'; usize::try_from(n).unwrap_or(0)];
            (body.clone(), body)
        }
        Framing::Length(_) => return Ok(()),
        Framing::Chunked if resp.raw_chunked => (chunked_body.to_vec(), data.to_vec()),
        // Decoded for an HTTP/1.0 client, or read until the backend closes: the data,
        // then the proxy closes.
        Framing::Chunked | Framing::UntilClose => (data.to_vec(), data.to_vec()),
    };
    let want = if answering.head_method { Vec::new() } else { want };
    out.extend_from_slice(&body);
    let again = resp.client_keep_alive;
    let mut answers = vec![out.clone()];
    if again {
        answers.push(b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\nnext".to_vec());
    }
    let got = hyper_client_reads(answers, answering.head_method)
        .map_err(|e| TestCaseError::fail(format!("hyper: {e} in {:?}", Raw(out.clone()))))?;
    prop_assert_eq!(got[0].0, resp.status);
    prop_assert_eq!(&got[0].1, &want, "hyper read another body from {:?}", Raw(out.clone()));
    if again {
        let next: &[u8] = if answering.head_method { b"" } else { b"next" };
        prop_assert_eq!((got[1].0, got[1].1.as_slice()), (202, next), "the next response, in {:?}", Raw(out));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// (a) and (b): for a generated request head, our decision and what we parse agree
    /// with httparse and RFC 9112; what the backend gets is one clean head with the same
    /// end-to-end fields and the same body boundary.
    #[test]
    fn request_heads_follow_the_rfc(raw in request_head()) {
        check_request(&raw.0)?;
    }

    /// (d): a response's framing is the one RFC 9112 §6.3 prescribes, and the client reads
    /// the same body from the rewritten head.
    #[test]
    fn response_heads_follow_the_rfc(raw in response_head(), answering in answering()) {
        check_response(&raw.0, answering)?;
    }

    /// (c): a chunked body in any pieces decodes as in one piece and as the reference
    /// does; the body the backend gets decodes to the same data, and nothing after the
    /// body is taken for it.
    #[test]
    fn chunked_bodies_in_pieces((body, data) in chunked_body(), split in pieces(), split2 in pieces()) {
        let mut input = body.clone();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let whole = Body::Done { data: data.clone(), used: body.len() };
        prop_assert_eq!(reference_chunked(&input), whole.clone());
        prop_assert_eq!(ours_in_pieces(&input, &[]), whole.clone());
        prop_assert_eq!(ours_in_pieces(&input, &split), whole);
        let mut c = Chunked::default();
        prop_assert_eq!(c.measure(&input), Ok(body.len()));

        // Chunked anew, in pieces: what the backend reads is the data and nothing more.
        let mut c = Chunked::default();
        let (mut out, mut at) = (Vec::new(), 0usize);
        for n in split2.iter().copied().chain(std::iter::repeat(usize::MAX)) {
            at += c.rechunk(&input[at..(at.saturating_add(n)).min(input.len())], &mut out).expect("a valid body");
            if c.is_done() {
                break;
            }
        }
        prop_assert_eq!(at, body.len());
        prop_assert_eq!(reference_chunked(&out), Body::Done { data, used: out.len() });
        prop_assert!(canonical(&out), "extensions or trailers reach the backend: {:?}", Raw(out));
    }

    /// (c): damaged chunked bodies are refused (or read) exactly as the reference reads
    /// them, in any pieces: never a boundary of our own.
    #[test]
    fn damaged_chunked_bodies((body, _) in chunked_body(), at in any::<prop::sample::Index>(),
                              byte in prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), Just(b';'), Just(b'g'),
                                                  Just(b'0'), Just(b'F'), Just(0u8), any::<u8>()],
                              insert in any::<bool>(), split in pieces()) {
        let mut input = body;
        let i = at.index(input.len());
        if insert { input.insert(i, byte) } else { input[i] = byte }
        let reference = reference_chunked(&input);
        prop_assert_eq!(ours_in_pieces(&input, &[]), reference.clone());
        prop_assert_eq!(ours_in_pieces(&input, &split), reference);
    }

    /// Size lines of all kinds: too many digits, signs, spaces, bare LFs.
    #[test]
    fn chunk_size_lines(line in "[0-9a-fA-F+ \t;xg-]{0,20}(\r\n|\n|\r)", split in pieces()) {
        let mut input = line.into_bytes();
        input.extend_from_slice(b"abc\r\n0\r\n\r\n");
        let reference = reference_chunked(&input);
        prop_assert_eq!(ours_in_pieces(&input, &[]), reference.clone());
        prop_assert_eq!(ours_in_pieces(&input, &split), reference);
    }

    /// Random bytes: no panic anywhere, and the same answer in pieces as in one.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), split in pieces(),
                                answering in answering()) {
        let mut out = Vec::new();
        let _ = request(&bytes, &FWD, &mut out);
        let _ = response(&bytes, answering, &mut out);
        prop_assert_eq!(ours_in_pieces(&bytes, &split), ours_in_pieces(&bytes, &[]));
        prop_assert_eq!(ours_in_pieces(&bytes, &[]), reference_chunked(&bytes));
    }

    /// (b) against hyper: the backend reads the same request and body, and nothing after
    /// it is taken for part of it.
    #[test]
    fn hyper_reads_what_the_backend_gets(raw in request_head(), (body, data) in chunked_body()) {
        check_request_with_hyper(&raw.0, &body, &data)?;
    }

    /// (d) against hyper: the client reads the same response and body, and the next
    /// response after it as the next one.
    #[test]
    fn hyper_reads_what_the_client_gets(raw in response_head(), answering in answering(),
                                        (body, data) in chunked_body()) {
        check_response_with_hyper(&raw.0, answering, &body, &data)?;
    }

    /// Random bytes after a valid request line: the same checks as generated heads.
    #[test]
    fn random_fields_follow_the_rfc(tail in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
        raw.extend_from_slice(&tail);
        raw.extend_from_slice(b"\r\n\r\n");
        check_request(&raw)?;
    }
}
