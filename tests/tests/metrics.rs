//! Issue #15 (metrics): `GET /metrics` after real traffic through the ingress, from a real
//! server with an app pushed over real git and SSH, parsed by Prometheus's own OpenMetrics
//! parser (Debian's python3-prometheus-client, installed by scripts/test.sh).

use std::collections::BTreeMap;
use std::process::Command;

use paastech_tests::{GitRepo, Server, example, free_port, http_get};
use serde_json::json;

/// Every sample of an exposition, by name and labels (`name{a="x",b="y"}`), as Prometheus's
/// parser read it. Panics if the text does not parse.
fn parse(text: &str) -> BTreeMap<String, f64> {
    const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    // Debian's interpreter: the package's module is there, whatever `python3` is on PATH.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (with python3-prometheus-client: scripts/test.sh installs it)");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("writing the exposition");
    let output = child.wait_with_output().expect("parser");
    assert!(
        output.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("parser output")
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let mut request = agent.get(&format!("http://127.0.0.1:{port}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().expect("GET /metrics");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let status = response.status().as_u16();
    (status, content_type, response.body_mut().read_to_string().expect("body"))
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_count_the_requests_deploys_and_pushes_they_saw() {
    let metrics_port = free_port();
    let server = Server::start(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"));
    let api = server.api();
    // The first account is the admin; the second is not.
    let admin = server.developer("ops@example.com");
    let eve = api.user("eve@example.com");
    assert_eq!(get(server.api_port, "/metrics", None).0, 401, "the API's /metrics wants a token");
    assert_eq!(get(server.api_port, "/metrics", Some(&eve)).0, 403, "and an admin's");

    let (status, body) = api.req("POST", "/projects", Some(&admin.token), Some(json!({"name": "site"})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("site"),
        &example("static-hello"),
        &admin.key,
        server.ssh_port,
        "site",
    );
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    // And an app the ingress proxies to (the static site it answers itself).
    let (status, body) = api.req("POST", "/projects", Some(&admin.token), Some(json!({"name": "py"})));
    assert_eq!(status, 201, "{body}");
    let py =
        GitRepo::from_dir(&server.dir.path().join("py"), &example("python-hello"), &admin.key, server.ssh_port, "py");
    let (pushed, output) = py.push("main");
    assert!(pushed, "{output}\n{}", server.log());

    let before = parse(&get(metrics_port, "/metrics", None).2);
    // 25 pages, 7 misses, 3 requests for a name no project has.
    for _ in 0..25 {
        assert_eq!(server.app_get("site", "/").0, 200);
    }
    for _ in 0..7 {
        assert_eq!(server.app_get("site", "/no-such-page").0, 404);
    }
    for _ in 0..11 {
        assert_eq!(server.app_get("py", "/").0, 200);
    }
    for _ in 0..3 {
        assert_eq!(http_get(server.ingress_port, &format!("nobody.localhost:{}", server.ingress_port), "/").0, 404);
    }

    // The same exposition on the admin's token, as Prometheus's parser reads it.
    let (status, content_type, text) = get(server.api_port, "/metrics", Some(&admin.token));
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let after = parse(&text);
    let delta = |key: &str| sample(&after, key) - sample(&before, key);
    let requests = |project: &str, status: &str| {
        format!(r#"paastech_ingress_requests_total{{method="GET",project="{project}",status="{status}"}}"#)
    };
    assert_eq!(delta(&requests("site", "2xx")), 25.0, "{text}");
    assert_eq!(delta(&requests("site", "4xx")), 7.0, "{text}");
    assert_eq!(delta(&requests("", "4xx")), 3.0, "{text}");
    assert_eq!(delta(&requests("py", "2xx")), 11.0, "{text}");
    assert_eq!(delta(r#"paastech_ingress_request_duration_seconds_count{project="py"}"#), 11.0, "{text}");
    assert!(delta(r#"paastech_ingress_response_bytes_total{project="py"}"#) > 11.0 * 100.0, "{text}");
    assert_eq!(delta(r#"paastech_ingress_request_duration_seconds_count{project="site"}"#), 32.0, "{text}");
    let bytes = delta(r#"paastech_ingress_response_bytes_total{project="site"}"#);
    assert!(bytes > 32.0 * 100.0, "heads and pages were sent: {bytes} bytes\n{text}");
    // Every request of the loop was answered in under 16 s: all of them in the last
    // finite bucket's count.
    let slow = delta(r#"paastech_ingress_request_duration_seconds_bucket{le="+Inf",project="site"}"#);
    assert_eq!(slow, 32.0, "{text}");

    assert_eq!(sample(&after, r#"paastech_deploys_total{outcome="succeeded"}"#), 2.0, "{text}");
    assert_eq!(sample(&after, r#"paastech_builds_total{outcome="succeeded"}"#), 2.0, "{text}");
    assert_eq!(sample(&after, r#"paastech_git_operations_total{service="receive-pack"}"#), 2.0, "{text}");
    assert!(sample(&after, "paastech_ssh_connections_opened_total{}") >= 1.0, "{text}");
    assert_eq!(sample(&after, "paastech_projects{}"), 2.0, "{text}");
    assert_eq!(sample(&after, "paastech_users{}"), 2.0, "{text}");
    assert_eq!(sample(&after, "paastech_live_instances{}"), 2.0, "{text}");
    assert_eq!(sample(&after, r#"paastech_instance_restarts{project="site"}"#), 0.0, "{text}");

    // A push whose new version never becomes healthy: a failed deploy.
    repo.write("Procfile", "web: exit 1\n");
    repo.commit_all("a web process that dies");
    let (pushed, output) = repo.push("main");
    assert!(!pushed, "{output}");
    let last = parse(&get(metrics_port, "/metrics", None).2);
    assert_eq!(sample(&last, r#"paastech_deploys_total{outcome="failed"}"#), 1.0, "{last:?}");
    assert_eq!(sample(&last, r#"paastech_deploys_total{outcome="succeeded"}"#), 2.0, "{last:?}");
    assert_eq!(sample(&last, r#"paastech_git_operations_total{service="receive-pack"}"#), 3.0, "{last:?}");

    // A deleted project's series go with it.
    let (status, body) = api.req("DELETE", "/projects/site", Some(&admin.token), None);
    assert_eq!(status, 204, "{body}");
    let gone = parse(&get(metrics_port, "/metrics", None).2);
    let left: Vec<&String> = gone.keys().filter(|k| k.contains(r#"project="site""#)).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        sample(&gone, r#"paastech_ingress_requests_total{method="GET",project="py",status="2xx"}"#),
        sample(&after, r#"paastech_ingress_requests_total{method="GET",project="py",status="2xx"}"#)
    );
}
