//! `serve_static` over real sockets, including attempts to read outside the root.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use http::StatusCode;
use tokio::net::TcpListener;

struct Site {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    // `secret.txt` sits beside the root, where no request may reach it.
    std::fs::write(dir.path().join("secret.txt"), "TOP SECRET").expect("write");
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("docs/deep")).expect("mkdir");
    std::fs::create_dir_all(root.join("empty")).expect("mkdir");
    std::fs::write(root.join("index.html"), "<h1>home</h1>").expect("write");
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").expect("write");
    std::fs::write(root.join("docs/deep/page.html"), "deep").expect("write");
    std::fs::write(root.join("style.css"), "body{}").expect("write");
    std::fs::write(root.join("app.JS"), "1").expect("write");
    std::fs::write(root.join("logo.svg"), "<svg/>").expect("write");
    std::fs::write(root.join("data.bin"), [0u8, 1, 2]).expect("write");
    std::fs::write(root.join("big.txt"), "x".repeat(300_000)).expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).expect("symlink");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(paastech_ingress::serve_static(listener, root, std::future::pending()));
    Site { addr, _dir: dir }
}

#[tokio::test]
async fn serves_files_and_index_pages() {
    let site = site().await;
    let host = "site";
    let cases: &[(&str, &str, &str)] = &[
        ("/", "<h1>home</h1>", "text/html; charset=utf-8"),
        ("/index.html", "<h1>home</h1>", "text/html; charset=utf-8"),
        ("/docs/", "<h1>docs</h1>", "text/html; charset=utf-8"),
        ("/docs/deep/page.html?v=1", "deep", "text/html; charset=utf-8"),
        ("/style.css", "body{}", "text/css; charset=utf-8"),
        ("/app.JS", "1", "text/javascript; charset=utf-8"),
        ("/logo.svg", "<svg/>", "image/svg+xml"),
        ("/data.bin", "\u{0}\u{1}\u{2}", "application/octet-stream"),
    ];
    for (path, body, ctype) in cases {
        let answer = get(site.addr, host, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.body, *body, "{path}");
        assert_eq!(answer.headers["content-type"], *ctype, "{path}");
        assert_eq!(answer.headers["content-length"], body.len().to_string().as_str());
    }
    let big = get(site.addr, host, "/big.txt").await;
    assert_eq!(big.body.len(), 300_000);
}

#[tokio::test]
async fn directory_without_slash_redirects() {
    let site = site().await;
    let answer = get(site.addr, "site", "/docs?x=1").await;
    assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(answer.headers["location"], "/docs/?x=1");
}

#[tokio::test]
async fn head_has_headers_without_body() {
    let site = site().await;
    let raw = raw_request(site.addr, "HEAD /style.css HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("content-length: 6"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "no body after the head: {raw:?}");
}

#[tokio::test]
async fn missing_and_other_methods() {
    let site = site().await;
    assert_eq!(get(site.addr, "site", "/nope.html").await.status, StatusCode::NOT_FOUND);
    // A directory without an index.
    assert_eq!(get(site.addr, "site", "/empty/").await.status, StatusCode::NOT_FOUND);
    let raw =
        raw_request(site.addr, "POST / HTTP/1.1\r\nHost: site\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("allow: get, head"), "{raw}");
}

#[tokio::test]
async fn never_serves_outside_the_root() {
    let site = site().await;
    for path in [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/docs/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/docs%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/link.txt",
        "//secret.txt",
    ] {
        // Raw TCP, so no client library normalizes the path first.
        let request = format!("GET {path} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
        let raw = raw_request(site.addr, &request).await;
        assert!(!raw.contains("TOP SECRET"), "{path} leaked: {raw}");
        assert!(raw.starts_with("HTTP/1.1 404") || raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
    }
}

#[tokio::test]
async fn missing_root_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = paastech_ingress::serve_static(
        listener,
        Path::new("/nonexistent/paastech-root").to_path_buf(),
        std::future::pending(),
    )
    .await
    .expect_err("no such root");
    assert!(err.to_string().contains("/nonexistent/paastech-root"), "{err}");
}
