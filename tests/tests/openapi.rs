//! The OpenAPI document says what the API does (issue #11, item 10): schemathesis fuzzes
//! every operation of the served document as a signed-in user and finds no server error
//! and no status the document does not list; the statuses no fuzzer reaches (no token, a
//! body too large, the wrong Content-Type, a parameter that does not parse) answer the
//! error body, and the document lists them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paastech_tests::smtp::SmtpSink;
use paastech_tests::{Server, fresh_postgres_database, ssh_keygen};
use serde_json::{Value, json};

/// Whole-run bound for schemathesis: it normally takes about half of it.
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(150);

/// The `[api]` key the fuzzed servers' mail needs.
const PUBLIC_URL: &str = "public_url = \"https://paastech.example.com\"\n";

/// The schemathesis installed by `scripts/setup/60-schemathesis.sh`.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("PAASTECH_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/schemathesis/bin/schemathesis")
    });
    assert!(
        path.exists(),
        "{} is missing: install schemathesis with `bash scripts/setup/60-schemathesis.sh` (or set PAASTECH_SCHEMATHESIS)",
        path.display()
    );
    path
}

fn created(api: &paastech_tests::Api, path: &str, token: &str, body: Value) -> Value {
    let (status, answer) = api.req("POST", path, Some(token), Some(body));
    assert_eq!(status, 201, "POST {path}: {answer}");
    answer
}

fn id_of(value: &Value) -> i64 {
    value["id"].as_i64().unwrap_or_else(|| panic!("no id in {value}"))
}

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_status_on_sqlite() {
    let schemathesis = schemathesis();
    // With mail, so the routes of mailed links answer as they do on a server that sends it.
    let sink = SmtpSink::start();
    fuzz(&schemathesis, Server::start_with_api_keys(PUBLIC_URL, &sink.config()), &sink);
}

/// PostgreSQL refuses what SQLite stores (a NUL in text, an integer out of range): the
/// fuzzer's strings reach it through every route.
#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_status_on_postgres() {
    let schemathesis = schemathesis();
    let url = fresh_postgres_database("paastech_openapi");
    let sink = SmtpSink::start();
    let server = Server::start_with_api_keys(PUBLIC_URL, &format!("[database]\nurl = {url:?}\n{}", sink.config()));
    // A NUL in an email reached PostgreSQL and answered 500.
    let api = server.api();
    let nul = json!({"email": "a\u{0}@example.com", "password": "correct horse battery"});
    let (status, body) = api.req("POST", "/auth/signup", None, Some(nul.clone()));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid")), "{body}");
    let (status, body) = api.req("POST", "/auth/login", None, Some(nul));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    fuzz(&schemathesis, server, &sink);
}

/// Runs schemathesis against `server`'s document as a signed-in user; panics with its
/// report if it finds a problem.
fn fuzz(schemathesis: &std::path::Path, server: Server, sink: &SmtpSink) {
    let api = server.api();

    // Ada (the first account, so an admin: `GET /users` answers 200) is the signed-in user
    // of every operation, and owns "blog", the project the `{name}` routes mostly hit.
    let ada = api.user("ada@example.com");
    sink.verify(&api, "ada@example.com");
    created(&api, "/projects", &ada, json!({"name": "blog"}));
    let (status, body) = api.req("PATCH", "/projects/blog/env", Some(&ada), Some(json!({"GREETING": "hello"})));
    assert_eq!(status, 200, "{body}");

    // The deleting operations run as Bo, on things of Bo's made for them, so a fuzzed
    // `DELETE /tokens/{id}` cannot revoke Ada's token halfway through (ids are small
    // integers a fuzzer tries early, and schemathesis reuses the ids `GET /tokens`
    // answered) nor delete "blog". Their fuzzing draws ids from Bo's dictionaries rather
    // than from Ada's answers, which Bo could only ever get 404 for.
    let bo = api.user("bo@example.com");
    sink.verify(&api, "bo@example.com");
    for name in ["doomed-1", "doomed-2"] {
        created(&api, "/projects", &bo, json!({"name": name}));
    }
    let tokens: Vec<i64> =
        (0..3).map(|i| id_of(&created(&api, "/tokens", &bo, json!({"name": format!("spare {i}")})))).collect();
    let keys_dir = tempfile::tempdir().expect("key dir");
    let keys: Vec<i64> = (0..2)
        .map(|i| {
            let (_, public) = ssh_keygen(keys_dir.path(), &format!("bo{i}"));
            id_of(&created(&api, "/ssh-keys", &bo, json!({"public_key": public})))
        })
        .collect();

    let list = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let config = format!(
        r#"
headers = {{ Authorization = "Bearer {ada}" }}
request-timeout = 20.0
generation.max-examples = 12
# The same cases on every run: a failure in CI reproduces on a laptop.
seed = 1

[dictionaries.project]
values = ["blog"]
[dictionaries.doomed]
values = ["doomed-1", "doomed-2"]
[dictionaries.bo-tokens]
values = [{tokens}]
[dictionaries.bo-keys]
values = [{keys}]

# A body over the API's 64 KiB limit is refused before it is read, with 413: a rejection
# like the others. Schemathesis makes such bodies when it breaks a `maxLength` (an env
# value over 32 KiB written with `\u` escapes is over 64 KiB), and does not count 413 as
# one by default. (The default list, plus 413.)
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5XX"]

# Mostly the real project, so the routes behind `{{name}}` run their logic, not only 404s.
[parameters]
"path.name" = {{ dictionary = "project", probability = 0.8 }}

# `follow=true` streams the log until the server stops: there is no response to check.
[[operations]]
include-path = "/projects/{{name}}/logs"
parameters = {{ "query.follow" = false }}

[[operations]]
include-path = "/projects/{{name}}"
include-method = "DELETE"
headers = {{ Authorization = "Bearer {bo}" }}
parameters = {{ "path.name" = {{ dictionary = "doomed", probability = 0.5 }} }}

[[operations]]
include-path = "/tokens/{{id}}"
include-method = "DELETE"
headers = {{ Authorization = "Bearer {bo}" }}
parameters = {{ "path.id" = {{ dictionary = "bo-tokens", probability = 0.5 }} }}
phases.fuzzing.extra-data-sources.responses = false

[[operations]]
include-path = "/ssh-keys/{{id}}"
include-method = "DELETE"
headers = {{ Authorization = "Bearer {bo}" }}
parameters = {{ "path.id" = {{ dictionary = "bo-keys", probability = 0.5 }} }}
phases.fuzzing.extra-data-sources.responses = false
"#,
        tokens = list(&tokens),
        keys = list(&keys),
    );
    let work = tempfile::tempdir().expect("schemathesis dir");
    let config_path = work.path().join("schemathesis.toml");
    std::fs::write(&config_path, config).expect("writing schemathesis.toml");

    let mut child = Command::new(schemathesis)
        .arg("--config-file")
        .arg(&config_path)
        .args(["--no-color", "run"])
        .arg(format!("{}/openapi.json", api.base))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth,negative_data_rejection",
            "--report",
            "junit",
        ])
        .arg("--report-dir")
        .arg(work.path().join("report"))
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running {}: {err}", schemathesis.display()));
    let started = Instant::now();
    while child.try_wait().expect("waiting for schemathesis").is_none() {
        if started.elapsed() > SCHEMATHESIS_DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().expect("schemathesis output");
            panic!(
                "schemathesis ran over {SCHEMATHESIS_DEADLINE:?}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("schemathesis output");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("schemathesis took {:?}", started.elapsed());
    assert!(output.status.success(), "schemathesis found problems:\n{report}\nserver log:\n{}", server.log());
    // A run that tested nothing would pass too: every operation of the document was tested.
    let operations = operation_count(&api);
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "schemathesis did not test all {operations} operations:\n{report}"
    );
}

/// How many operations (path and method) the served document has.
fn operation_count(api: &paastech_tests::Api) -> usize {
    let (status, doc) = api.req("GET", "/openapi.json", None, None);
    assert_eq!(status, 200, "{doc}");
    let paths = doc["paths"].as_object().expect("paths in the document");
    paths
        .values()
        .map(|item| {
            item.as_object().map_or(0, |methods| methods.keys().filter(|m| METHODS.contains(&m.as_str())).count())
        })
        .sum()
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// One raw request: (status, Content-Type, body as JSON or as a string).
fn send(url: &str, method: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response =
        agent.run(request.body(body.to_vec()).expect("request")).unwrap_or_else(|err| panic!("{method} {url}: {err}"));
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (response.status().as_u16(), content_type, value)
}

/// (method, path, route in the document, headers, body, expected status, expected code)
type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16, &'a str);

/// What axum refuses before a handler runs answers the API's error body too, and the
/// document lists each of those statuses on the route.
#[test]
fn rejections_answer_the_error_body_and_are_documented() {
    let server = Server::start("");
    let api = server.api();
    let token = api.user("ada@example.com");
    created(&api, "/projects", &token, json!({"name": "blog"}));
    let (_, doc) = api.req("GET", "/openapi.json", None, None);

    let bearer = format!("Bearer {token}");
    let auth = ("Authorization", bearer.as_str());
    let json_type = ("Content-Type", "application/json");
    let too_big = format!("{{\"name\": \"{}\"}}", "x".repeat(70 * 1024));
    #[rustfmt::skip]
    let cases: [Case; 13] = [
        ("POST", "/projects", "/projects", vec![auth, json_type], b"{\"name\":", 400, "invalid"),
        ("POST", "/projects", "/projects", vec![auth, ("Content-Type", "text/plain")], b"{\"name\": \"a1\"}", 415, "unsupported_media_type"),
        ("POST", "/projects", "/projects", vec![auth], b"", 415, "unsupported_media_type"),
        ("POST", "/projects", "/projects", vec![auth, json_type], too_big.as_bytes(), 413, "too_large"),
        ("POST", "/projects", "/projects", vec![auth, json_type], b"{\"name\": 5}", 422, "invalid"),
        ("PUT", "/projects/blog/limits", "/projects/{name}/limits", vec![auth, json_type], b"[null, null]", 422, "invalid"),
        ("POST", "/projects/blog/deployments", "/projects/{name}/deployments", vec![auth, json_type], too_big.as_bytes(), 413, "too_large"),
        ("POST", "/projects/blog/deployments", "/projects/{name}/deployments", vec![auth, json_type], b"{\"version\":", 400, "invalid"),
        ("DELETE", "/tokens/abc", "/tokens/{id}", vec![auth], b"", 400, "invalid"),
        ("GET", "/projects/blog/deployments?limit=many", "/projects/{name}/deployments", vec![auth], b"", 400, "invalid"),
        ("GET", "/projects/blog/logs?lines=-1", "/projects/{name}/logs", vec![auth], b"", 400, "invalid"),
        ("GET", "/projects/%FF", "/projects/{name}", vec![auth], b"", 400, "invalid"),
        ("GET", "/me", "/me", vec![("Authorization", "Bearer pt_forged")], b"", 401, "unauthorized"),
    ];
    for (method, path, route, headers, body, status, code) in cases {
        let (got, content_type, answer) = send(&format!("{}{path}", api.base), method, &headers, body);
        let case = format!("{method} {path} ({} bytes)", body.len());
        assert_eq!(got, status, "{case}: {answer}");
        assert!(content_type.starts_with("application/json"), "{case}: answered {content_type:?}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{case}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty() && message.starts_with(|c: char| !c.is_uppercase()), "{case}: {answer}");
        let documented = &doc["paths"][route][method.to_lowercase()]["responses"][status.to_string()];
        assert_eq!(documented["$ref"], "#/components/responses/Error", "{case}: the document does not list {status}");
    }
}

/// The document declares the bearer scheme and the shared error response, every route
/// that needs a token says so and lists 401, and every error status refers to the error
/// response (schemathesis always sends a token, so it cannot see a missing 401).
#[test]
fn the_document_declares_bearer_auth_and_one_error_response() {
    let server = Server::start("");
    let (status, doc) = server.api().req("GET", "/openapi.json", None, None);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"], json!({"type": "http", "scheme": "bearer"}));
    assert_eq!(
        doc["components"]["responses"]["Error"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], json!(["error"]), "{error_body}");

    // The routes that answer without a token; every other one needs it.
    let open = [
        "GET /healthz",
        "POST /auth/login",
        "POST /auth/signup",
        "POST /auth/verify",
        "POST /auth/password/reset",
        "POST /auth/password/reset/confirm",
    ];
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let name = format!("{} {path}", method.to_uppercase());
            let responses = operation["responses"].as_object().expect("responses");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(response["$ref"], "#/components/responses/Error", "{name} {status}: {response}");
                }
            }
            let needs_token =
                operation["security"].as_array().is_some_and(|s| s.iter().all(|r| r.get("bearer").is_some()));
            assert_eq!(needs_token, !open.contains(&name.as_str()), "{name}: security {}", operation["security"]);
            if needs_token {
                assert!(responses.contains_key("401"), "{name} needs a token but does not list 401");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413"] {
                    assert!(responses.contains_key(status), "{name} takes a body but does not list {status}");
                }
            }
            seen += 1;
        }
    }
    assert!(seen >= 26, "only {seen} operations in the document");
}
