//! Issue #12 journey, the HTTPS policy per project: the real server with the operator's
//! wildcard certificate, a static site pushed over real git+SSH, plain HTTP redirected to
//! HTTPS, `paastech https redirect off` and `paastech https hsts 300` through the real CLI,
//! HSTS seen over HTTPS with HTTP/1.1 and HTTP/2 (a rustls client that trusts only the
//! test CA) and never over plain HTTP, and the policy kept over a server restart.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use paastech_tests::{GitRepo, Server, example, free_port, ok, paastech_bin};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

/// A test CA and the operator's `*.localhost` certificate signed by it, as PEM files in
/// `dir`; `names` are put in the leaf too (webpki refuses `*.localhost` alone, a wildcard
/// over a single label). Returns the CA certificate, what clients trust.
fn write_certificate(dir: &std::path::Path, names: &[&str]) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "paastech journey ca");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
    let mut sans = vec!["*.localhost".to_owned()];
    sans.extend(names.iter().map(|n| (*n).to_owned()));
    let mut leaf = CertificateParams::new(sans).expect("leaf params");
    leaf.distinguished_name.push(DnType::CommonName, "*.localhost");
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &ca).expect("leaf");
    std::fs::write(dir.join("wild.pem"), format!("{}{}", cert.pem(), ca.pem())).expect("write chain");
    std::fs::write(dir.join("wild.key"), key.serialize_pem()).expect("write key");
    ca.der().clone()
}

/// The server's TOML for HTTPS on `https_port` with the certificate in `dir`.
fn https_config(https_port: u16, dir: &std::path::Path) -> String {
    format!(
        "https_listen = \"127.0.0.1:{https_port}\"\n\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        dir.join("wild.pem").display().to_string(),
        dir.join("wild.key").display().to_string(),
    )
}

/// What an answer says: its status, its `Location` and `Strict-Transport-Security`, and its body.
#[derive(Debug)]
struct Answer {
    status: u16,
    location: Option<String>,
    hsts: Option<String>,
    /// `Set-Cookie` fields (over HTTPS only).
    cookies: Vec<String>,
    body: String,
}

/// `GET path` over plain HTTP to the ingress, with `Host: host`.
fn plain_get(port: u16, host: &str, path: &str) -> Answer {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let header = |name: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    Answer {
        status: head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        location: header("location"),
        hsts: header("strict-transport-security"),
        cookies: Vec::new(),
        body: body.to_owned(),
    }
}

fn client(ca: &CertificateDer<'static>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test ca");
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// `GET path` over HTTPS, with HTTP/2 when `h2`, else HTTP/1.1.
async fn https_get(addr: SocketAddr, ca: &CertificateDer<'static>, host: &str, path: &str, h2: bool) -> Answer {
    https_request(addr, ca, host, Request::get(path), None, h2, LOCAL).await
}

/// The client address of most requests; another loopback address is another client.
const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// `req` (its method, path and headers) over HTTPS to `host`, with `body` as JSON.
async fn https_request(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    host: &str,
    req: hyper::http::request::Builder,
    body: Option<Value>,
    h2: bool,
    from: [u8; 4],
) -> Answer {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind the client's address");
    let tcp = socket.connect(addr).await.expect("connect to https");
    let name = ServerName::try_from(host.to_owned()).expect("server name");
    let tls = tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(client(ca, alpn)).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("tls handshake with the test ca");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "negotiated protocol");
    let io = TokioIo::new(tls);
    let path = req.uri_ref().map(ToString::to_string).unwrap_or_else(|| "/".into());
    let req = if h2 {
        req.uri(format!("https://{host}:{}{path}", addr.port())).version(hyper::Version::HTTP_2)
    } else {
        req.header("host", host)
    };
    let req = match body {
        Some(body) => req.header("content-type", "application/json").body(Full::new(Bytes::from(body.to_string()))),
        None => req.body(Full::new(Bytes::new())),
    }
    .expect("request");
    let response = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 answer")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.expect("http/1.1");
        tokio::spawn(conn);
        send.send_request(req).await.expect("http/1.1 answer")
    };
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, location, hsts) =
        (response.status().as_u16(), header("location"), header("strict-transport-security"));
    let cookies: Vec<String> =
        response.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Answer { status, location, hsts, cookies, body: String::from_utf8_lossy(&body).into_owned() }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn plain_http_is_redirected_hsts_is_sent_over_https_and_the_policy_survives_a_restart() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = write_certificate(certs.path(), &["site.localhost"]);
    let https_port = free_port();
    let mut server = Server::start(&https_config(https_port, certs.path()));
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "site"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["url"], format!("https://site.localhost:{https_port}"), "the app URL is https once served");
    let site =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    let (pushed, output) = site.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    let index = std::fs::read_to_string(example("static-hello").join("index.html")).expect("index");
    let home = tempfile::tempdir().expect("cli home");
    let cli = |server: &Server, args: &[&str]| {
        ok(&server.cli(home.path(), &[&["--token", ada.token.as_str()], args].concat(), None))
    };

    // The default: plain HTTP gets the same URL over HTTPS, path and query kept.
    let host = format!("site.localhost:{}", server.ingress_port);
    let answer = plain_get(server.ingress_port, &host, "/style.css?v=2&x=y");
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(
        answer.location.as_deref(),
        Some(format!("https://site.localhost:{https_port}/style.css?v=2&x=y").as_str())
    );
    // An ACME HTTP-01 challenge reaches the plain listener's answer, not a redirect.
    let answer = plain_get(server.ingress_port, &host, "/.well-known/acme-challenge/some-token");
    assert_ne!(answer.status, 301, "{answer:?}");
    let shown = cli(&server, &["https", "-p", "site"]);
    assert!(shown.contains("redirect to https on, hsts off"), "{shown}");
    let policy: Value = serde_json::from_str(&cli(&server, &["--json", "https", "-p", "site"])).expect("json");
    assert_eq!(policy, json!({"redirect": true, "hsts_max_age": null}));

    // HSTS on: over HTTPS with HTTP/1.1 and HTTP/2, and never over plain HTTP.
    let set = cli(&server, &["https", "hsts", "300", "-p", "site"]);
    assert!(set.contains("hsts max-age=300"), "{set}");
    let rt = runtime();
    let check_https = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            for h2 in [false, true] {
                let answer = https_get(https, &ca, "site.localhost", "/", h2).await;
                assert_eq!((answer.status, answer.body.as_str()), (200, index.as_str()), "h2={h2}");
                assert_eq!(answer.hsts.as_deref(), Some("max-age=300"), "h2={h2}");
            }
        })
    };
    check_https(&rt);

    // Redirect off: plain HTTP serves the site, without HSTS.
    let set = cli(&server, &["https", "redirect", "off", "-p", "site"]);
    assert!(set.contains("redirect to https off, hsts max-age=300"), "{set}");
    let answer = plain_get(server.ingress_port, &host, "/");
    assert_eq!((answer.status, answer.body.as_str()), (200, index.as_str()), "{answer:?}");
    assert_eq!(answer.hsts, None, "never HSTS over plain HTTP (RFC 6797 §7.2)");

    // A restart keeps the policy: the ingress of the new process gets it at the restore.
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = plain_get(server.ingress_port, &host, "/");
        if answer.status != 503 || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((answer.status, answer.body.as_str()), (200, index.as_str()), "{answer:?}\n{}", server.log());
    check_https(&rt);

    // Out of range: refused, naming the field, and nothing changes.
    let (status, body) = server.api().req(
        "PATCH",
        "/projects/site/https",
        Some(&ada.token),
        Some(json!({"hsts_max_age": 63_072_001, "redirect": true})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("hsts_max_age")), "{body}");
    let (status, body) = server.api().req("GET", "/projects/site/https", Some(&ada.token), None);
    assert_eq!((status, body), (200, json!({"redirect": false, "hsts_max_age": 300})));
    // Another user's project is not theirs to see or change.
    let bo = server.api().user("bo@example.com");
    let (status, _) = server.api().req("PATCH", "/projects/site/https", Some(&bo), Some(json!({"redirect": true})));
    assert_eq!(status, 404);
    // HSTS off again.
    let set = cli(&server, &["https", "hsts", "off", "-p", "site"]);
    assert!(set.contains("hsts off"), "{set}");
    rt.block_on(async {
        let answer = https_get(https, &ca, "site.localhost", "/", true).await;
        assert_eq!((answer.status, answer.hsts), (200, None));
    });
}

/// A server whose `[api] public_host` is `host`, with HTTPS on `https_port`.
fn server_with_public_host(https_port: u16, certs: &std::path::Path, host: &str) -> Server {
    // The harness writes `[api]` itself: the key goes into that table, then the server
    // starts again with it.
    let mut server = Server::start(&https_config(https_port, certs));
    server.stop();
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    let config = config.replacen("[api]\n", &format!("[api]\npublic_host = {host:?}\n"), 1);
    std::fs::write(&server.config_path, config).expect("config");
    server.start_again();
    server
}

#[test]
fn the_api_and_web_ui_are_served_at_public_host_through_the_tls_listener() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = write_certificate(certs.path(), &["paastech.localhost"]);
    let https_port = free_port();
    let server = server_with_public_host(https_port, certs.path(), "paastech.localhost");
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let ada = server.api().user("ada@example.com");
    let host = "paastech.localhost";
    let rt = runtime();
    rt.block_on(async {
        // The API with a token, over HTTP/1.1 and HTTP/2.
        for h2 in [false, true] {
            let req = Request::get("/api/v1/me").header("authorization", format!("Bearer {ada}"));
            let answer = https_request(https, &ca, host, req, None, h2, LOCAL).await;
            assert_eq!(answer.status, 200, "h2={h2}: {}", answer.body);
            assert!(answer.body.contains("ada@example.com"), "{}", answer.body);
        }
        // The web UI's log-in page; its cookie is Secure, since the browser came over HTTPS.
        let answer = https_get(https, &ca, host, "/login", false).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains("<form"), "{}", answer.body);
        assert!(
            !answer.cookies.is_empty() && answer.cookies.iter().all(|c| c.contains("; Secure")),
            "{:?}",
            answer.cookies
        );

        // A client's own X-Forwarded-For makes no bucket of its own in the login limiter:
        // behind the ingress, the address is the one the ingress saw.
        let mut statuses = Vec::new();
        for i in 0..11 {
            let req = Request::post("/api/v1/auth/login").header("x-forwarded-for", format!("203.0.113.{i}"));
            let body = json!({"email": format!("nobody{i}@example.com"), "password": "wrong password"});
            statuses.push(https_request(https, &ca, host, req, Some(body), false, LOCAL).await.status);
        }
        assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
        assert_eq!(statuses[10], 429, "the 11th failure from one address is refused: {statuses:?}");
        // Yet everyone behind the ingress is not one bucket: another client has its own.
        let req = Request::post("/api/v1/auth/login");
        let body = json!({"email": "someone@example.com", "password": "wrong password"});
        let other = https_request(https, &ca, host, req, Some(body), false, [127, 0, 0, 2]).await;
        assert_eq!(other.status, 401, "{}", other.body);
    });
    // Plain HTTP to it is redirected to HTTPS: the wildcard covers it.
    let answer = plain_get(server.ingress_port, &format!("{host}:{}", server.ingress_port), "/api/v1/healthz");
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(answer.location.as_deref(), Some(format!("https://{host}:{https_port}/api/v1/healthz").as_str()));
    // Its label is no project's name.
    let (status, body) = server.api().req("POST", "/projects", Some(&ada), Some(json!({"name": "paastech"})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("reserved")), "{body}");
}

#[test]
fn a_public_host_outside_the_app_domain_is_no_projects_domain() {
    let certs = tempfile::tempdir().expect("tempdir");
    write_certificate(certs.path(), &[]);
    let server = server_with_public_host(free_port(), certs.path(), "paas.example.test");
    let ada = server.api().user("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada), Some(json!({"name": "blog"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        server.api().req("POST", "/projects/blog/domains", Some(&ada), Some(json!({"domain": "PAAS.example.test"})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("API host")), "{body}");
    // No certificate covers it yet (ACME would order one): plain HTTP reaches the API.
    let answer = plain_get(server.ingress_port, "paas.example.test", "/api/v1/healthz");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("\"ok\""), "{answer:?}");
}

#[test]
fn a_server_whose_public_host_is_a_projects_address_refuses_to_start() {
    let mut server = Server::start("");
    let ada = server.api().user("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada), Some(json!({"name": "paastech"})));
    assert_eq!(status, 201, "{body}");
    server.stop();
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    let config = config.replacen("[api]\n", "[api]\npublic_host = \"paastech.localhost\"\n", 1);
    std::fs::write(&server.config_path, config).expect("config");
    let mut child = std::process::Command::new(paastech_bin())
        .args(["server", "--config"])
        .arg(&server.config_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.is_some_and(|s| !s.success()), "the server started anyway: {stderr}");
    assert!(stderr.contains("is the address of project paastech"), "{stderr}");
}
