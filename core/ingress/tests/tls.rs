//! HTTPS on the ingress, over real sockets on 127.0.0.1: certificates made here by a test
//! CA (rcgen), a rustls client that trusts only that CA, HTTP/1.1 and HTTP/2 (ALPN), and
//! the choice of certificate by SNI.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{DOMAIN, backend, full, listen_loopback};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use paastech_core::HttpsPolicy;
use paastech_ingress::{CertStore, Certificate, IngressConfig, RouteTable};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// A test CA and the leaves it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "paastech test ca");
        let key = KeyPair::generate().expect("ca key");
        Pki { ca: CertifiedIssuer::self_signed(params, key).expect("ca certificate") }
    }

    /// A leaf for `names`, as PEM: the chain (leaf, then the CA) and the key.
    fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0].clone());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        (format!("{}{}", cert.pem(), self.ca.pem()), key.serialize_pem())
    }

    fn leaf(&self, names: &[&str]) -> Certificate {
        let (chain, key) = self.leaf_pem(names);
        Certificate::from_pem(chain.as_bytes(), key.as_bytes()).expect("a valid leaf")
    }

    /// A client trusting only this CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add the test ca");
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// An ingress with HTTPS on a random port, serving `DOMAIN` with the certificates in
/// `certs`, until the test's runtime ends. Returns the HTTPS address.
async fn start(certs: CertStore) -> (SocketAddr, RouteTable) {
    let plain = listen_loopback().await;
    let https = listen_loopback().await;
    let addr = https.local_addr().expect("https addr");
    let table = RouteTable::new();
    let config = IngressConfig::new(DOMAIN);
    tokio::spawn(paastech_ingress::serve_with_https(
        plain,
        https,
        certs,
        config,
        table.clone(),
        std::future::pending(),
    ));
    (addr, table)
}

async fn connect(addr: SocketAddr, config: ClientConfig, sni: &str) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("a server name");
    tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .expect("handshake within 10s")
}

/// A backend that answers with what it saw: the version, `Host`, `X-Forwarded-*`, and
/// the length of the body.
async fn echo_backend() -> common::TestBackend {
    backend(|req: Request<Incoming>| async move {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let line = format!(
            "version={:?} method={} path={} host={} proto={} xff={} xfh={}",
            req.version(),
            req.method(),
            req.uri().path(),
            header("host"),
            header("x-forwarded-proto"),
            header("x-forwarded-for"),
            header("x-forwarded-host"),
        );
        let cookies: Vec<&str> = req.headers().get_all("cookie").iter().filter_map(|v| v.to_str().ok()).collect();
        let line = format!("{line} cookies={cookies:?}");
        let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(usize::MAX);
        Response::new(full(format!("{line} body={body}")))
    })
    .await
}

async fn read(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

type ClientBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn body(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into()).boxed()
}

fn no_body() -> ClientBody {
    Empty::new().boxed()
}

fn with_wildcard(pki: &Pki) -> CertStore {
    let certs = CertStore::new(DOMAIN);
    certs.set_wildcard(Some(pki.leaf(&[&format!("*.{DOMAIN}")])));
    certs
}

#[tokio::test]
async fn https_http1_reaches_the_app_with_forwarded_proto_https() {
    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let app = echo_backend().await;
    table.set_backends("blog", vec![app.addr]);

    let host = format!("blog.{DOMAIN}");
    let tls = connect(addr, pki.client(&[HTTP11]), &host).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(HTTP11));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http/1.1");
    tokio::spawn(conn);
    // A client's own X-Forwarded-Proto does not count: the ingress knows it is https.
    let req = Request::get("/hello")
        .header("host", &host)
        .header("x-forwarded-proto", "http")
        .body(no_body())
        .expect("request");
    let (status, text) = read(send.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("version=HTTP/1.1 method=GET path=/hello"), "{text}");
    assert!(text.contains(&format!("host={host} proto=https xff=127.0.0.1 xfh={host}")), "{text}");

    // The same connection carries a POST whose body is streamed in many TLS records.
    let big = vec![b'x'; 300 * 1024];
    let req = Request::post("/upload").header("host", &host).body(body(big)).expect("request");
    let (status, text) = read(send.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("method=POST") && text.contains("proto=https") && text.ends_with("body=307200"), "{text}");
    assert_eq!(app.connections(), 1, "the backend connection is reused");

    // A project without an app gets the ingress's own page, over TLS too.
    let req = Request::get("/").header("host", format!("nothing.{DOMAIN}")).body(no_body()).expect("request");
    let (status, text) = read(send.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("no app here"), "{text}");
}

#[tokio::test]
async fn http2_streams_are_forwarded_as_http1_with_the_same_headers() {
    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let app = echo_backend().await;
    table.set_backends("blog", vec![app.addr]);
    table.set_backends("idle", vec![]);

    let host = format!("blog.{DOMAIN}");
    let tls = connect(addr, pki.client(&[H2, HTTP11]), &host).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H2), "h2 negotiated");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2 handshake");
    tokio::spawn(conn);

    // Several streams at once on the one connection.
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut send = send.clone();
        let req =
            Request::get(format!("https://{host}/s{i}")).version(Version::HTTP_2).body(no_body()).expect("request");
        streams.push(tokio::spawn(async move { read(send.send_request(req).await.expect("answer")).await }));
    }
    for (i, stream) in streams.into_iter().enumerate() {
        let (status, text) = stream.await.expect("stream task");
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains(&format!("version=HTTP/1.1 method=GET path=/s{i}")), "{text}");
        assert!(text.contains(&format!("host={host} proto=https xff=127.0.0.1 xfh={host}")), "{text}");
    }

    // A POST body, and a client's own forwarding headers.
    let mut sender = send.clone();
    let req = Request::post(format!("https://{host}/upload"))
        .version(Version::HTTP_2)
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "http")
        .header("x_forwarded_proto", "http")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(body(vec![b'y'; 200 * 1024]))
        .expect("request");
    let (status, text) = read(sender.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("method=POST") && text.ends_with("body=204800"), "{text}");
    assert!(text.contains("proto=https xff=10.1.2.3, 127.0.0.1"), "{text}");
    assert!(text.contains(r#"cookies=["a=1; b=2"]"#), "one Cookie field for HTTP/1.1: {text}");

    // The ingress's own pages, as over HTTP/1.
    for (name, want, says) in [
        ("nothing", StatusCode::NOT_FOUND, "no app here"),
        ("idle", StatusCode::SERVICE_UNAVAILABLE, "no live deployment"),
    ] {
        let req = Request::get(format!("https://{name}.{DOMAIN}/"))
            .version(Version::HTTP_2)
            .body(no_body())
            .expect("request");
        let (status, text) = read(sender.send_request(req).await.expect("answer")).await;
        assert_eq!(status, want, "{name}: {text}");
        assert!(text.contains(says), "{name}: {text}");
    }
    // A backend that is gone: 502.
    let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    table.set_backends("gone", vec![gone]);
    let req =
        Request::get(format!("https://gone.{DOMAIN}/")).version(Version::HTTP_2).body(no_body()).expect("request");
    let (status, text) = read(sender.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
}

#[tokio::test]
async fn http2_requests_go_past_a_backend_that_refuses_connections() {
    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let app = echo_backend().await;
    // Two projects, each with a dead address first in line: the first request of one is a
    // POST (hyper's client path), of the other a GET (the direct path).
    for name in ["posts", "gets"] {
        let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        table.set_backends(name, vec![dead, app.addr]);
    }
    let tls = connect(addr, pki.client(&[H2]), &format!("posts.{DOMAIN}")).await.expect("handshake");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2");
    tokio::spawn(conn);
    for (name, post_first) in [("posts", true), ("gets", false)] {
        for i in 0..50 {
            let mut send = send.clone();
            let uri = format!("https://{name}.{DOMAIN}/{i}");
            let post = (i % 2 == 0) == post_first;
            let req = if post {
                Request::post(uri).version(Version::HTTP_2).body(body(vec![b'z'; 1000 + i])).expect("request")
            } else {
                Request::get(uri).version(Version::HTTP_2).body(no_body()).expect("request")
            };
            let (status, text) = read(send.send_request(req).await.expect("answer")).await;
            assert_eq!(status, StatusCode::OK, "{name} {i}: {text}");
            let want = if post { format!("method=POST path=/{i}") } else { format!("method=GET path=/{i}") };
            assert!(text.contains(&want), "{name} {i}: {text}");
            if post {
                assert!(text.ends_with(&format!("body={}", 1000 + i)), "the whole body: {name} {i}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn http2_requests_that_reached_a_backend_are_not_sent_to_another() {
    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let app = echo_backend().await;
    // Reads each request head, then closes without answering.
    let dropper = listen_loopback().await;
    let dropper_addr = dropper.local_addr().expect("addr");
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = dropper.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let tls = connect(addr, pki.client(&[H2]), &format!("get.{DOMAIN}")).await.expect("handshake");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2");
    tokio::spawn(conn);
    // A GET (the direct path) and a POST (hyper's client), each the first request of a
    // project whose round-robin starts at the dropping backend.
    for (i, (name, post)) in [("get", false), ("post", true)].into_iter().enumerate() {
        table.set_backends(name, vec![dropper_addr, app.addr]);
        let uri = format!("https://{name}.{DOMAIN}/charge");
        let req = if post {
            Request::post(uri).version(Version::HTTP_2).body(body("pay")).expect("request")
        } else {
            Request::get(uri).version(Version::HTTP_2).body(no_body()).expect("request")
        };
        let (status, text) = read(send.clone().send_request(req).await.expect("answer")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}: {text}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), i + 1, "{name}: the dropping backend saw it once");
    }
    assert_eq!(app.connections(), 0, "no other backend saw either request");
}

#[tokio::test]
async fn http2_backend_timeouts_are_those_of_http1() {
    let pki = Pki::new();
    let certs = with_wildcard(&pki);
    let plain = listen_loopback().await;
    let https = listen_loopback().await;
    let addr = https.local_addr().expect("https addr");
    let table = RouteTable::new();
    let mut config = IngressConfig::new(DOMAIN);
    config.backend_timeout = Duration::from_millis(300);
    tokio::spawn(paastech_ingress::serve_with_https(
        plain,
        https,
        certs,
        config,
        table.clone(),
        std::future::pending(),
    ));
    let slow = backend(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    table.set_backends("slow", vec![slow.addr]);

    let host = format!("slow.{DOMAIN}");
    let tls = connect(addr, pki.client(&[H2]), &host).await.expect("handshake");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2");
    tokio::spawn(conn);
    let req = Request::get(format!("https://{host}/")).version(Version::HTTP_2).body(no_body()).expect("request");
    let started = std::time::Instant::now();
    let (status, text) = read(send.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "answered after the timeout, not after the backend");

    // A backend that stops in the middle of its answer: the stream is cut off after the
    // same timeout, not left hanging.
    let stalls = listen_loopback().await;
    table.set_backends("stalls", vec![stalls.local_addr().expect("addr")]);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok((mut stream, _)) = stalls.accept().await else { return };
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let req =
        Request::get(format!("https://stalls.{DOMAIN}/")).version(Version::HTTP_2).body(no_body()).expect("request");
    let response = send.send_request(req).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(4), response.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the stream must be reset, not completed or left hanging");
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after {:?}", started.elapsed());
}

/// A client verifier that accepts anything and keeps the certificate it was shown: to
/// see what the server sends, not whether the client would trust it.
#[derive(Debug, Default)]
struct Shown(Mutex<Vec<CertificateDer<'static>>>);

impl ServerCertVerifier for Shown {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.lock().expect("not poisoned").push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Connects as a client that accepts any certificate; returns what it was shown, and
/// whether the handshake went through.
async fn shown(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Vec<CertificateDer<'static>>, bool) {
    shown_offering(addr, sni, versions, &[]).await
}

/// [`shown`], offering `alpn`.
async fn shown_offering(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> (Vec<CertificateDer<'static>>, bool) {
    let verifier = Arc::new(Shown::default());
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("tls versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let ok = connect(addr, config, sni.unwrap_or("unnamed.example")).await.is_ok();
    let certs = verifier.0.lock().expect("not poisoned").clone();
    (certs, ok)
}

#[tokio::test]
async fn a_name_without_its_own_certificate_never_gets_another_one() {
    let pki = Pki::new();
    let certs = with_wildcard(&pki);
    let shop = pki.leaf(&["shop.example.com"]);
    certs.insert("shop.example.com", shop);
    let (addr, _table) = start(certs).await;
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    for versions in [tls12, tls13] {
        // Served names get their certificate.
        let (got, ok) = shown(addr, Some("shop.example.com"), versions).await;
        assert!(ok && got.len() == 1, "shop.example.com");
        let (wild, ok) = shown(addr, Some(&format!("blog.{DOMAIN}")), versions).await;
        assert!(ok && wild.len() == 1 && wild != got, "blog under the domain gets the wildcard");

        // Any other name, or none: the handshake fails before any certificate is sent.
        for sni in [
            None,
            Some("www.example.com"),
            Some("example.com"),
            Some(DOMAIN),
            Some(&*format!("a.b.{DOMAIN}")),
            Some(&*format!("blog.{DOMAIN}.evil.test")),
        ] {
            let (got, ok) = shown(addr, sni, versions).await;
            assert!(!ok, "{sni:?} must fail the handshake");
            assert!(got.is_empty(), "{sni:?} was shown a certificate");
        }
    }

    // And a client that checks says why: the server refused the handshake (rustls's
    // alert when no certificate resolves for the name).
    let err = connect(addr, pki.client(&[HTTP11]), "www.example.com").await.expect_err("no certificate for it");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(matches!(inner, Some(rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied))), "{err:?}");
}

#[tokio::test]
async fn a_certificate_replaced_at_run_time_is_served_to_new_connections() {
    let pki = Pki::new();
    let certs = CertStore::new(DOMAIN);
    let (addr, table) = start(certs.clone()).await;
    let app = echo_backend().await;
    table.set_backends("blog", vec![app.addr]);
    let host = format!("blog.{DOMAIN}");
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    let (got, ok) = shown(addr, Some(&host), tls13).await;
    assert!(!ok && got.is_empty(), "no certificate yet");

    certs.insert(&host, pki.leaf(&[&host]));
    let (first, ok) = shown(addr, Some(&host), tls13).await;
    assert!(ok && first.len() == 1);
    // A connection opened now keeps its session after the replacement.
    let kept = connect(addr, pki.client(&[HTTP11]), &host).await.expect("handshake with the first certificate");

    certs.insert(&host, pki.leaf(&[&host]));
    let (second, ok) = shown(addr, Some(&host), tls13).await;
    assert!(ok && second.len() == 1 && second != first, "new connections get the new certificate");
    let verified = connect(addr, pki.client(&[HTTP11]), &host).await.expect("the new one verifies");
    let peer = verified.get_ref().1.peer_certificates().expect("peer certificates")[0].clone();
    assert_eq!(peer, second[0]);

    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(kept)).await.expect("http/1.1");
    tokio::spawn(conn);
    let req = Request::get("/").header("host", &host).body(no_body()).expect("request");
    let (status, _) = read(send.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::OK, "the older connection still works");

    certs.remove(&host);
    let (got, ok) = shown(addr, Some(&host), tls13).await;
    assert!(!ok && got.is_empty(), "removed: no certificate again");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_30_seconds() {
    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let app = echo_backend().await;
    table.set_backends("blog", vec![app.addr]);
    let host = format!("blog.{DOMAIN}");
    let tls = connect(addr, pki.client(&[H2]), &host).await.expect("handshake");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2");
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("https://{host}/")).version(Version::HTTP_2).body(no_body()).expect("request");
    let (status, _) = read(send.send_request(req).await.expect("answer")).await;
    assert_eq!(status, StatusCode::OK);
    let idle = std::time::Instant::now();
    // The client keeps its side open: only the ingress can end the connection.
    let ended = tokio::time::timeout(Duration::from_secs(45), conn).await;
    assert!(ended.is_ok(), "the ingress did not close an idle http/2 connection");
    assert!(idle.elapsed() >= Duration::from_secs(29), "closed after {:?}, before the idle timeout", idle.elapsed());
    drop(send);
}

#[tokio::test]
async fn plain_http_still_says_http_beside_https() {
    let pki = Pki::new();
    let plain = listen_loopback().await;
    let plain_addr = plain.local_addr().expect("addr");
    let https = listen_loopback().await;
    let table = RouteTable::new();
    let config = IngressConfig::new(DOMAIN);
    tokio::spawn(paastech_ingress::serve_with_https(
        plain,
        https,
        with_wildcard(&pki),
        config,
        table.clone(),
        std::future::pending(),
    ));
    let app = echo_backend().await;
    table.set_backends("blog", vec![app.addr]);
    // Without its redirect to HTTPS, the project is served over plain HTTP.
    table.set_https("blog", HttpsPolicy { redirect: false, hsts_max_age: Some(300) });
    let answer = common::get(plain_addr, &format!("blog.{DOMAIN}"), "/").await;
    assert!(answer.body.contains("proto=http xff"), "{}", answer.body);
    assert!(answer.headers.get("strict-transport-security").is_none(), "never HSTS over plain HTTP");
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_for_names_with_a_certificate() {
    let pki = Pki::new();
    let plain = listen_loopback().await;
    let plain_addr = plain.local_addr().expect("addr");
    let https = listen_loopback().await;
    let https_port = https.local_addr().expect("addr").port();
    let table = RouteTable::new();
    tokio::spawn(paastech_ingress::serve_with_https(
        plain,
        https,
        with_wildcard(&pki),
        IngressConfig::new(DOMAIN),
        table.clone(),
        std::future::pending(),
    ));
    let app = echo_backend().await;
    table.set_backends("blog", vec![app.addr]);
    table.set_domains("blog", &["www.example.com"]);
    let host = format!("blog.{DOMAIN}");

    // Redirect on by default: the same URL over HTTPS, on the HTTPS port.
    let answer = common::get(plain_addr, &format!("{host}:8000"), "/a/b?x=1&y=2").await;
    assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY, "{}", answer.body);
    let location = answer.headers.get("location").and_then(|v| v.to_str().ok());
    assert_eq!(location, Some(format!("https://{host}:{https_port}/a/b?x=1&y=2").as_str()));
    // A method other than GET and HEAD keeps its method and body: 308.
    let answer = common::raw_request(
        plain_addr,
        &format!("POST /form HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"), "{answer}");
    // ACME's HTTP-01 challenges are answered over plain HTTP, never redirected.
    let answer = common::get(plain_addr, &host, "/.well-known/acme-challenge/token").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("path=/.well-known/acme-challenge/token"), "{}", answer.body);
    // A custom domain the ingress has no certificate for stays on plain HTTP.
    let answer = common::get(plain_addr, "www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.contains("proto=http"), "{}", answer.body);
    // An unknown name is not redirected either: it is nobody's.
    let answer = common::get(plain_addr, &format!("nobody.{DOMAIN}"), "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    // HSTS, when set, over HTTPS only: HTTP/1.1 and HTTP/2 alike.
    table.set_https("blog", HttpsPolicy { redirect: true, hsts_max_age: Some(300) });
    let mut answers = Vec::new();
    for alpn in [HTTP11, H2] {
        let tls = connect(plain_addr_https(https_port), pki.client(&[alpn]), &host).await.expect("handshake");
        let req = Request::get("/").header("host", &host).body(no_body()).expect("request");
        let resp = if alpn == H2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2");
            tokio::spawn(conn);
            send.send_request(req).await.expect("answer")
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http/1.1");
            tokio::spawn(conn);
            send.send_request(req).await.expect("answer")
        };
        let hsts = resp.headers().get("strict-transport-security").and_then(|v| v.to_str().ok()).map(str::to_owned);
        answers.push((resp.version(), resp.status(), hsts));
    }
    for (version, status, hsts) in answers {
        assert_eq!(status, StatusCode::OK, "{version:?}");
        assert_eq!(hsts.as_deref(), Some("max-age=300"), "{version:?}");
    }
    // Redirect off: plain HTTP is served.
    table.set_https("blog", HttpsPolicy { redirect: false, hsts_max_age: Some(300) });
    let answer = common::get(plain_addr, &host, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
}

fn plain_addr_https(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn acme_challenges_are_answered_to_validations_only() {
    let pki = Pki::new();
    let certs = CertStore::new(DOMAIN);
    let shop = pki.leaf(&["shop.example.com"]);
    certs.insert("shop.example.com", shop);
    let plain = listen_loopback().await;
    let https = listen_loopback().await;
    let (plain_addr, https_addr) = (plain.local_addr().expect("addr"), https.local_addr().expect("addr"));
    let serving = paastech_ingress::serve_with_https(
        plain,
        https,
        certs.clone(),
        IngressConfig::new(DOMAIN),
        RouteTable::new(),
        std::future::pending(),
    );
    tokio::spawn(serving);

    // TLS-ALPN-01: the challenge certificate goes to a client offering `acme-tls/1`, and
    // only to it; the connection carries nothing after the handshake.
    let (challenge_pem, challenge_key) = pki.leaf_pem(&["shop.example.com"]);
    let challenge = Certificate::tls_alpn01(challenge_pem.as_bytes(), challenge_key.as_bytes()).expect("challenge");
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let acme: &[&[u8]] = &[b"acme-tls/1"];
    let (before, ok) = shown_offering(https_addr, Some("shop.example.com"), tls13, acme).await;
    assert!(!ok && before.is_empty(), "no validation in progress: no certificate, not even the real one");
    certs.add_alpn01("shop.example.com", challenge);
    let (validated, ok) = shown_offering(https_addr, Some("shop.example.com"), tls13, acme).await;
    assert!(ok && validated.len() == 1, "the challenge certificate");
    let (real, ok) = shown_offering(https_addr, Some("shop.example.com"), tls13, &[H2, HTTP11]).await;
    assert!(ok && real.len() == 1 && real != validated, "browsers keep getting the real certificate");
    let (other, ok) = shown_offering(https_addr, Some("blog.example.com"), tls13, acme).await;
    assert!(!ok && other.is_empty(), "no challenge for another name");
    certs.remove_alpn01("shop.example.com");
    let (after, ok) = shown_offering(https_addr, Some("shop.example.com"), tls13, acme).await;
    assert!(!ok && after.is_empty(), "gone once removed");

    // HTTP-01: the key authorization, for any host, on the plain listener; another token
    // is routed as usual (here: no such project).
    certs.add_http01("tok-EN_1", "tok-EN_1.thumbprint");
    let get = |path: &'static str| async move {
        let mut tcp = TcpStream::connect(plain_addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: www.example.org\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer).await.expect("read");
        answer
    };
    let answer = get("/.well-known/acme-challenge/tok-EN_1").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntok-EN_1.thumbprint"), "{answer}");
    let answer = get("/.well-known/acme-challenge/other").await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    certs.remove_http01("tok-EN_1");
    let answer = get("/.well-known/acme-challenge/tok-EN_1").await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "gone once removed: {answer}");
}

/// Requests without a body go out on the ingress's own backend connections: every way
/// a backend may frame its answer arrives whole over HTTP/2 (chunked, a length longer
/// than one read, no body for HEAD, informational heads skipped, until the connection
/// closes), and a connection is reused until the backend says `close`.
#[tokio::test]
async fn http2_answers_arrive_whole_whatever_their_http1_framing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let app = listen_loopback().await;
    table.set_backends("raw", vec![app.local_addr().expect("addr")]);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let answer: Vec<u8> = match head.split(' ').nth(1).unwrap_or("") {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n".to_vec(),
                        "/big" => {
                            let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n".to_vec();
                            a.extend(std::iter::repeat_n(b'z', 300_000));
                            a
                        }
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n".to_vec(),
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\nok".to_vec(),
                        "/close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    if stream.write_all(&answer).await.is_err() || head.contains("/close") {
                        return;
                    }
                }
            });
        }
    });

    let host = format!("raw.{DOMAIN}");
    let tls = connect(addr, pki.client(&[H2]), &host).await.expect("handshake");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2");
    tokio::spawn(conn);
    let mut ask = async |method: http::Method, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://{host}{path}"))
            .version(Version::HTTP_2)
            .body(no_body())
            .expect("request");
        let resp = send.send_request(req).await.expect("answer");
        let length = resp.headers().get("content-length").map(|v| v.to_str().unwrap_or("?").to_owned());
        let (status, body) = read(resp).await;
        (status, body, length)
    };
    let (status, body, _) = ask(http::Method::GET, "/chunked").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello world"));
    let (status, body, length) = ask(http::Method::GET, "/big").await;
    assert_eq!((status, body.len(), length.as_deref()), (StatusCode::OK, 300_000, Some("300000")));
    assert!(body.bytes().all(|b| b == b'z'));
    let (status, body, length) = ask(http::Method::HEAD, "/head").await;
    assert_eq!((status, body.as_str(), length.as_deref()), (StatusCode::OK, "", Some("42")));
    let (status, body, _) = ask(http::Method::GET, "/early").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept-alive backend connection so far");
    let (status, body, _) = ask(http::Method::GET, "/close").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "until the end"));
    let (status, _, _) = ask(http::Method::GET, "/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection after the backend said close");
}

/// A static site over HTTP/2 is answered by the ingress from its files, as over HTTP/1:
/// its file server process (busybox `httpd … -h DIR`, recognized as the configured
/// static server) is stopped before the requests, so a proxied request would fail.
#[tokio::test]
async fn http2_requests_for_a_static_site_are_answered_from_its_files() {
    use paastech_core::drivers::TrafficRouter;
    use std::process::{Command, Stdio};

    let pki = Pki::new();
    let (addr, table) = start(with_wildcard(&pki)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("index.html"), "<h1>home</h1>").expect("write");
    std::fs::write(dir.path().join("big.txt"), "x".repeat(300_000)).expect("write");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox is installed (scripts/test.sh installs busybox-static)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let prefix: Vec<String> =
        [busybox, "httpd", "-f", "-p", &server.to_string(), "-h"].into_iter().map(String::from).collect();
    let mut child = Command::new(busybox)
        .args(&prefix[1..])
        .arg(dir.path())
        .stdin(Stdio::null())
        .spawn()
        .expect("start busybox httpd");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(server).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "busybox httpd did not listen on {server}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let router = paastech_ingress::IngressRouter::new(table, "/").serve_static_sites(prefix);
    let site = paastech_core::ProjectName::parse("site").expect("project name");
    router.switch(&site, vec![server], Duration::from_secs(1)).await;
    let _ = child.kill();
    let _ = child.wait();

    let host = format!("site.{DOMAIN}");
    let tls = connect(addr, pki.client(&[H2]), &host).await.expect("handshake");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("http/2");
    tokio::spawn(conn);
    for (path, want) in [("/", "<h1>home</h1>".to_owned()), ("/big.txt", "x".repeat(300_000))] {
        // Twice: the first look reads the disk, the second is answered from memory.
        for _ in 0..2 {
            let req = Request::get(format!("https://{host}{path}"))
                .version(Version::HTTP_2)
                .body(no_body())
                .expect("request");
            let (status, body) = read(send.send_request(req).await.expect("answer")).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert!(body == want, "{path}: {} bytes", body.len());
        }
    }
    let req =
        Request::get(format!("https://{host}/missing")).version(Version::HTTP_2).body(no_body()).expect("request");
    assert_eq!(read(send.send_request(req).await.expect("answer")).await.0, StatusCode::NOT_FOUND);
}
