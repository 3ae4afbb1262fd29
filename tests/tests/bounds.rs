//! Issue #11's bounds against a real `paastech server` process: parallel login guesses
//! and the connection caps of the API and the ingress, over real sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use paastech_tests::Server;
use serde_json::{Value, json};

/// 50 wrong passwords at once: the limiter counts each attempt before checking it, so
/// exactly its limit (10 a minute) are checked and answered 401, and all the others 429.
#[test]
fn parallel_wrong_logins_never_pass_the_limit() {
    let server = Server::start("");
    let api = server.api();
    api.user("ada@example.com");
    let barrier = std::sync::Barrier::new(50);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..50)
            .map(|i| {
                let (api, barrier) = (&api, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let body = json!({"email": "ada@example.com", "password": format!("guess number {i}")});
                    api.req("POST", "/auth/login", None, Some(body)).0
                })
            })
            .collect();
        guesses.into_iter().map(|guess| guess.join().expect("guess thread")).collect()
    });
    let count = |status: u16| statuses.iter().filter(|s| **s == status).count();
    assert_eq!((count(401), count(429)), (10, 40), "{statuses:?}");
}

/// Sends `request` on `stream` and reads one whole answer (by its Content-Length).
fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).expect("write request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return String::from_utf8_lossy(&answer).into_owned();
            }
        }
        let n = stream.read(&mut buf).expect("read answer");
        if n == 0 {
            return String::from_utf8_lossy(&answer).into_owned();
        }
        answer.extend_from_slice(&buf[..n]);
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    stream
}

/// A new connection that was served `request` (answered `ok`), tried every 20 ms for at
/// most 5 s while the server still counts connections that just closed.
fn open_when_served(port: u16, request: &str, ok: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = connect(port);
        let answer = exchange(&mut stream, request);
        if answer.starts_with(ok) {
            return stream;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(Instant::now() < deadline, "no connection served on port {port} within 5 s: {answer}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn past_their_caps_the_api_and_the_ingress_answer_503_until_a_connection_closes() {
    // The harness writes [api] itself: its key is added to the file between two starts.
    let mut server = Server::start("max_connections = 2\n");
    server.stop();
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    let config = config.replacen("[api]\n", "[api]\nmax_connections = 2\n", 1);
    std::fs::write(&server.config_path, config).expect("config");
    server.start_again();

    let healthz = "GET /api/v1/healthz HTTP/1.1\r\nHost: api\r\n\r\n";
    let unknown_app = "GET / HTTP/1.1\r\nHost: nope.localhost\r\n\r\n";
    for (port, request, ok) in
        [(server.api_port, healthz, "HTTP/1.1 200"), (server.ingress_port, unknown_app, "HTTP/1.1 404")]
    {
        let mut held: Vec<TcpStream> = (0..2).map(|_| open_when_served(port, request, ok)).collect();

        let mut extra = connect(port);
        let refused = exchange(&mut extra, request);
        let (head, body) = refused.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{refused}");
        assert!(head.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{refused}");
        if port == server.api_port {
            let body: Value = serde_json::from_str(body).expect("the API's error body");
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        } else {
            assert!(body.contains("too many open connections"), "{body}");
        }

        // The held connections are still served; once one closes, a new one is.
        for stream in &mut held {
            assert!(exchange(stream, request).starts_with(ok));
        }
        drop(held.pop());
        held.push(open_when_served(port, request, ok));
    }
    let log = server.log();
    assert!(log.contains("too many open API connections"), "{log}");
    assert!(log.contains("too many open ingress connections"), "{log}");
}
