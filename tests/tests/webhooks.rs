//! Issue #15, item 6: deploy webhooks. A receiver on loopback (a small HTTP server in
//! this test: 500 to the first POST, 200 afterwards) gets a POST for each deploy of a real
//! push over git/SSH, signed with the secret the API gave; the first 500 is retried, and
//! the deliveries list shows both attempts. A failing push sends `deploy.failed`, an event
//! filter keeps a success away, and bad input is refused naming the problem.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use paastech_tests::web::Web;
use paastech_tests::{GitRepo, Server, eventually, example, paastech_bin};
use serde_json::{Value, json};
use sha2::Sha256;

/// A POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    /// Lowercase names.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// A webhook receiver on 127.0.0.1: answers 500 to the first POST and 200 to the others,
/// and keeps each request. Stops when dropped.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(request) = read_request(stream, &kept) {
                            kept.lock().expect("received").push(request);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver { port, received, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.received.lock().expect("received").iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The requests to `path`, once there are `count` (or after `timeout`).
    fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> Vec<Received> {
        eventually(timeout, || self.at(path).len() >= count);
        self.at(path)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request and answers it: 500 if it is the first POST, else 200.
fn read_request(stream: TcpStream, kept: &Mutex<Vec<Received>>) -> Option<Received> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let first = kept.lock().expect("received").is_empty();
    let status = if first { "500 Internal Server Error" } else { "200 OK" };
    let mut stream = reader.into_inner();
    let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    Some(Received { path, headers, body })
}

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`, computed here, independently of
/// the server's code.
fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(paastech_bin())
        .args(args)
        .env("PAASTECH_SERVER", server.api_url())
        .env("PAASTECH_TOKEN", token)
        .env("HOME", server.dir.path())
        .output()
        .expect("paastech");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[test]
fn deploys_are_told_to_webhooks_signed_retried_filtered_and_listed() {
    // The receiver is on loopback, which webhooks reach only when the operator allows it.
    let server = Server::start("[webhooks]\nallow_private_targets = true\n");
    let api = server.api();
    let ada = server.developer("ada@example.com");
    let bob = server.developer("bob@example.com");
    let receiver = Receiver::start();
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": "hooked"})));
    assert_eq!(status, 201, "{body}");

    // Bad input is refused, naming the problem.
    let hooks = "/projects/hooked/webhooks";
    for (input, status, mentions) in [
        (json!({"url": "ftp://127.0.0.1/x"}), 400, "the scheme must be http or https, not ftp"),
        (json!({"url": "not a url"}), 400, "invalid webhook url \"not a url\""),
        (json!({"url": "http://user:pw@127.0.0.1/"}), 400, "a user name or password in the url is not allowed"),
        (
            json!({"url": receiver.url("/x"), "events": ["deploy.done"]}),
            400,
            "unknown webhook event \"deploy.done\": the known events are deploy.succeeded, deploy.failed",
        ),
    ] {
        let (got, body) = api.req("POST", hooks, Some(&ada.token), Some(input.clone()));
        assert_eq!(got, status, "{input}: {body}");
        assert!(error_message(&body).contains(mentions), "{input}: {body}");
    }
    // Another user's project does not exist for bob.
    let (status, body) = api.req("POST", hooks, Some(&bob.token), Some(json!({"url": receiver.url("/bob")})));
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("project \"hooked\" not found"), "{body}");

    // One webhook for every event (through the CLI), one for failures only (the API).
    let (ok, output) = cli(&server, &ada.token, &["webhooks", "add", &receiver.url("/all"), "-p", "hooked"]);
    assert!(ok, "{output}");
    assert!(output.contains("deploy.succeeded, deploy.failed"), "{output}");
    let secret = output
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret in {output}"))
        .to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() == 70, "{secret}");
    let (status, failed_only) = api.req(
        "POST",
        hooks,
        Some(&ada.token),
        Some(json!({"url": receiver.url("/failed-only"), "events": ["deploy.failed"]})),
    );
    assert_eq!(status, 201, "{failed_only}");
    assert_eq!(failed_only["events"], json!(["deploy.failed"]));
    let failed_only_secret = failed_only["secret"].as_str().expect("secret").to_owned();
    let (status, listed) = api.req("GET", hooks, Some(&ada.token), None);
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(!listed.to_string().contains("whsec_"), "the secret is shown once only: {listed}");
    let all_id = listed[0]["id"].as_i64().expect("id");

    // A push that goes live: a POST, refused once with a 500, delivered again.
    let repo = GitRepo::from_dir(
        &server.dir.path().join("repo"),
        &example("python-hello"),
        &ada.key,
        server.ssh_port,
        "hooked",
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}");
    let posts = receiver.wait_for("/all", 2, Duration::from_secs(30));
    assert_eq!(posts.len(), 2, "a retry after the 500: {posts:?}");
    for post in &posts {
        assert_eq!(post.header("content-type"), "application/json");
        assert_eq!(post.header("x-paastech-event"), "deploy.succeeded");
        assert_eq!(post.header("x-paastech-signature-256"), expected_signature(&secret, &post.body), "{post:?}");
    }
    assert_eq!(posts[0].header("x-paastech-delivery"), posts[1].header("x-paastech-delivery"), "one delivery");
    assert!(!posts[0].header("x-paastech-delivery").is_empty());
    assert_eq!(posts[0].body, posts[1].body, "the same body on each attempt");
    let event = posts[1].json();
    assert_eq!(event["event"], "deploy.succeeded");
    assert_eq!(event["project"], "hooked");
    assert_eq!(event["version"], 1);
    assert_eq!(event["status"], "live");
    assert_eq!(event["commit"], repo.head().as_str());
    assert!(event.get("reason").is_none(), "{event}");
    assert!(event["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{event}");

    // Both attempts are listed, newest first.
    let deliveries = format!("{hooks}/{all_id}/deliveries");
    let mut attempts = Value::Null;
    eventually(Duration::from_secs(10), || {
        attempts = api.req("GET", &deliveries, Some(&ada.token), None).1;
        attempts.as_array().is_some_and(|a| a.len() == 2)
    });
    let summary: Vec<(Value, Value)> = attempts
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["attempt"].clone(), a["status_code"].clone()))
        .collect();
    assert_eq!(summary, vec![(json!(2), json!(200)), (json!(1), json!(500))], "{attempts}");
    assert_eq!(attempts[0]["event"], "deploy.succeeded");
    let (ok, output) = cli(&server, &ada.token, &["webhooks", "-p", "hooked"]);
    assert!(ok && output.contains(&receiver.url("/all")) && output.contains("200 in"), "{output}");
    assert!(output.contains("none yet"), "the failures-only webhook has had nothing: {output}");
    assert!(receiver.at("/failed-only").is_empty(), "a success is not sent to a failures-only webhook");

    // A push that fails: both webhooks are told, with the reason.
    repo.write("Procfile", "web: exit 1\n");
    repo.commit_all("a web process that exits");
    let (ok, output) = repo.push("main");
    assert!(!ok, "{output}");
    for (path, secret) in [("/all", &secret), ("/failed-only", &failed_only_secret)] {
        let posts = receiver.wait_for(path, if path == "/all" { 3 } else { 1 }, Duration::from_secs(30));
        let post = posts.last().unwrap_or_else(|| panic!("no POST to {path}"));
        assert_eq!(post.header("x-paastech-event"), "deploy.failed", "{path}");
        assert_eq!(post.header("x-paastech-signature-256"), expected_signature(secret, &post.body), "{path}");
        let event = post.json();
        assert_eq!((event["status"].as_str(), event["version"].as_i64()), (Some("failed"), Some(2)), "{event}");
        assert!(event["reason"].as_str().is_some_and(|r| !r.is_empty()), "{event}");
    }

    // Each finished delivery is counted once (ada, the first user, is an admin). The
    // failure's deliveries end a moment after their POST arrives: wait for the count.
    let delivered = || {
        let text = ureq::get(&format!("{}/metrics", server.api_url()))
            .header("Authorization", &format!("Bearer {}", ada.token))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("paastech_webhook_deliveries_total{outcome=\"delivered\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    eventually(Duration::from_secs(10), || delivered() == Some(3.0));
    assert_eq!(delivered(), Some(3.0), "a success and a failure to /all, a failure to /failed-only");

    // Only the owner sees or removes them.
    let (status, _) = api.req("GET", &deliveries, Some(&bob.token), None);
    assert_eq!(status, 404);
    let (ok, output) = cli(&server, &bob.token, &["webhooks", "remove", &all_id.to_string(), "-p", "hooked"]);
    assert!(!ok && output.contains("not found"), "{output}");
    let (ok, output) = cli(&server, &ada.token, &["webhooks", "remove", &all_id.to_string(), "-p", "hooked"]);
    assert!(ok, "{output}");
    let (status, body) = api.req("GET", &deliveries, Some(&ada.token), None);
    assert_eq!(status, 404, "{body}");
    let (_, listed) = api.req("GET", hooks, Some(&ada.token), None);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // The web UI's Webhooks tab: the webhook and its delivery, add (the secret shown
    // once, or the error beside the field), remove.
    let mut web = Web::new(&server.api_url());
    web.log_in("ada@example.com");
    let page = web.get("/projects/hooked/webhooks");
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf();
    assert!(page.body.contains(&receiver.url("/failed-only")) && page.body.contains("deploy.failed"), "{}", page.body);
    assert!(page.body.contains("<span class=\"badge ok\">200</span>"), "the delivery is listed: {}", page.body);
    let bad = web.post("/projects/hooked/webhooks", &[("csrf", &csrf), ("url", "ftp://127.0.0.1/")]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("id=\"url-error\"") && bad.body.contains("must be http or https"), "{}", bad.body);
    let added = web.post(
        "/projects/hooked/webhooks",
        &[("csrf", &csrf), ("url", &receiver.url("/ui")), ("events", "deploy.succeeded")],
    );
    assert_eq!(added.status, 201, "{}", added.body);
    assert!(added.body.contains("id=\"new-webhook-secret\">whsec_"), "{}", added.body);
    let (_, listed) = api.req("GET", hooks, Some(&ada.token), None);
    let ui_hook = listed.as_array().and_then(|l| l.last()).cloned().unwrap_or_default();
    assert_eq!(
        (ui_hook["url"].as_str(), &ui_hook["events"]),
        (Some(receiver.url("/ui").as_str()), &json!(["deploy.succeeded"]))
    );
    let id = ui_hook["id"].to_string();
    let removed = web.post("/projects/hooked/webhooks/remove", &[("csrf", &csrf), ("id", &id)]);
    assert_eq!(removed.status, 303, "{}", removed.body);
    assert!(!web.get("/projects/hooked/webhooks").body.contains(&receiver.url("/ui")));
}
