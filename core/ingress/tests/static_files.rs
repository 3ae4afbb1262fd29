//! Static sites over real sockets, served two ways with the same answers: by the
//! `serve_static` process, and by the ingress itself from the files of a backend it
//! recognized as a static file server (its fast path). Includes attempts to read outside
//! the root, conditional requests, ranges and precompressed variants.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use paastech_core::ProjectName;
use paastech_core::drivers::TrafficRouter;
use paastech_ingress::IngressRouter;

struct Site {
    addr: SocketAddr,
    host: String,
    _dir: tempfile::TempDir,
}

/// How a site is reached in a test.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The `serve_static` process's server, directly.
    Process,
    /// The ingress, answering from the files (the static server process is gone).
    Ingress,
}

async fn site(via: Via) -> Site {
    let (dir, root) = site_files();
    match via {
        Via::Process => {
            let listener = listen_loopback().await;
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(paastech_ingress::serve_static(listener, root, std::future::pending()));
            Site { addr, host: "site".into(), _dir: dir }
        }
        Via::Ingress => {
            let (ingress, table) = start_ingress().await;
            let mut server = StaticServer::start(&root);
            let router = IngressRouter::new(table, "/").serve_static_sites(server.argv_prefix());
            router.switch(&project("site"), vec![server.addr], Duration::from_secs(1)).await;
            // From now on only the ingress can answer: a proxied request would fail.
            server.stop();
            Site { addr: ingress, host: format!("site.{DOMAIN}"), _dir: dir }
        }
    }
}

fn project(name: &str) -> ProjectName {
    ProjectName::parse(name).expect("project name")
}

/// A static file server process the ingress can recognize: busybox `httpd -f -p ADDR -h
/// DIR` (the directory last, as with `paastech internal serve-static DIR`).
struct StaticServer {
    child: Child,
    addr: SocketAddr,
}

impl StaticServer {
    fn busybox() -> PathBuf {
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("busybox is installed (scripts/test.sh installs busybox-static)")
    }

    fn start(root: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(Self::busybox())
            .args(["httpd", "-f", "-p", &addr.to_string(), "-h"])
            .arg(root)
            .stdin(Stdio::null())
            .spawn()
            .expect("start busybox httpd");
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "busybox httpd did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        StaticServer { child, addr }
    }

    fn argv_prefix(&self) -> Vec<String> {
        let addr = self.addr.to_string();
        [Self::busybox().display().to_string().as_str(), "httpd", "-f", "-p", &addr, "-h"].map(String::from).to_vec()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `big.txt`: too large to be cached, and different at every offset, so a part sent from
/// the wrong place shows.
fn big_text() -> String {
    (0..300_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// The site's tree: `(tempdir, root)`; `secret.txt` sits beside the root.
fn site_files() -> (tempfile::TempDir, PathBuf) {
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
    std::fs::write(root.join("big.txt"), big_text()).expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).expect("symlink");
    // Symlinks leaving the tree: relative, absolute to a system file, a directory, and a
    // precompressed sibling of a public file.
    std::os::unix::fs::symlink("../secret.txt", root.join("rel.txt")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.txt")).expect("symlink");
    std::os::unix::fs::symlink("..", root.join("up")).expect("symlink");
    std::fs::write(root.join("note.txt"), "public").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("note.txt.gz")).expect("symlink");
    // A symlink inside the tree is followed.
    std::os::unix::fs::symlink("docs/deep/page.html", root.join("alias.html")).expect("symlink");
    // Precompressed siblings, with contents that tell which one was sent.
    std::fs::write(root.join("app.js"), "plain js").expect("write");
    std::fs::write(root.join("app.js.gz"), "GZ js").expect("write");
    std::fs::write(root.join("app.js.br"), "BR js").expect("write");
    std::fs::write(root.join("only-gz.css"), "plain css").expect("write");
    std::fs::write(root.join("only-gz.css.gz"), "GZ css").expect("write");
    std::fs::write(root.join("digits.txt"), "0123456789").expect("write");
    (dir, root)
}

/// Each check, run against both ways of serving.
macro_rules! both {
    ($($check:ident),* $(,)?) => {
        mod via_process {
            $(#[tokio::test] async fn $check() { super::$check(super::Via::Process).await })*
        }
        mod via_ingress {
            $(#[tokio::test] async fn $check() { super::$check(super::Via::Ingress).await })*
        }
    };
}

both!(
    serves_files_and_index_pages,
    directory_without_slash_redirects,
    head_has_headers_without_body,
    missing_and_other_methods,
    never_serves_outside_the_root,
    conditional_requests,
    ranges,
    precompressed_variants,
);

async fn serves_files_and_index_pages(via: Via) {
    let site = site(via).await;
    let host = site.host.as_str();
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
    assert!(big.body == big_text(), "the whole large file, byte for byte");
}

async fn directory_without_slash_redirects(via: Via) {
    let site = site(via).await;
    let answer = get(site.addr, &site.host, "/docs?x=1").await;
    assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(answer.headers["location"], "/docs/?x=1");
}

async fn head_has_headers_without_body(via: Via) {
    let site = site(via).await;
    let raw = raw_request(
        site.addr,
        &format!("HEAD /style.css HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", site.host),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("content-length: 6"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "no body after the head: {raw:?}");
}

async fn missing_and_other_methods(via: Via) {
    let site = site(via).await;
    assert_eq!(get(site.addr, &site.host, "/nope.html").await.status, StatusCode::NOT_FOUND);
    // A directory without an index.
    assert_eq!(get(site.addr, &site.host, "/empty/").await.status, StatusCode::NOT_FOUND);
    let post = format!("POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", site.host);
    let raw = raw_request(site.addr, &post).await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("allow: get, head"), "{raw}");
}

async fn never_serves_outside_the_root(via: Via) {
    let site = site(via).await;
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
        "/rel.txt",
        "/passwd.txt",
        "/up/secret.txt",
        "/up/",
        "/%75p/secret.txt",
    ] {
        // Raw TCP, so no client library normalizes the path first.
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", site.host);
        let raw = raw_request(site.addr, &request).await;
        assert!(!raw.contains("TOP SECRET") && !raw.contains("root:"), "{path} leaked: {raw}");
        assert!(raw.starts_with("HTTP/1.1 404") || raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
    }
}

#[tokio::test]
async fn missing_root_is_an_error() {
    let listener = listen_loopback().await;
    let err = paastech_ingress::serve_static(
        listener,
        Path::new("/nonexistent/paastech-root").to_path_buf(),
        std::future::pending(),
    )
    .await
    .expect_err("no such root");
    assert!(err.to_string().contains("/nonexistent/paastech-root"), "{err}");
}

/// A response read off the wire (so nothing is decoded or normalized on the way).
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `METHOD path` with `headers`, on its own connection.
async fn ask(site: &Site, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", site.host);
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let raw = raw_request(site.addr, &request).await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw { status, headers, body: body.to_owned() }
}

async fn conditional_requests(via: Via) {
    let site = site(via).await;
    let first = ask(&site, "GET", "/style.css", &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("an ETag").to_owned();
    let modified = first.header("last-modified").expect("a Last-Modified").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong ETag: {etag}");
    let weak = format!("W/{etag}");
    let list = format!("\"other\", {etag}");
    // (headers, status): If-None-Match decides when present, else If-Modified-Since.
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![("If-None-Match", &etag)], 304),
        (vec![("If-None-Match", &weak)], 304),
        (vec![("If-None-Match", &list)], 304),
        (vec![("If-None-Match", "*")], 304),
        (vec![("If-None-Match", "\"other\"")], 200),
        (vec![("If-Modified-Since", &modified)], 304),
        (vec![("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")], 200),
        (vec![("If-Modified-Since", "not a date")], 200),
        (vec![("If-None-Match", "\"other\""), ("If-Modified-Since", &modified)], 200),
    ];
    for (headers, status) in cases {
        for method in ["GET", "HEAD"] {
            let answer = ask(&site, method, "/style.css", &headers).await;
            assert_eq!(answer.status, status, "{method} {headers:?}");
            if status == 304 {
                assert_eq!(answer.body, "", "{headers:?}: a 304 has no body");
                assert_eq!(answer.header("etag"), Some(etag.as_str()), "{headers:?}");
            } else if method == "GET" {
                assert_eq!(answer.body, "body{}", "{headers:?}");
            }
        }
    }
}

/// Request headers, status, body, `Content-Range`.
type RangeCase<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, Option<&'a str>);

async fn ranges(via: Via) {
    let site = site(via).await;
    let etag = ask(&site, "GET", "/digits.txt", &[]).await.header("etag").expect("an ETag").to_owned();
    let stale = "\"0-0-0\"".to_owned();
    let cases: Vec<RangeCase> = vec![
        (vec![("Range", "bytes=2-5")], 206, "2345", Some("bytes 2-5/10")),
        (vec![("Range", "bytes=0-0")], 206, "0", Some("bytes 0-0/10")),
        (vec![("Range", "bytes=7-")], 206, "789", Some("bytes 7-9/10")),
        (vec![("Range", "bytes=-3")], 206, "789", Some("bytes 7-9/10")),
        (vec![("Range", "bytes=8-100")], 206, "89", Some("bytes 8-9/10")),
        (vec![("Range", "bytes=10-")], 416, "range not satisfiable\n", Some("bytes */10")),
        (vec![("Range", "bytes=-0")], 416, "range not satisfiable\n", Some("bytes */10")),
        // Several ranges, or a malformed one: the whole file.
        (vec![("Range", "bytes=0-1,3-4")], 200, "0123456789", None),
        (vec![("Range", "bytes=5-2")], 200, "0123456789", None),
        (vec![("Range", "lines=1-2")], 200, "0123456789", None),
        // If-Range: the part only if the client's copy is the current one.
        (vec![("Range", "bytes=2-5"), ("If-Range", &etag)], 206, "2345", Some("bytes 2-5/10")),
        (vec![("Range", "bytes=2-5"), ("If-Range", &stale)], 200, "0123456789", None),
    ];
    for (headers, status, body, content_range) in cases {
        let answer = ask(&site, "GET", "/digits.txt", &headers).await;
        assert_eq!(answer.status, status, "{headers:?}");
        assert_eq!(answer.body, body, "{headers:?}");
        assert_eq!(answer.header("content-range"), content_range, "{headers:?}");
        assert_eq!(answer.header("content-length"), Some(body.len().to_string().as_str()), "{headers:?}");
    }
    // A file too large to be held in memory is streamed, ranges included.
    let big = big_text();
    let tail = ask(&site, "GET", "/big.txt", &[("Range", "bytes=299990-")]).await;
    assert_eq!((tail.status, tail.body.as_str()), (206, &big[299_990..]));
    let middle = ask(&site, "GET", "/big.txt", &[("Range", "bytes=123457-250000")]).await;
    assert_eq!((middle.status, middle.body.as_str()), (206, &big[123_457..=250_000]));
    assert!(ask(&site, "GET", "/big.txt", &[]).await.body == big, "the whole file, byte for byte");
}

/// Path, `Accept-Encoding`, body, `Content-Encoding`, `Vary`.
type EncodingCase = (&'static str, Option<&'static str>, &'static str, Option<&'static str>, Option<&'static str>);

async fn precompressed_variants(via: Via) {
    let site = site(via).await;
    let cases: &[EncodingCase] = &[
        ("/app.js", None, "plain js", None, Some("Accept-Encoding")),
        ("/app.js", Some("gzip, deflate, br"), "BR js", Some("br"), Some("Accept-Encoding")),
        ("/app.js", Some("gzip"), "GZ js", Some("gzip"), Some("Accept-Encoding")),
        ("/app.js", Some("br;q=0, gzip"), "GZ js", Some("gzip"), Some("Accept-Encoding")),
        ("/app.js", Some("identity"), "plain js", None, Some("Accept-Encoding")),
        ("/only-gz.css", Some("br"), "plain css", None, Some("Accept-Encoding")),
        ("/only-gz.css", Some("br, gzip"), "GZ css", Some("gzip"), Some("Accept-Encoding")),
        // No sibling: nothing varies.
        ("/style.css", Some("gzip, br"), "body{}", None, None),
        // A sibling that is a symlink out of the tree is not a variant.
        ("/note.txt", Some("gzip"), "public", None, None),
    ];
    for (path, encoding, body, content_encoding, vary) in cases {
        let headers: Vec<(&str, &str)> = encoding.iter().map(|e| ("Accept-Encoding", *e)).collect();
        let answer = ask(&site, "GET", path, &headers).await;
        assert_eq!(answer.status, 200, "{path} {encoding:?}");
        assert_eq!(answer.body, *body, "{path} {encoding:?}");
        assert_eq!(answer.header("content-encoding"), *content_encoding, "{path} {encoding:?}");
        assert_eq!(answer.header("vary"), *vary, "{path} {encoding:?}");
        let ctype = if path.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if path.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        assert_eq!(answer.header("content-type"), Some(ctype), "{path} {encoding:?}");
    }
    // Each representation has its own ETag, so a cache never mixes them up.
    let plain = ask(&site, "GET", "/app.js", &[]).await;
    let gz = ask(&site, "GET", "/app.js", &[("Accept-Encoding", "gzip")]).await;
    assert_ne!(plain.header("etag"), gz.header("etag"));
    let revalidated = ask(
        &site,
        "GET",
        "/app.js",
        &[("Accept-Encoding", "gzip"), ("If-None-Match", gz.header("etag").unwrap_or_default())],
    )
    .await;
    assert_eq!(revalidated.status, 304);
    // HEAD announces the length of the variant it would send.
    let head = ask(&site, "HEAD", "/app.js", &[("Accept-Encoding", "br")]).await;
    assert_eq!((head.header("content-length"), head.body.as_str()), (Some("5"), ""));
}

/// A deployment switch moves the fast path to the new directory at once: nothing
/// cached for the old one is served for the new one, and the old site answered until the
/// switch.
#[tokio::test]
async fn a_new_deployment_is_served_from_its_own_files_at_once() {
    let (ingress, table) = start_ingress().await;
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    for (n, dir) in dirs.iter().enumerate() {
        std::fs::write(dir.path().join("index.html"), format!("version {}", n + 1)).expect("write");
    }
    let host = format!("blog.{DOMAIN}");
    let blog = project("blog");
    let mut v1 = StaticServer::start(dirs[0].path());
    let router = IngressRouter::new(table.clone(), "/").serve_static_sites(v1.argv_prefix());
    router.switch(&blog, vec![v1.addr], Duration::from_secs(1)).await;
    v1.stop();
    for _ in 0..3 {
        assert_eq!(get(ingress, &host, "/").await.body, "version 1");
    }
    let mut v2 = StaticServer::start(dirs[1].path());
    let router = IngressRouter::new(table, "/").serve_static_sites(v2.argv_prefix());
    router.switch(&blog, vec![v2.addr], Duration::from_secs(1)).await;
    v2.stop();
    assert_eq!(get(ingress, &host, "/").await.body, "version 2");
}

/// A backend that is not the configured static server is proxied, never read from disk.
#[tokio::test]
async fn other_backends_are_proxied() {
    let (ingress, table) = start_ingress().await;
    let (dir, root) = site_files();
    let server = StaticServer::start(&root);
    // Another argv than the one running: not recognized.
    let mut other = server.argv_prefix();
    other[1] = "ftpd".into();
    let router = IngressRouter::new(table, "/").serve_static_sites(other);
    router.switch(&project("site"), vec![server.addr], Duration::from_secs(1)).await;
    let host = format!("site.{DOMAIN}");
    assert_eq!(get(ingress, &host, "/digits.txt").await.body, "0123456789");
    drop(server);
    // The process is gone and the ingress never read the files: a bad gateway.
    assert_eq!(get(ingress, &host, "/digits.txt").await.status, StatusCode::BAD_GATEWAY);
    drop(dir);
}
