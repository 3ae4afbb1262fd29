//! The ingress's cap on open client connections, with real sockets on 127.0.0.1.

mod common;

use std::num::NonZeroUsize;
use std::time::Duration;

use common::*;
use paastech_ingress::IngressConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: app.apps.test\r\n\r\n";

/// Sends one keep-alive request on `stream` and reads its whole answer (`app`, from
/// `text_backend("app")`), leaving the connection open.
async fn one_request(stream: &mut TcpStream) -> String {
    stream.write_all(REQUEST).await.expect("write request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\napp") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn past_the_cap_a_new_connection_gets_503_until_one_closes() {
    const CAP: usize = 3;
    let mut config = IngressConfig::new(DOMAIN);
    config.max_connections = NonZeroUsize::new(CAP).expect("not zero");
    // Two threads: the cap holds across them, connections handed over included.
    config.threads = NonZeroUsize::new(2).expect("not zero");
    let (ingress, table) = start_ingress_with(config).await;
    let app = text_backend("app").await;
    table.set_backends("app", vec![app.addr]);

    // CAP connections, each known to be served, then left open and idle.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(ingress).await.expect("connect");
        let answer = one_request(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }

    // One more: a short 503 page that says when to retry, then closed. (Each proxy
    // thread pools its own backend connections: the count is one or two so far.)
    let before = app.connections();
    let answer = raw_request(ingress, "GET / HTTP/1.1\r\nHost: app.apps.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
    assert!(answer.contains("\r\nRetry-After: 1\r\n"), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("too many open connections\n"), "{answer}");
    assert_eq!(app.connections(), before, "a refused request never reaches the app");

    // The open ones are still served.
    for stream in &mut held {
        assert!(one_request(stream).await.starts_with("HTTP/1.1 200"));
    }

    // Once one closes, a new connection is served again (as soon as the ingress has seen
    // the close, which takes a moment), and takes the freed place.
    drop(held.pop());
    held.push(open_when_served(ingress).await);
    // The refused and the ended connections left no place taken: the cap is full again.
    let answer = raw_request(ingress, "GET / HTTP/1.1\r\nHost: app.apps.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held.pop());
    held.push(open_when_served(ingress).await);
}

#[tokio::test]
async fn any_cap_is_accepted() {
    let mut config = IngressConfig::new(DOMAIN);
    config.max_connections = NonZeroUsize::MAX;
    let (ingress, table) = start_ingress_with(config).await;
    let app = text_backend("app").await;
    table.set_backends("app", vec![app.addr]);
    let mut stream = TcpStream::connect(ingress).await.expect("connect");
    assert!(one_request(&mut stream).await.starts_with("HTTP/1.1 200"));
}

/// Refusing costs a socket for up to a second; once `MAX_REFUSING` refusals are under way,
/// a connection over the cap is closed at once, without a page.
#[tokio::test]
async fn past_the_refusals_it_can_afford_a_connection_is_closed_at_once() {
    let mut config = IngressConfig::new(DOMAIN);
    config.max_connections = NonZeroUsize::MIN;
    let (ingress, table) = start_ingress_with(config).await;
    let app = text_backend("app").await;
    table.set_backends("app", vec![app.addr]);
    let mut held = TcpStream::connect(ingress).await.expect("connect");
    assert!(one_request(&mut held).await.starts_with("HTTP/1.1 200"));

    // Many more than MAX_REFUSING at once, silent: each refusal waits for its client, up
    // to its linger of a second. That holds only if they all connect well within it: a
    // connect the kernel delayed (a retransmitted SYN costs a second) lets the first
    // refusals end and the later connections be paged too, so such a round is run again.
    let mut rounds = 0;
    let extra = loop {
        rounds += 1;
        let started = std::time::Instant::now();
        let mut extra = Vec::new();
        for _ in 0..4 * paastech_ingress::MAX_REFUSING {
            extra.push(TcpStream::connect(ingress).await.expect("connect"));
        }
        if started.elapsed() < Duration::from_millis(300) || rounds == 5 {
            break extra;
        }
        drop(extra);
        // The refusals of this round end (their clients are gone) before the next.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    let (mut paged, mut closed) = (0, 0);
    for mut stream in extra {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("closed within 10 s")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        if answer.is_empty() {
            closed += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 503") && answer.ends_with("connections\n"), "{answer}");
            paged += 1;
        }
    }
    assert!(paged >= paastech_ingress::MAX_REFUSING, "{paged} pages, {closed} closed at once");
    assert!(closed > 0, "{paged} pages, {closed} closed at once ({rounds} rounds)");
    // And the connection in place is unaffected.
    assert!(one_request(&mut held).await.starts_with("HTTP/1.1 200"));
}

/// A new connection that was served a request, tried every 20 ms for at most 2 s while
/// the ingress answers 503.
async fn open_when_served(ingress: std::net::SocketAddr) -> TcpStream {
    for _ in 0..100 {
        let mut stream = TcpStream::connect(ingress).await.expect("connect");
        stream.write_all(REQUEST).await.expect("write request");
        let mut head = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
            .await
            .expect("an answer within 10 s");
        match read {
            Ok(_) if &head == b"HTTP/1.1 200" => {
                let mut rest = Vec::new();
                let mut buf = [0u8; 1024];
                while !rest.ends_with(b"\r\n\r\napp") {
                    let n = stream.read(&mut buf).await.expect("read");
                    assert!(n > 0, "closed");
                    rest.extend_from_slice(&buf[..n]);
                }
                return stream;
            }
            Ok(_) => assert_eq!(&head, b"HTTP/1.1 503", "only 200 or 503"),
            Err(err) => panic!("reading an answer: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no connection was served within 2 s of one closing");
}
