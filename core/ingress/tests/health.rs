//! `health_check` against real sockets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::{Response, StatusCode};
use paastech_ingress::{LastSeen, health_check};
use tokio::net::TcpListener;

#[tokio::test]
async fn healthy_once_the_app_answers_below_500() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    // Booting: 503 twice, then a 404 (below 500 counts as up: the app answers).
    let app = backend(move |req: http::Request<hyper::body::Incoming>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        async move {
            let status = if path != "/healthz" {
                StatusCode::BAD_REQUEST
            } else if n < 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::NOT_FOUND
            };
            Response::builder().status(status).body(full("")).expect("response")
        }
    })
    .await;
    health_check(app.addr, "healthz", Duration::from_secs(5)).await.expect("healthy");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn waits_for_the_app_to_start_listening() {
    let addr = {
        let l = listen_loopback().await;
        l.local_addr().expect("addr")
    };
    let start_later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = TcpListener::bind(addr).await.expect("rebind");
        let (stream, _) = listener.accept().await.expect("accept");
        let svc =
            hyper::service::service_fn(|_req| async { Ok::<_, std::convert::Infallible>(Response::new(full("up"))) });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    });
    health_check(addr, "/", Duration::from_secs(5)).await.expect("healthy once listening");
    start_later.abort();
}

#[tokio::test]
async fn fails_on_500_and_says_so() {
    let app = backend(|_req| async {
        Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body(full("boom")).expect("response")
    })
    .await;
    let started = tokio::time::Instant::now();
    let err = health_check(app.addr, "/", Duration::from_millis(400)).await.expect_err("a 500 is not healthy");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err.last, LastSeen::Status(s) if s == StatusCode::INTERNAL_SERVER_ERROR));
    assert!(err.to_string().contains("status 500"), "{err}");
}

#[tokio::test]
async fn fails_on_connection_refused() {
    let addr = {
        let l = listen_loopback().await;
        l.local_addr().expect("addr")
    };
    let err = health_check(addr, "/", Duration::from_millis(300)).await.expect_err("nothing listens");
    assert!(matches!(err.last, LastSeen::ConnectFailed(_)), "{err:?}");
    assert!(err.to_string().contains("connection failed"), "{err}");
    let core: paastech_core::Error = err.into();
    assert!(matches!(core, paastech_core::Error::Unavailable(_)));
}

#[tokio::test]
async fn times_out_when_the_app_never_answers() {
    // Accepts connections and holds them without a word.
    let listener = listen_loopback().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = tokio::time::Instant::now();
    let err = health_check(addr, "/", Duration::from_millis(300)).await.expect_err("no answer");
    assert!(started.elapsed() < Duration::from_secs(2), "timeout respected");
    assert!(matches!(err.last, LastSeen::NoAnswer), "{err:?}");
    assert!(err.to_string().contains("no answer"), "{err}");
}

#[tokio::test]
async fn invalid_path_fails_at_once() {
    let app = text_backend("ok").await;
    let err = health_check(app.addr, "/a b", Duration::from_secs(5)).await.expect_err("invalid path");
    assert!(matches!(err.last, LastSeen::InvalidPath(_)), "{err:?}");
}
