//! The ingress end to end: real sockets, real HTTP, real backends.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use paastech_ingress::IngressConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

#[tokio::test]
async fn routes_by_host_ignoring_port_and_case() {
    let (ingress, table) = start_ingress().await;
    let blog = text_backend("blog").await;
    let shop = text_backend("shop").await;
    table.set_backends("blog", vec![blog.addr]);
    table.set_backends("shop", vec![shop.addr]);

    for (host, want) in [
        ("blog.apps.test", "blog"),
        ("blog.apps.test:8000", "blog"),
        ("BLOG.Apps.TEST:1", "blog"),
        ("shop.apps.test", "shop"),
        ("Shop.apps.test.", "shop"),
    ] {
        let answer = get(ingress, host, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "host {host}");
        assert_eq!(answer.body, want, "host {host}");
        // A proxied answer is the app's, not ours.
        assert!(answer.headers.get("server").is_none(), "host {host}");
    }
}

#[tokio::test]
async fn unknown_host_is_404_page() {
    let (ingress, table) = start_ingress().await;
    let blog = text_backend("blog").await;
    table.set_backends("blog", vec![blog.addr]);

    for host in ["nope.apps.test", "apps.test", "a.blog.apps.test", "blog.other.test", "127.0.0.1"] {
        let answer = get(ingress, host, "/").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "host {host}");
        assert_eq!(answer.headers["server"], "paastech");
        assert_eq!(answer.headers["content-type"], "text/html; charset=utf-8");
        assert!(answer.body.contains("no app"), "{}", answer.body);
    }
    // A request without any Host at all (HTTP/1.0) gets the same page.
    let raw = raw_request(ingress, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.0 404"), "{raw}");
}

#[tokio::test]
async fn project_without_backends_is_503_page() {
    let (ingress, table) = start_ingress().await;
    table.set_backends("idle", vec![]);
    let answer = get(ingress, "idle.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["server"], "paastech");
    assert!(answer.body.contains("no live deployment"), "{}", answer.body);

    table.remove("idle");
    let answer = get(ingress, "idle.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dead_backend_is_502_page() {
    let (ingress, table) = start_ingress().await;
    let dead = {
        let l = listen_loopback().await;
        l.local_addr().expect("addr")
    };
    table.set_backends("down", vec![dead]);
    let answer = get(ingress, "down.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers["server"], "paastech");
    assert!(answer.body.contains("502"), "{}", answer.body);
    // Nothing stays counted in flight after a failure.
    let backends = table.backends("down").expect("known");
    assert_eq!(backends[0].in_flight(), 0);
}

/// What the backend saw: method, request target, headers, body.
type Seen = (String, String, HeaderMap, Bytes);

#[tokio::test]
async fn forwards_method_path_headers_and_adds_forwarded_headers() {
    let (ingress, table) = start_ingress().await;
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let store = seen.clone();
    let app = backend(move |req: Request<hyper::body::Incoming>| {
        let store = store.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            *store.lock().expect("lock") = Some((parts.method.to_string(), parts.uri.to_string(), parts.headers, body));
            Response::builder()
                .status(StatusCode::CREATED)
                .header("x-app", "yes")
                .header("connection", "x-app-hop")
                .header("x-app-hop", "secret")
                .header("keep-alive", "timeout=5")
                .body(full("made"))
                .expect("response")
        }
    })
    .await;
    table.set_backends("api", vec![app.addr]);

    let host = format!("api.apps.test:{}", ingress.port());
    let req = Request::put(format!("http://{ingress}/things/1?x=1&y=%20z"))
        .header("host", &host)
        .header("x-custom", "kept")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .header("keep-alive", "timeout=9")
        .header("proxy-authorization", "Basic eA==")
        .body(http_body_util::Full::new(Bytes::from_static(b"payload")).boxed())
        .expect("request");
    let answer = send(req).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body, "made");
    assert_eq!(answer.headers["x-app"], "yes");
    assert!(answer.headers.get("x-app-hop").is_none());
    assert!(answer.headers.get("keep-alive").is_none());

    let (method, uri, headers, body) = seen.lock().expect("lock").take().expect("backend saw it");
    assert_eq!(method, "PUT");
    assert_eq!(uri, "/things/1?x=1&y=%20z");
    assert_eq!(body, "payload");
    assert_eq!(headers["host"], host.as_str());
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], host.as_str());
    for hop in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(headers.get(hop).is_none(), "{hop} reached the backend");
    }
}

/// The `X-Forwarded-Proto` a backend hears when the client (127.0.0.1) says `https`, with
/// `trusted` as the ingress's trusted proxies.
async fn proto_heard_with(trusted: &[&str]) -> String {
    let mut config = IngressConfig::new(DOMAIN);
    config.trusted_proxies = trusted.iter().map(|t| t.parse().expect("range")).collect();
    let (ingress, table) = start_ingress_with(config).await;
    let app = backend(|req: Request<hyper::body::Incoming>| async move {
        let proto = req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("none");
        Response::new(full(proto.to_owned()))
    })
    .await;
    table.set_backends("tls", vec![app.addr]);
    let req = Request::get(format!("http://{ingress}/"))
        .header("host", "tls.apps.test")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .expect("request");
    send(req).await.body
}

#[tokio::test]
async fn a_trusted_proxy_in_front_says_whether_the_client_used_https() {
    assert_eq!(proto_heard_with(&["127.0.0.0/8"]).await, "https", "a trusted proxy is believed");
    assert_eq!(proto_heard_with(&["10.0.0.0/8", "::1"]).await, "http", "anyone else is not");
    assert_eq!(proto_heard_with(&[]).await, "http", "nobody is trusted by default");
}

#[tokio::test]
async fn streams_large_bodies_both_ways() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 64; // 16 MiB
    let (ingress, table) = start_ingress().await;
    // Echoes the request body as the response body, as it arrives.
    let echo =
        backend(|req: Request<hyper::body::Incoming>| async move { Response::new(req.into_body().boxed()) }).await;
    table.set_backends("echo", vec![echo.addr]);

    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let req = Request::post(format!("http://{ingress}/upload"))
        .header("host", "echo.apps.test")
        .body(ChannelBody(rx).boxed())
        .expect("request");
    let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);
    tx.send(chunk(0)).await.expect("send first chunk");

    // The response starts (and its first bytes arrive) while the request is still being
    // sent: neither direction is buffered whole by the ingress.
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("response head before the request body ended")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut sum = 0u64;
    while received < CHUNK {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("first bytes echoed before the request body ended")
            .expect("a frame")
            .expect("frame ok");
        if let Ok(data) = frame.into_data() {
            received += data.len();
            sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
        }
    }
    let sender = tokio::spawn(async move {
        for i in 1..CHUNKS {
            tx.send(chunk(i)).await.expect("send chunk");
        }
    });
    while let Some(frame) =
        tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("echo keeps flowing")
    {
        if let Ok(data) = frame.expect("frame ok").into_data() {
            received += data.len();
            sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
        }
    }
    sender.await.expect("sender");
    let want_sum: u64 = (0..CHUNKS).map(|i| (i % 251) as u64 * CHUNK as u64).sum();
    assert_eq!(received, CHUNK * CHUNKS);
    assert_eq!(sum, want_sum);
}

#[tokio::test]
async fn reuses_backend_connections() {
    let (ingress, table) = start_ingress().await;
    let app = text_backend("ok").await;
    table.set_backends("pool", vec![app.addr]);
    for _ in 0..10 {
        let answer = get(ingress, "pool.apps.test", "/").await;
        assert_eq!(answer.body, "ok");
    }
    assert_eq!(app.connections(), 1, "sequential requests share one backend connection");
}

#[tokio::test]
async fn round_robin_across_backends() {
    let (ingress, table) = start_ingress().await;
    let one = text_backend("one").await;
    let two = text_backend("two").await;
    table.set_backends("rr", vec![one.addr, two.addr]);
    let mut bodies = Vec::new();
    for _ in 0..6 {
        bodies.push(get(ingress, "rr.apps.test", "/").await.body);
    }
    for pair in bodies.windows(2) {
        assert_ne!(pair[0], pair[1], "alternates: {bodies:?}");
    }
    assert_eq!(bodies.iter().filter(|b| *b == "one").count(), 3);
}

/// Reads an HTTP head (up to the blank line) from a raw stream.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert_eq!(n, 1, "closed in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn upgrade_is_tunnelled_both_ways() {
    let (ingress, table) = start_ingress().await;
    // A raw backend: answers 101 to an upgrade, then echoes bytes in upper case.
    let listener = listen_loopback().await;
    let backend_addr = listener.local_addr().expect("addr");
    let (head_tx, head_rx) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let head = read_head(&mut stream).await;
        let _ = head_tx.send(head);
        stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .expect("write 101");
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                return;
            }
            let upper = buf[..n].to_ascii_uppercase();
            stream.write_all(&upper).await.expect("echo");
        }
    });
    table.set_backends("ws", vec![backend_addr]);

    let mut client = TcpStream::connect(ingress).await.expect("connect");
    client
        .write_all(
            b"GET /socket HTTP/1.1\r\nHost: ws.apps.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\nSec-Test: 1\r\n\r\n",
        )
        .await
        .expect("write upgrade");
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut client)).await.expect("101 within 10s");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: echo"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");

    let backend_head = head_rx.await.expect("backend saw the request").to_ascii_lowercase();
    assert!(backend_head.starts_with("get /socket http/1.1"), "{backend_head}");
    assert!(backend_head.contains("upgrade: echo"), "{backend_head}");
    assert!(backend_head.contains("connection: upgrade"), "{backend_head}");
    assert!(backend_head.contains("sec-test: 1"), "{backend_head}");

    for msg in [&b"hello"[..], b"second message", &[b'x'; 5000][..]] {
        client.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("echo within 10s")
            .expect("read echo");
        assert_eq!(got, msg.to_ascii_uppercase());
    }

    // The tunnel counts as in flight until it closes, so a drain waits for it.
    let backends = table.backends("ws").expect("known");
    assert_eq!(backends[0].in_flight(), 1);
    let old = table.set_backends("ws", vec![]);
    assert!(!paastech_ingress::drain(&old, Duration::from_millis(100)).await);
    drop(client);
    assert!(paastech_ingress::drain(&old, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn drain_waits_for_in_flight_request_then_switch_is_atomic() {
    let (ingress, table) = start_ingress().await;
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let slow = backend(move |_req| {
        let arrived = arrived_tx.clone();
        let gate = gate.clone();
        async move {
            let _ = arrived.send(()).await;
            gate.notified().await;
            Response::new(full("old"))
        }
    })
    .await;
    let fresh = text_backend("new").await;
    table.set_backends("app", vec![slow.addr]);

    let pending = tokio::spawn(get(ingress, "app.apps.test", "/slow"));
    arrived_rx.recv().await.expect("slow request reached the backend");

    let old = table.set_backends("app", vec![fresh.addr]);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].addr(), slow.addr);
    assert_eq!(old[0].in_flight(), 1);

    // New requests go to the new backend at once.
    assert_eq!(get(ingress, "app.apps.test", "/").await.body, "new");

    let drained = tokio::spawn({
        let old = old.clone();
        async move { paastech_ingress::drain(&old, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!drained.is_finished(), "drain must wait for the slow request");

    release.notify_one();
    assert!(drained.await.expect("join"), "drained before the timeout");
    let answer = pending.await.expect("join");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "old");
    assert_eq!(old[0].in_flight(), 0);
}

#[tokio::test]
async fn drain_gives_up_at_timeout() {
    let (ingress, table) = start_ingress().await;
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let hang = backend(move |_req| {
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(()).await;
            std::future::pending::<()>().await;
            Response::new(full("never"))
        }
    })
    .await;
    table.set_backends("hang", vec![hang.addr]);
    let _pending = tokio::spawn(get(ingress, "hang.apps.test", "/"));
    arrived_rx.recv().await.expect("request reached the backend");
    let old = table.set_backends("hang", vec![]);
    let started = tokio::time::Instant::now();
    assert!(!paastech_ingress::drain(&old, Duration::from_millis(200)).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn shutdown_lets_open_requests_finish_then_stops() {
    let listener = listen_loopback().await;
    let ingress = listener.local_addr().expect("addr");
    let table = paastech_ingress::RouteTable::new();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(paastech_ingress::serve(
        listener,
        paastech_ingress::IngressConfig::new(DOMAIN),
        table.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let slow = backend(move |_req| {
        let arrived = arrived_tx.clone();
        let gate = gate.clone();
        async move {
            let _ = arrived.send(()).await;
            gate.notified().await;
            Response::new(full("finished"))
        }
    })
    .await;
    table.set_backends("app", vec![slow.addr]);
    let pending = tokio::spawn(get(ingress, "app.apps.test", "/"));
    arrived_rx.recv().await.expect("request reached the backend");

    stop_tx.send(()).expect("stop");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!server.is_finished(), "waits for the open request");
    assert!(TcpStream::connect(ingress).await.is_err(), "no new connections after shutdown");

    release.notify_one();
    let answer = pending.await.expect("join");
    assert_eq!(answer.body, "finished");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once connections are done")
        .expect("join");
}
