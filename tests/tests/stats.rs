//! Issue #15, item 4: stats. An app pushed over real git/SSH whose worker holds 120 MB
//! shows that memory in `GET /projects/{name}/stats`, in `paastech ps` and on the web UI's
//! overview, with a CPU share once there are two readings and the last hour's chart. (Each
//! runtime's reading is checked by the conformance case `usage_is_read`.)

use std::time::Duration;

use paastech_tests::web::Web;
use paastech_tests::{GitRepo, Server, eventually, example, ok};
use serde_json::{Value, json};

const PROCFILE: &str = "web: python3 app.py\n\
worker: python3 -c \"import time; b = b'x' * (120 * 1024 * 1024); print('holding', len(b), flush=True); time.sleep(100000)\"\n";

fn worker(stats: &Value) -> Value {
    stats["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == "worker.1")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn the_memory_an_app_holds_is_shown_with_its_cpu_share_and_chart() {
    let server = Server::start("");
    let api = server.api();
    let ada = server.developer("ada@example.com");
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": "heavy"})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("heavy"),
        &example("python-hello"),
        &ada.key,
        server.ssh_port,
        "heavy",
    );
    repo.write("Procfile", PROCFILE);
    repo.commit_all("a worker that holds 120 MB");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    let (status, body) =
        api.req("PUT", "/projects/heavy/scale", Some(&ada.token), Some(json!({"web": 1, "worker": 1})));
    assert_eq!(status, 200, "{body}");

    let mut last = Value::Null;
    let held = eventually(Duration::from_secs(60), || {
        let (status, stats) = api.req("GET", "/projects/heavy/stats", Some(&ada.token), None);
        assert_eq!(status, 200, "{stats}");
        last = stats;
        worker(&last)["memory_bytes"].as_u64().is_some_and(|m| m >= 120 * 1024 * 1024)
    });
    assert!(held, "the worker's 120 MB: {last}\n{}", server.log());
    let web = last["instances"].as_array().and_then(|all| all.iter().find(|i| i["name"] == "web.1")).cloned();
    let web_memory = web.as_ref().and_then(|w| w["memory_bytes"].as_u64()).unwrap_or(0);
    assert!(web_memory > 1_000_000 && web_memory < 100_000_000, "the web process is small: {last}");
    assert_eq!(worker(&last)["state"], "running");
    assert_eq!(worker(&last)["restarts"], 0);

    // A second reading a second later gives a CPU share, and the chart a second point.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, stats) = api.req("GET", "/projects/heavy/stats", Some(&ada.token), None);
    let share = worker(&stats)["cpu_percent"].as_f64();
    assert!(share.is_some_and(|p| (0.0..=400.0).contains(&p)), "a CPU share: {stats}");
    let history = stats["history"].as_array().cloned().unwrap_or_default();
    assert!(history.len() >= 2, "{stats}");
    let newest = history.last().and_then(|p| p["memory_bytes"].as_u64()).unwrap_or(0);
    assert!(newest >= 120 * 1024 * 1024 + web_memory / 2, "the chart adds the instances up: {stats}");

    // The CLI.
    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));
    let table = ok(&server.cli(home.path(), &["ps", "-p", "heavy"], None));
    let line = table.lines().find(|l| l.starts_with("worker.1")).unwrap_or_default();
    let mib: f64 = line
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "MiB")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0.0);
    assert!(table.contains("CPU") && table.contains("MEMORY") && mib >= 120.0, "{table}");

    // The web UI's overview: the figures and the chart.
    let mut page_client = Web::new(&server.api_url());
    page_client.log_in("ada@example.com");
    let page = page_client.get("/projects/heavy");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("id=\"usage-chart\"") && page.body.contains("<polyline class=\"memory\" points=\""),
        "{}",
        page.body
    );
    assert!(page.body.contains(" MiB</td>"), "{}", page.body);

    // Someone else's project is not found.
    let bob = server.developer("bob@example.com");
    let (status, _) = api.req("GET", "/projects/heavy/stats", Some(&bob.token), None);
    assert_eq!(status, 404);
}
