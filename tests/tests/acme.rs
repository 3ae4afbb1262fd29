//! Issue #12, item 3: automatic certificates against a real ACME CA on loopback (Debian's
//! pebble, its DNS answering 127.0.0.1), validating by HTTP-01 and by TLS-ALPN-01 against
//! the real server's ingress; checked with curl over HTTPS and HTTP/2, trusting only
//! pebble's root.

use std::time::Duration;

use paastech_tests::pebble::{Pebble, curl_https};
use paastech_tests::{GitRepo, Server, eventually, example, free_port, http_get, ok};
use serde_json::{Value, json};

/// `[ingress] https_listen` and `[tls]` for ACME from `pebble`.
fn acme_config(pebble: &Pebble, https_port: u16, challenge: &str) -> String {
    format!(
        "https_listen = \"127.0.0.1:{https_port}\"\n\n[tls]\nacme_directory = \"{}\"\nacme_ca_file = {:?}\n\
         email = \"ops@example.com\"\nchallenge = \"{challenge}\"\nacme_retry_secs = 1\n",
        pebble.directory,
        pebble.api_ca.display().to_string(),
    )
}

/// The certificate status of a project's own name (from the project) or of one of its
/// custom domains.
fn certificate(server: &Server, token: &str, project: &str, domain: Option<&str>) -> Value {
    let api = server.api();
    match domain {
        None => api.req("GET", &format!("/projects/{project}"), Some(token), None).1["certificate"].clone(),
        Some(domain) => {
            let (_, list) = api.req("GET", &format!("/projects/{project}/domains"), Some(token), None);
            let found = list.as_array().and_then(|l| l.iter().find(|d| d["domain"] == domain)).cloned();
            found.map_or(Value::Null, |d| d["certificate"].clone())
        }
    }
}

fn wait_for_status(server: &Server, token: &str, project: &str, domain: Option<&str>, want: &str) -> Value {
    let mut last = Value::Null;
    let reached = eventually(Duration::from_secs(90), || {
        last = certificate(server, token, project, domain);
        last["status"] == want
    });
    assert!(reached, "{project} {domain:?}: never {want}, last {last}\n{}", server.log());
    last
}

/// A plain-HTTP GET through the ingress: the status and the `Location` it answered.
fn plain_redirect(port: u16, host: &str, path: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("http://{host}:{port}{path}"))
        .output()
        .expect("running curl");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, location) = shown.split_once(' ').unwrap_or((&shown, ""));
    (status.to_owned(), location.to_owned())
}

/// The response headers of an HTTPS GET of `/`.
fn https_headers(root: &std::path::Path, host: &str, port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates `name` and pushes the static example to it.
fn deploy(server: &Server, token: &str, key: &std::path::Path, name: &str) {
    let (status, body) = server.api().req("POST", "/projects", Some(token), Some(json!({"name": name})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(&server.dir.path().join(name), &example("static-hello"), key, server.ssh_port, name);
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
}

#[test]
fn http01_certificates_for_a_project_and_its_domain_served_over_https_and_http2_and_kept_across_a_restart() {
    let (ingress_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(ingress_port, https_port, None);
    let mut server = Server::start_on(&acme_config(&pebble, https_port, "http-01"), ingress_port);
    let ada = server.developer("ada@example.com");
    deploy(&server, &ada.token, &ada.key, "shop");
    let (status, body) =
        server.api().req("POST", "/projects/shop/domains", Some(&ada.token), Some(json!({"domain": "www.shop.test"})));
    assert_eq!(status, 201, "{body}");

    let own = wait_for_status(&server, &ada.token, "shop", None, "valid");
    assert!(own["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{own}");
    assert!(own["last_error"].is_null(), "{own}");
    wait_for_status(&server, &ada.token, "shop", Some("www.shop.test"), "valid");

    let root = pebble.issuing_root();
    for host in ["shop.localhost", "www.shop.test"] {
        for http2 in [false, true] {
            let (fetched, status, body) = curl_https(&root, host, https_port, "/", http2);
            assert!(fetched, "{host} http2={http2}: {body}\n{}", server.log());
            assert_eq!(status, if http2 { "2 200" } else { "1.1 200" }, "{host}");
            assert!(body.contains("static-hello"), "{host}: {body}");
        }
    }
    // Once a name has its certificate, plain HTTP is redirected to it; HSTS on request.
    let (status, location) = plain_redirect(ingress_port, "www.shop.test", "/a?b=c");
    assert_eq!((status.as_str(), location.as_str()), ("301", &*format!("https://www.shop.test:{https_port}/a?b=c")));
    let (status, body) =
        server.api().req("PATCH", "/projects/shop/https", Some(&ada.token), Some(json!({"hsts_max_age": 600})));
    assert_eq!(status, 200, "{body}");
    let headers = https_headers(&root, "shop.localhost", https_port);
    assert!(headers.to_ascii_lowercase().contains("strict-transport-security: max-age=600"), "{headers}");
    // The domains listing links it over HTTPS now.
    let (_, list) = server.api().req("GET", "/projects/shop/domains", Some(&ada.token), None);
    assert_eq!(list[0]["url"], format!("https://www.shop.test:{https_port}"), "{list}");

    // A name the server has no certificate for gets none (the handshake fails), and no
    // name is served another's certificate: curl checks the name it asked for.
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "blog"})));
    assert_eq!(status, 201, "{body}");
    wait_for_status(&server, &ada.token, "blog", None, "valid");
    let (fetched, _, _) = curl_https(&root, "blog.localhost", https_port, "/", false);
    assert!(fetched, "blog's own certificate, for its own name");
    let (fetched, _, error) = curl_https(&root, "nobody.localhost", https_port, "/", false);
    assert!(!fetched, "no certificate for an unknown name");
    assert!(!error.contains("certificate subject name") && !error.contains("does not match"), "{error}");

    // The web UI's Domains tab shows both certificates.
    let mut web = paastech_tests::web::Web::new(&server.api_url());
    web.log_in("ada@example.com");
    let page = web.get("/projects/shop/domains");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("HTTPS certificate of <span class=\"url\">shop.localhost</span>"), "{}", page.body);
    assert_eq!(page.body.matches("<span class=\"badge ok\">valid</span>").count(), 2, "{}", page.body);

    // The CLI shows it.
    let home = server.dir.path().join("ada-home");
    std::fs::create_dir_all(&home).expect("home");
    ok(&server.cli(
        &home,
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some("correct horse battery\n"),
    ));
    let listed = ok(&server.cli(&home, &["domains", "list", "-p", "shop"], None));
    assert!(listed.contains("CERTIFICATE") && listed.contains("valid until"), "{listed}");

    // A restart serves the stored certificates at once and orders nothing.
    let issued = pebble.issued();
    assert!(issued >= 3, "pebble issued {issued}:\n{}", pebble.log());
    server.restart();
    let served = eventually(Duration::from_secs(30), || curl_https(&root, "www.shop.test", https_port, "/", true).0);
    assert!(served, "served after a restart\n{}", server.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pebble.issued(), issued, "no new order for a valid certificate\n{}", server.log());
    assert_eq!(certificate(&server, &ada.token, "shop", Some("www.shop.test"))["status"], "valid");

    // A removed domain's certificate is no longer served.
    let (status, body) = server.api().req("DELETE", "/projects/shop/domains/www.shop.test", Some(&ada.token), None);
    assert_eq!(status, 204, "{body}");
    assert!(!curl_https(&root, "www.shop.test", https_port, "/", false).0, "not served once the domain is gone");
}

#[test]
fn tls_alpn01_certificates_for_a_project_and_its_domain_renew_before_they_expire() {
    let (ingress_port, https_port) = (free_port(), free_port());
    // Certificates of 30 s: renewed when 10 s are left.
    let pebble = Pebble::start(ingress_port, https_port, Some(Duration::from_secs(30)));
    let server = Server::start_on(&acme_config(&pebble, https_port, "tls-alpn-01"), ingress_port);
    let ada = server.developer("ada@example.com");
    deploy(&server, &ada.token, &ada.key, "shop");
    let (status, body) =
        server.api().req("POST", "/projects/shop/domains", Some(&ada.token), Some(json!({"domain": "www.shop.test"})));
    assert_eq!(status, 201, "{body}");
    let first = wait_for_status(&server, &ada.token, "shop", None, "valid");
    wait_for_status(&server, &ada.token, "shop", Some("www.shop.test"), "valid");
    let root = pebble.issuing_root();
    for host in ["shop.localhost", "www.shop.test"] {
        for http2 in [false, true] {
            let (fetched, status, body) = curl_https(&root, host, https_port, "/", http2);
            assert!(fetched && body.contains("static-hello"), "{host}: {status} {body}\n{}", server.log());
            assert_eq!(status, if http2 { "2 200" } else { "1.1 200" }, "{host}");
        }
    }

    let mut renewed = Value::Null;
    let changed = eventually(Duration::from_secs(60), || {
        renewed = certificate(&server, &ada.token, "shop", None);
        renewed["status"] == "valid" && renewed["expires_at"] != first["expires_at"]
    });
    assert!(changed, "renewed: first {first}, now {renewed}\n{}", server.log());
    assert!(curl_https(&root, "shop.localhost", https_port, "/", false).0, "the renewed certificate is served");
}

#[test]
fn a_failing_challenge_or_an_unreachable_ca_is_reported_and_the_app_stays_served_over_http() {
    let (ingress_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(ingress_port, https_port, None);
    // The CA looks for this name where nothing listens.
    pebble.resolve("elsewhere.shop.test", "127.0.0.2");
    let server = Server::start_on(&acme_config(&pebble, https_port, "http-01"), ingress_port);
    let ada = server.developer("ada@example.com");
    deploy(&server, &ada.token, &ada.key, "shop");
    let (status, body) = server.api().req(
        "POST",
        "/projects/shop/domains",
        Some(&ada.token),
        Some(json!({"domain": "elsewhere.shop.test"})),
    );
    assert_eq!(status, 201, "{body}");
    let failed = wait_for_status(&server, &ada.token, "shop", Some("elsewhere.shop.test"), "failed");
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("http-01 challenge failed"), "{failed}");
    assert!(failed["next_attempt_at"].as_str().is_some(), "a retry is planned: {failed}");
    let (status, body) = http_get(ingress_port, "elsewhere.shop.test", "/");
    assert_eq!(status, 200, "served over plain HTTP meanwhile, not redirected: {body}");
    assert!(body.contains("static-hello"), "{body}");
    // The project's own name is unaffected.
    wait_for_status(&server, &ada.token, "shop", None, "valid");

    // A CA that is down: the order fails with a message that names it, and the app is
    // served over plain HTTP.
    let closed = free_port();
    let config = format!(
        "https_listen = \"127.0.0.1:{}\"\n\n[tls]\nacme_directory = \"https://127.0.0.1:{closed}/dir\"\n",
        free_port()
    );
    let down = Server::start(&config);
    let bo = down.developer("bo@example.com");
    deploy(&down, &bo.token, &bo.key, "blog");
    let failed = wait_for_status(&down, &bo.token, "blog", None, "failed");
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot reach the ACME server") && error.contains(&closed.to_string()), "{failed}");
    let (status, body) = down.app_get("blog", "/");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_order_cut_off_by_a_crash_is_made_again_at_the_next_start() {
    let (ingress_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(ingress_port, https_port, None);
    // The CA's validation of this name reaches a listener that never answers: the order
    // waits there until the server is killed.
    let silent = std::net::TcpListener::bind(("127.0.0.3", ingress_port)).expect("bind 127.0.0.3");
    silent.set_nonblocking(true).expect("nonblocking");
    pebble.resolve("slow.shop.test", "127.0.0.3");
    let mut server = Server::start_on(&acme_config(&pebble, https_port, "http-01"), ingress_port);
    let ada = server.developer("ada@example.com");
    deploy(&server, &ada.token, &ada.key, "shop");
    let (status, body) =
        server.api().req("POST", "/projects/shop/domains", Some(&ada.token), Some(json!({"domain": "slow.shop.test"})));
    assert_eq!(status, 201, "{body}");
    let waiting = eventually(Duration::from_secs(30), || {
        silent.accept().is_ok()
            || certificate(&server, &ada.token, "shop", Some("slow.shop.test"))["status"] != "pending"
    });
    assert!(waiting, "the CA reached the silent listener\n{}", server.log());
    assert_eq!(certificate(&server, &ada.token, "shop", Some("slow.shop.test"))["status"], "pending");
    server.kill();
    drop(silent);

    // Next start: the name resolves here now, and its order is made again.
    pebble.resolve("slow.shop.test", "127.0.0.1");
    server.start_again();
    wait_for_status(&server, &ada.token, "shop", Some("slow.shop.test"), "valid");
    let root = pebble.issuing_root();
    assert!(curl_https(&root, "slow.shop.test", https_port, "/", false).0, "served\n{}", server.log());
}
