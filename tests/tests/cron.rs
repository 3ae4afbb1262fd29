//! Issue #15 item 3 journey: scheduled jobs from the repository's `app.json`, pushed over
//! real SSH to a real server on local processes. Jobs scheduled every minute run in the
//! live deployment, show in `paastech cron` with their exit codes and in `paastech logs`
//! as `cron.N`; a malformed schedule rejects the push naming the entry while the previous
//! version keeps serving; another user sees no jobs; a stopped project runs none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paastech_tests::web::Web;
use paastech_tests::{GitRepo, Server, eventually, example, ok};
use serde_json::{Value, json};

/// Two jobs every minute: one writes a marker with the deployment's version, one exits 4.
const APP_JSON: &str = r#"{
  "name": "python-hello",
  "cron": [
    {"command": "echo ran-$PAASTECH_VERSION", "schedule": "* * * * *"},
    {"command": "echo about to fail; exit 4", "schedule": "* * * * *", "timezone": "Europe/Paris"}
  ]
}
"#;

fn cron(server: &Server, token: &str, project: &str) -> (u16, Value) {
    server.api().req("GET", &format!("/projects/{project}/cron"), Some(token), None)
}

/// The kept runs that ran (not skipped) of job `job`, newest first.
fn runs_of(listing: &Value, job: u64) -> Vec<Value> {
    listing["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["job"] == job && r["outcome"] != "skipped")
        .cloned()
        .collect()
}

/// How long until `seconds` past the next minute starts.
fn until_next_minute_plus(seconds: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after the epoch");
    let into_minute = now.as_millis() as u64 % 60_000;
    Duration::from_millis(60_000 - into_minute + seconds * 1000)
}

#[test]
fn jobs_from_app_json_run_every_minute_are_listed_logged_refused_when_malformed_and_stop_with_the_project() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "jobs"})));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("jobs"), &example("python-hello"), &ada.key, server.ssh_port, "jobs");
    repo.write("app.json", APP_JSON);
    repo.commit_all("two scheduled jobs");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "push: {output}\n{}", server.log());
    assert!(output.contains("Scheduled job cron.1: * * * * * (UTC): echo ran-$PAASTECH_VERSION"), "{output}");
    assert!(output.contains("Scheduled job cron.2: * * * * * (Europe/Paris)"), "{output}");

    // Listed at once, with a next run within the minute.
    let (status, listing) = cron(&server, &ada.token, "jobs");
    assert_eq!(status, 200, "{listing}");
    let jobs = listing["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 2, "{listing}");
    assert_eq!(
        (&jobs[0]["name"], &jobs[0]["schedule"], &jobs[0]["timezone"]),
        (&json!("cron.1"), &json!("* * * * *"), &json!("UTC"))
    );
    assert_eq!(jobs[1]["timezone"], "Europe/Paris");
    assert!(jobs[0]["next_run_at"].as_str().is_some_and(|t| t.ends_with(":00Z")), "{listing}");

    // A malformed schedule fails the push naming the entry; v1 keeps serving.
    repo.write(
        "app.json",
        r#"{"cron": [{"command": "true", "schedule": "* * * * *"}, {"command": "true", "schedule": "*/61 * * * *"}]}"#,
    );
    repo.commit_all("a bad schedule");
    let (pushed, output) = repo.push("main");
    assert!(!pushed, "a malformed schedule is refused: {output}");
    assert!(output.contains(r#"app.json cron[1] (cron.2): schedule "*/61 * * * *""#), "{output}");
    assert_eq!(server.app_get("jobs", "/"), (200, "hello from python-hello (version 1)\n".to_owned()));

    // Another user's project answers 404, as on every route.
    let bob = server.developer("bob@example.com");
    let (status, body) = cron(&server, &bob.token, "jobs");
    assert_eq!(status, 404, "{body}");

    // Both jobs run at the next minute (bounded: at most two minute boundaries).
    let mut listing = Value::Null;
    let ran = eventually(Duration::from_secs(150), || {
        listing = cron(&server, &ada.token, "jobs").1;
        !runs_of(&listing, 1).is_empty() && !runs_of(&listing, 2).is_empty()
    });
    assert!(ran, "both jobs ran within 150 s: {listing}\n{}", server.log());
    let first = &runs_of(&listing, 1)[0];
    assert_eq!(
        (&first["outcome"], &first["exit_code"], &first["version"]),
        (&json!("succeeded"), &json!(0), &json!(1)),
        "{first}"
    );
    assert!(first["scheduled_at"].as_str().is_some_and(|t| t.ends_with(":00Z")), "{first}");
    assert!(first["started_at"].is_string() && first["finished_at"].is_string(), "{first}");
    let failing = &runs_of(&listing, 2)[0];
    assert_eq!((&failing["outcome"], &failing["exit_code"]), (&json!("failed"), &json!(4)), "{failing}");

    // The CLI lists them with their exit codes; the log has their output as cron.N.
    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));
    let table = ok(&server.cli(home.path(), &["cron", "-p", "jobs"], None));
    let line_of = |job: &str| table.lines().filter(|l| l.starts_with(job)).map(str::to_owned).collect::<Vec<_>>();
    assert!(line_of("cron.1").iter().any(|l| l.contains("echo ran-$PAASTECH_VERSION")), "{table}");
    assert!(line_of("cron.1").iter().any(|l| l.trim_end().ends_with(" 0")), "a run of cron.1 exited 0:\n{table}");
    assert!(line_of("cron.2").iter().any(|l| l.trim_end().ends_with(" 4")), "a run of cron.2 exited 4:\n{table}");
    let as_json: Value =
        serde_json::from_str(&ok(&server.cli(home.path(), &["cron", "-p", "jobs", "--json"], None))).expect("json");
    assert_eq!(as_json["jobs"].as_array().map(Vec::len), Some(2), "{as_json}");
    let logs = ok(&server.cli(home.path(), &["logs", "-p", "jobs", "-n", "200"], None));
    assert!(logs.lines().any(|l| l.contains("cron.1: ran-1")), "the job's output, as cron.1:\n{logs}");
    assert!(logs.lines().any(|l| l.contains("cron.2: about to fail")), "{logs}");
    assert!(logs.lines().any(|l| l.contains("cron.2: exited with code 4")), "{logs}");

    // The project's Cron tab shows them too; to its owner only.
    let mut web = Web::new(&server.api_url());
    web.log_in("ada@example.com");
    let page = web.get("/projects/jobs/cron");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<code>cron.1</code>") && page.body.contains("echo ran-$PAASTECH_VERSION"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<span class=\"badge ok\">exit 0</span>"), "{}", page.body);
    assert!(page.body.contains("<span class=\"badge bad\">exit 4</span>"), "{}", page.body);
    let mut bobs = Web::new(&server.api_url());
    bobs.log_in("bob@example.com");
    assert_eq!(bobs.get("/projects/jobs/cron").status, 404);

    // Counted by outcome on /metrics (ada, the first user, is an admin).
    let metrics = ureq::get(&format!("{}/metrics", server.api_url()))
        .header("Authorization", &format!("Bearer {}", ada.token))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    let count = |outcome: &str| {
        let prefix = format!("paastech_cron_runs_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert!(count("succeeded").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(count("failed").is_some_and(|n| n >= 1.0), "{metrics}");

    // A stopped project runs no job: nothing new past the next minute.
    ok(&server.cli(home.path(), &["stop", "-p", "jobs"], None));
    std::thread::sleep(Duration::from_secs(2));
    let before = cron(&server, &ada.token, "jobs").1["runs"].as_array().map(Vec::len);
    let (_, stopped) = cron(&server, &ada.token, "jobs");
    assert!(stopped["jobs"][0]["next_run_at"].is_null(), "no next run while stopped: {stopped}");
    std::thread::sleep(until_next_minute_plus(8));
    let after = cron(&server, &ada.token, "jobs").1["runs"].as_array().map(Vec::len);
    assert_eq!(before, after, "no run while stopped\n{}", server.log());
}
