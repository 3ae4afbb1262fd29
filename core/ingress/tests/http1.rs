//! The ingress's HTTP/1 on the wire: message framing both ways (lengths, chunked bodies,
//! bodies delimited by a close), HTTP/1.0 clients, pipelining, `Expect: 100-continue`,
//! refused requests, backends that close their idle connections, and backends too slow
//! to answer.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use paastech_ingress::IngressConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that echoes the request body, with its length.
async fn echo_backend() -> TestBackend {
    backend(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.expect("request body").to_bytes();
        Response::new(full(body))
    })
    .await
}

/// A backend on raw TCP: for each request on a connection (head, then a
/// `Content-Length` body), writes `reply(head, n)` (`n`: requests before it on this
/// connection), then closes the connection if told to; `None` closes it without an
/// answer. Counts the requests it answered.
async fn raw_backend<F>(reply: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&str, usize) -> Option<(Vec<u8>, bool)> + Send + Sync + 'static,
{
    raw_backend_slowed(|_| Duration::ZERO, reply).await
}

/// [`raw_backend`], waiting `delay(head)` before each answer.
async fn raw_backend_slowed<D, F>(delay: D, reply: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    D: Fn(&str) -> Duration + Send + Sync + 'static,
    F: Fn(&str, usize) -> Option<(Vec<u8>, bool)> + Send + Sync + 'static,
{
    let listener = listen_loopback().await;
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let behaviour = Arc::new((delay, reply));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let (behaviour, count) = (behaviour.clone(), count.clone());
            tokio::spawn(async move {
                let (delay, reply) = &*behaviour;
                let mut buf = Vec::new();
                for n in 0.. {
                    let Some(head) = read_request(&mut stream, &mut buf).await else { return };
                    tokio::time::sleep(delay(&head)).await;
                    let Some((answer, close)) = reply(&head, n) else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    if stream.write_all(&answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

/// Reads one request (head, then a `Content-Length` body) off `buf` and `stream`; its
/// head. `None` once the connection ends.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = read_until_blank_line(stream, buf).await?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length = content_length(&head);
    while buf.len() < end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..end + length);
    Some(head)
}

/// The `Content-Length` of a head, 0 without one.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .map_or(0, |v| v.parse().expect("length"))
}

/// Reads into `buf` until it holds a blank line; the offset just past it.
async fn read_until_blank_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads one response with a `Content-Length` body from `stream`: (head, body).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let end = tokio::time::timeout(Duration::from_secs(10), read_until_blank_line(stream, buf))
        .await
        .expect("a response head within 10s")
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length = content_length(&head);
    while buf.len() < end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[end..end + length]).into_owned();
    buf.drain(..end + length);
    (head, body)
}

async fn connect(ingress: SocketAddr) -> TcpStream {
    TcpStream::connect(ingress).await.expect("connect to the ingress")
}

/// A client connection to a fresh ingress serving `echo.apps.test` from [`echo_backend`].
async fn client_of_echo() -> TcpStream {
    let (ingress, table) = start_ingress().await;
    let echo = echo_backend().await;
    table.set_backends("echo", vec![echo.addr]);
    connect(ingress).await
}

#[tokio::test]
async fn chunked_request_bodies_reach_the_backend_whole() {
    let mut client = client_of_echo().await;
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: echo.apps.test\r\nTransfer-Encoding: chunked\r\n\r\n5;name=x\r\nhello\r\n",
        )
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(b"6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut client, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hello world");
    // The connection carries the next request.
    client.write_all(b"POST / HTTP/1.1\r\nHost: echo.apps.test\r\nContent-Length: 2\r\n\r\nok").await.expect("write");
    let (_, body) = read_response(&mut client, &mut buf).await;
    assert_eq!(body, "ok");
}

/// A backend whose body has no length: hyper sends it chunked to an HTTP/1.1 client.
async fn chunked_backend() -> TestBackend {
    backend(|_req| async move {
        let chunks = ["one,", "two,", "three"].map(|c| Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from(c))));
        let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        Response::new(body.boxed())
    })
    .await
}

#[tokio::test]
async fn chunked_responses_pass_as_is_or_decoded_for_http10() {
    let (ingress, table) = start_ingress().await;
    let app = chunked_backend().await;
    table.set_backends("stream", vec![app.addr]);

    let raw = raw_request(ingress, "GET / HTTP/1.1\r\nHost: stream.apps.test\r\nConnection: close\r\n\r\n").await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    assert!(body.ends_with("0\r\n\r\n") && body.contains("three"), "{body:?}");

    // An HTTP/1.0 client knows no chunks: it gets the data, ended by the close.
    let raw = raw_request(ingress, "GET / HTTP/1.0\r\nHost: stream.apps.test\r\n\r\n").await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    assert_eq!(body, "one,two,three");
}

#[tokio::test]
async fn http10_keep_alive_and_head_requests() {
    let (ingress, table) = start_ingress().await;
    let app = text_backend("hello").await;
    table.set_backends("old", vec![app.addr]);

    let mut client = connect(ingress).await;
    let mut buf = Vec::new();
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.0\r\nHost: old.apps.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let (head, body) = read_response(&mut client, &mut buf).await;
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("connection: keep-alive"), "{head}");
        assert_eq!(body, "hello");
    }
    // HEAD: the length of what GET would send, and no body, so the next answer is not
    // mistaken for one.
    client.write_all(b"HEAD / HTTP/1.0\r\nHost: old.apps.test\r\nConnection: keep-alive\r\n\r\n").await.expect("write");
    let end = read_until_blank_line(&mut client, &mut buf).await.expect("HEAD answer");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(head.to_ascii_lowercase().contains("content-length: 5"), "{head}");
    buf.drain(..end);
    client.write_all(b"GET / HTTP/1.0\r\nHost: old.apps.test\r\n\r\n").await.expect("write");
    let (_, body) = read_response(&mut client, &mut buf).await;
    assert_eq!(body, "hello");
    // Without keep-alive, an HTTP/1.0 exchange ends the connection.
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut [0u8; 1])).await.expect("closed");
    assert_eq!(n.expect("read"), 0);
    assert_eq!(app.connections(), 1, "all of it on one backend connection");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mut client = client_of_echo().await;
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: echo.apps.test\r\nContent-Length: 5\r\n\r\nfirstPOST / HTTP/1.1\r\n\
              Host: echo.apps.test\r\nContent-Length: 6\r\n\r\nsecondGET / HTTP/1.1\r\nHost: echo.apps.test\r\n\r\n",
        )
        .await
        .expect("write");
    let mut buf = Vec::new();
    for want in ["first", "second", ""] {
        let (_, body) = read_response(&mut client, &mut buf).await;
        assert_eq!(body, want);
    }
}

#[tokio::test]
async fn bodies_delimited_by_close_reach_the_client() {
    let (ingress, table) = start_ingress().await;
    let (app, _) = raw_backend(|_, _| Some((b"HTTP/1.1 200 OK\r\nX-App: 1\r\n\r\nuntil the end".to_vec(), true))).await;
    table.set_backends("legacy", vec![app]);
    for _ in 0..2 {
        let raw = raw_request(ingress, "GET / HTTP/1.1\r\nHost: legacy.apps.test\r\n\r\n").await;
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("X-App: 1"), "{head}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert_eq!(body, "until the end");
    }
}

#[tokio::test]
async fn expect_continue_is_answered_before_the_body() {
    let mut client = client_of_echo().await;
    client
        .write_all(b"PUT / HTTP/1.1\r\nHost: echo.apps.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), read_until_blank_line(&mut client, &mut buf))
        .await
        .expect("100 Continue before the body")
        .expect("an interim response");
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", String::from_utf8_lossy(&buf));
    buf.drain(..end);
    client.write_all(b"data").await.expect("write body");
    let (head, body) = read_response(&mut client, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "data");
}

#[tokio::test]
async fn malformed_requests_are_refused_before_any_backend() {
    let (ingress, table) = start_ingress().await;
    let (app, requests) =
        raw_backend(|_, _| Some((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false))).await;
    table.set_backends("app", vec![app]);

    let big = format!("GET / HTTP/1.1\r\nHost: app.apps.test\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000));
    let cases = [
        ("GET / HTTP/1.1\r\nHost: app.apps.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: app.apps.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "400"),
        ("POST / HTTP/1.1\r\nHost: app.apps.test\r\nContent-Length: +3\r\n\r\nabc", "400"),
        // RFC 9112 §6.3: a request whose final coding is not chunked has no known end.
        ("POST / HTTP/1.1\r\nHost: app.apps.test\r\nTransfer-Encoding: gzip\r\n\r\n", "400"),
        // A coding before chunked the proxy does not decode.
        ("POST / HTTP/1.1\r\nHost: app.apps.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"),
        ("GET / HTTP/1.1\r\nHost: app.apps.test\r\nHost: other.apps.test\r\n\r\n", "400"),
        ("GET /\x01 HTTP/1.1\r\nHost: app.apps.test\r\n\r\n", "400"),
        ("HELLO\r\n\r\n", "400"),
        (big.as_str(), "431"),
    ];
    for (request, status) in cases {
        let raw = raw_request(ingress, request).await;
        assert!(raw.starts_with(&format!("HTTP/1.1 {status} ")), "{request:.80?} got {raw:.200}");
    }
    // The answer names the problem.
    let raw = raw_request(ingress, cases[0].0).await;
    assert!(raw.ends_with("both Content-Length and Transfer-Encoding\n"), "{raw}");
    // A chunk size that is not hex: the request had started, so the exchange is cut off.
    let raw = raw_request(
        ingress,
        "POST / HTTP/1.1\r\nHost: app.apps.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(!raw.contains("200 OK"), "{raw}");
    assert_eq!(requests.load(Ordering::SeqCst), 0, "no malformed request reached the backend");
}

#[tokio::test]
async fn backend_closing_idle_connections_costs_no_request() {
    let (ingress, table) = start_ingress().await;
    // Answers one request per connection, then closes it: as a backend does when its
    // keep-alive timeout ends between two requests.
    let ok = || Some((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false));
    let (app, requests) = raw_backend(move |_, n| if n == 0 { ok().map(|(a, _)| (a, true)) } else { None }).await;
    table.set_backends("flaky", vec![app]);
    for i in 0..3 {
        let answer = get(ingress, "flaky.apps.test", "/").await;
        assert_eq!(answer.body, "ok", "request {i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keeps the connection, but drops it without an answer when the next request comes:
    // as when the timeout ends just as the ingress reuses the connection. A request
    // without a body goes again on a new connection.
    let (app, requests_2) = raw_backend(move |_, n| if n == 0 { ok() } else { None }).await;
    table.set_backends("racy", vec![app]);
    for i in 0..3 {
        let answer = get(ingress, "racy.apps.test", "/").await;
        assert_eq!(answer.status, http::StatusCode::OK, "request {i}: {}", answer.body);
        assert_eq!(answer.body, "ok", "request {i}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(requests_2.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn invalid_backend_responses_are_502() {
    let (ingress, table) = start_ingress().await;
    let (app, _) = raw_backend(|_, _| {
        Some((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec(), true))
    })
    .await;
    table.set_backends("bad", vec![app]);
    let answer = get(ingress, "bad.apps.test", "/").await;
    assert_eq!(answer.status, http::StatusCode::BAD_GATEWAY);
    assert!(answer.body.contains("502"), "{}", answer.body);
}

#[tokio::test]
async fn a_body_the_backend_did_not_read_never_becomes_a_request() {
    let (ingress, table) = start_ingress().await;
    // Answers at once and closes without reading the body, as servers do with bodies
    // they do not want; records every request line it sees.
    let listener = listen_loopback().await;
    let app = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Some(end) = read_until_blank_line(&mut stream, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    record.lock().expect("lock").push(head.lines().next().unwrap_or_default().to_owned());
                    let _ =
                        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
                }
            });
        }
    });
    table.set_backends("app", vec![app]);

    let mut client = connect(ingress).await;
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app.apps.test\r\nContent-Length: 200\r\n\r\nfirst bytes")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let (_, body) = read_response(&mut client, &mut buf).await;
    assert_eq!(body, "ok");
    // The rest of the declared body holds what looks like a request: it is body, and
    // must never reach a backend as one.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app.apps.test\r\n\r\n";
    let _ = client.write_all(&[b'x'; 60]).await;
    let _ = client.write_all(smuggled).await;
    let _ = client.write_all(&[b'y'; 200]).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await.expect("closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*seen.lock().expect("lock"), vec!["POST /upload HTTP/1.1".to_owned()]);
}

#[tokio::test]
async fn a_client_that_fails_mid_body_releases_the_backend() {
    let (ingress, table) = start_ingress().await;
    let echo = echo_backend().await;
    table.set_backends("echo", vec![echo.addr]);
    let in_flight = || table.backends("echo").expect("known")[0].in_flight();

    // A malformed chunk size in the middle of the body.
    let raw = raw_request(
        ingress,
        "POST / HTTP/1.1\r\nHost: echo.apps.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
    )
    .await;
    assert!(!raw.contains("200"), "{raw}");
    // A client that goes away before the end of its body.
    let mut client = connect(ingress).await;
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: echo.apps.test\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    for _ in 0..100 {
        if in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight(), 0, "the exchanges ended");
}

#[tokio::test]
async fn a_request_that_may_not_run_twice_is_not_sent_twice() {
    let (ingress, table) = start_ingress().await;
    // Keeps its first connection, then drops it without an answer on the next request.
    let ok = || Some((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false));
    let (app, answered) = raw_backend(move |_, n| if n == 0 { ok() } else { None }).await;
    table.set_backends("pay", vec![app]);
    assert_eq!(get(ingress, "pay.apps.test", "/").await.body, "ok");
    let mut client = connect(ingress).await;
    client.write_all(b"POST /charge HTTP/1.1\r\nHost: pay.apps.test\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let (head, _) = read_response(&mut client, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(answered.load(Ordering::SeqCst), 1, "the POST was not replayed on a new connection");
}

/// The backend time limit of [`start_impatient_ingress`].
const BACKEND_TIMEOUT: Duration = Duration::from_millis(400);

/// An ingress whose backends get [`BACKEND_TIMEOUT`] to answer.
async fn start_impatient_ingress() -> (SocketAddr, paastech_ingress::RouteTable) {
    let mut config = IngressConfig::new(DOMAIN);
    config.backend_timeout = BACKEND_TIMEOUT;
    start_ingress_with(config).await
}

/// A backend on raw TCP that answers each request with `answer` after `delay(head)`.
async fn slow_backend<F>(delay: F, answer: &'static [u8]) -> SocketAddr
where
    F: Fn(&str) -> Duration + Send + Sync + 'static,
{
    raw_backend_slowed(delay, move |_, _| Some((answer.to_vec(), false))).await.0
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const NEVER: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn an_app_that_does_not_answer_in_time_gets_a_504() {
    let (ingress, table) = start_impatient_ingress().await;
    let app = slow_backend(|_| NEVER, OK).await;
    table.set_backends("stuck", vec![app]);
    let started = Instant::now();
    let answer = get(ingress, "stuck.apps.test", "/").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, http::StatusCode::GATEWAY_TIMEOUT, "{}", answer.body);
    assert!(answer.body.contains("took too long"), "{}", answer.body);
    assert!(waited >= BACKEND_TIMEOUT * 15 / 16, "gave up after {waited:?}");
    assert!(waited < BACKEND_TIMEOUT * 10, "gave up only after {waited:?}");
    assert_eq!(table.backends("stuck").expect("known")[0].in_flight(), 0, "nothing stays in flight");
}

#[tokio::test]
async fn every_request_gets_the_whole_time_to_be_answered() {
    // Each answer takes well over half the limit: together they take much longer than
    // it, on one connection.
    let (ingress, table) = start_impatient_ingress().await;
    let app = slow_backend(|_| BACKEND_TIMEOUT * 5 / 8, OK).await;
    table.set_backends("slow", vec![app]);
    let mut client = connect(ingress).await;
    let mut buf = Vec::new();
    for i in 0..4 {
        client.write_all(b"GET / HTTP/1.1\r\nHost: slow.apps.test\r\n\r\n").await.expect("write");
        let (head, body) = read_response(&mut client, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert_eq!(body, "ok");
    }
}

#[tokio::test]
async fn an_answer_that_stops_in_the_middle_ends_the_connection() {
    let (ingress, table) = start_impatient_ingress().await;
    // Promises 10 bytes, sends 5, then nothing.
    let app = slow_backend(|_| Duration::ZERO, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").await;
    table.set_backends("halting", vec![app]);
    let mut client = connect(ingress).await;
    client.write_all(b"GET / HTTP/1.1\r\nHost: halting.apps.test\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the connection was not closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("\r\n\r\nhello"), "{got}");
    assert_eq!(table.backends("halting").expect("known")[0].in_flight(), 0, "nothing stays in flight");
}

#[tokio::test]
async fn the_time_to_answer_counts_from_the_end_of_the_request_body() {
    let (ingress, table) = start_impatient_ingress().await;
    let app = slow_backend(|head| if head.starts_with("POST /hang") { NEVER } else { Duration::ZERO }, OK).await;
    table.set_backends("upload", vec![app]);
    for (path, answer) in [("/save", "HTTP/1.1 200"), ("/hang", "HTTP/1.1 504")] {
        let mut client = connect(ingress).await;
        let head = format!("POST {path} HTTP/1.1\r\nHost: upload.apps.test\r\nContent-Length: 10\r\n\r\nhello");
        client.write_all(head.as_bytes()).await.expect("write");
        // The client takes longer than the backend's limit to send its body.
        tokio::time::sleep(BACKEND_TIMEOUT * 3 / 2).await;
        let sent = Instant::now();
        client.write_all(b"world").await.expect("write the rest of the body");
        let mut buf = Vec::new();
        let (head, _) = read_response(&mut client, &mut buf).await;
        assert!(head.starts_with(answer), "{path}: {head}");
        if path == "/hang" {
            assert!(sent.elapsed() >= BACKEND_TIMEOUT * 15 / 16, "gave up {:?} after the body", sent.elapsed());
        }
    }
}
