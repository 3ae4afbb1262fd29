//! Issue #12 journey: the real server with `[ingress] https_listen` and the operator's
//! wildcard certificate (`[tls] cert_file`, `key_file`), a static site pushed over real
//! git+SSH, fetched over HTTPS with HTTP/1.1 and HTTP/2 by a rustls client that trusts
//! only the test CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use paastech_tests::{GitRepo, Server, example, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A test CA, and the operator's certificate for `*.localhost` signed by it, written as
/// PEM files in `dir`. Returns the CA's certificate (what clients trust).
fn write_certificate(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "paastech journey ca");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
    // webpki (like NSS and browsers) refuses a wildcard with a single label after it, so
    // `*.localhost` alone would not verify for any client: the leaf also names the one
    // app this journey fetches. The ingress serves it from its wildcard slot either way.
    let mut leaf =
        CertificateParams::new(vec!["*.localhost".to_owned(), "site.localhost".to_owned()]).expect("leaf params");
    leaf.distinguished_name.push(DnType::CommonName, "*.localhost");
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &ca).expect("leaf");
    std::fs::write(dir.join("wild.pem"), format!("{}{}", cert.pem(), ca.pem())).expect("write chain");
    std::fs::write(dir.join("wild.key"), key.serialize_pem()).expect("write key");
    ca.der().clone()
}

fn client(ca: &rustls::pki_types::CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test ca");
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// `GET path` over HTTPS with HTTP/1.1 (or HTTP/2 when `h2`): (negotiated ALPN, status, body).
async fn get(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    host: &str,
    path: &str,
    h2: bool,
) -> (Option<Vec<u8>>, u16, String) {
    let alpn: &[&[u8]] = if h2 { &[b"h2", b"http/1.1"] } else { &[b"http/1.1"] };
    let tls = connect(addr, client(ca, alpn), host).await.expect("tls handshake with the test ca");
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2");
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}:{}{path}", addr.port()))
            .version(hyper::Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .expect("request");
        send.send_request(req).await.expect("h2 answer")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.expect("http/1.1");
        tokio::spawn(conn);
        let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).expect("request");
        send.send_request(req).await.expect("http/1.1 answer")
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (negotiated, status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_static_site_is_served_over_https_and_http2_with_the_operators_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = write_certificate(certs.path());
    let https_port = free_port();
    let server = Server::start(&format!(
        "https_listen = \"127.0.0.1:{https_port}\"\n\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        certs.path().join("wild.pem").display().to_string(),
        certs.path().join("wild.key").display().to_string(),
    ));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "site"})));
    assert_eq!(status, 201, "{body}");
    let site =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    let (ok, output) = site.push("main");
    assert!(ok, "{output}\n{}", server.log());
    let index = std::fs::read_to_string(example("static-hello").join("index.html")).expect("index");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let addr = SocketAddr::from(([127, 0, 0, 1], https_port));
    runtime.block_on(async {
        let (alpn, status, body) = get(addr, &ca, "site.localhost", "/", false).await;
        assert_eq!((alpn.as_deref(), status), (Some(&b"http/1.1"[..]), 200), "{body}");
        assert_eq!(body, index);

        let (alpn, status, body) = get(addr, &ca, "site.localhost", "/", true).await;
        assert_eq!((alpn.as_deref(), status), (Some(&b"h2"[..]), 200), "{body}");
        assert_eq!(body, index);
        let (_, status, _) = get(addr, &ca, "site.localhost", "/style.css", true).await;
        assert_eq!(status, 200);

        // A name outside the app domain gets no certificate at all.
        let refused = connect(addr, client(&ca, &[b"http/1.1"]), "www.example.com").await;
        assert!(refused.is_err(), "a name the server has no certificate for must fail the handshake");
    });
    // Plain HTTP to it is redirected to HTTPS: the default once a certificate is held
    // (tests/tests/https_policy.rs has the rest of the policy).
    let (status, _) = server.app_get("site", "/");
    assert_eq!(status, 301);
}
