//! The web UI's render-time and page-weight check (not a timed test: machines differ).
//!
//! Starts a real `paastech server`, creates 100 projects through the API, seeds 10
//! deployments each (1,000 in all, with builds and logs) straight into its store, then
//! fetches every page type repeatedly and prints the server's own render time (the
//! `Server-Timing` header the UI sets) and the page weight, HTML and with its CSS and JS.
//!
//!     cargo run -p paastech-tests --example ui_render
//!
//! Goals (issue #6): every page under 50 ms on the server, none over 150 KB.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paastech_core::{BuildStatus, DeploymentStatus, NewDeployment, ProjectName, Store};
use paastech_tests::Server;
use serde_json::json;

const PROJECTS: usize = 100;
const DEPLOYMENTS: i64 = 10;
const ROUNDS: usize = 20;
const BUDGET_MS: f64 = 50.0;
const BUDGET_BYTES: usize = 150 * 1024;

fn main() {
    let server = Server::start("");
    let api = server.api();
    let token = api.user("ada@example.com");
    let names: Vec<String> = (0..PROJECTS).map(|i| format!("app-{i:03}")).collect();
    let started = Instant::now();
    for name in &names {
        let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": name})));
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) =
        api.req("PATCH", "/projects/app-000/env", Some(&token), Some(json!({"DATABASE_URL": "postgres://db/app"})));
    assert_eq!(status, 200, "{body}");
    println!("created {PROJECTS} projects in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let url = format!("sqlite://{}", server.data_dir().join("paastech.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // The server's own key file: the seeded configs are sealed like the server's.
    let keyring = paastech_store::Keyring::load_or_create(&server.data_dir().join("secrets/secrets.key"))
        .expect("the server's secrets key");
    runtime.block_on(seed(&url, keyring, &names));
    println!("seeded {} deployments in {:.1} s", PROJECTS as i64 * DEPLOYMENTS, started.elapsed().as_secs_f64());

    let session = login_cookie(&server);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let base = server.api_url();
    let get = |path: &str| {
        // The log-in page is for visitors: asked with a session, it redirects.
        let cookie = if path == "/login" { String::new() } else { format!("paastech_session={session}") };
        let mut response = agent
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .call()
            .unwrap_or_else(|err| panic!("GET {path}: {err}"));
        let status = response.status().as_u16();
        let timing = render_ms(response.headers().get("server-timing").map(|v| v.to_str().unwrap_or("(not text)")));
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (status, timing, body.len())
    };
    let assets: usize = ["/assets/app.css", "/assets/app.js"].iter().map(|p| get(p).2).sum();
    let pages = [
        "/",
        "/admin",
        "/projects/new",
        "/projects/app-000",
        "/projects/app-000/deployments",
        "/projects/app-000/deployments/10",
        "/projects/app-000/env",
        "/projects/app-000/scale",
        "/projects/app-000/logs",
        "/projects/app-000/settings",
        "/account/keys",
        "/account/tokens",
        "/login",
    ];
    println!("\nserver render time over {ROUNDS} requests each (debug build), and page weight");
    println!("{:<36} {:>8} {:>8} {:>10} {:>14}", "page", "median", "max", "html", "html+css+js");
    let mut ok = true;
    for page in pages {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..ROUNDS {
            let (status, took, bytes) = get(page);
            assert_eq!(status, 200, "GET {page}");
            // Without the server's own figure there is nothing to hold to the budget: a
            // page that cannot be measured fails, rather than passing as NaN.
            match took {
                Ok(took) => times.push(took),
                Err(err) => {
                    eprintln!("GET {page}: {err}");
                    std::process::exit(1);
                }
            }
            size = bytes;
        }
        times.sort_by(f64::total_cmp);
        let (median, max) = (times[ROUNDS / 2], times[ROUNDS - 1]);
        let total = size + assets;
        let flag = if median > BUDGET_MS || total > BUDGET_BYTES { "  OVER BUDGET" } else { "" };
        ok &= flag.is_empty();
        println!(
            "{page:<36} {median:>6.2}ms {max:>6.2}ms {:>8.1}KB {:>12.1}KB{flag}",
            size as f64 / 1024.0,
            total as f64 / 1024.0
        );
    }
    println!("\ncss + js: {:.1} KB (cached for an hour)", assets as f64 / 1024.0);
    println!("{}", if ok { "all pages within 50 ms and 150 KB" } else { "SOME PAGES OVER BUDGET" });
    if !ok {
        std::process::exit(1);
    }
}

/// The render time in `Server-Timing: render;dur=MS` (other metrics and parameters may be
/// beside it), or why there is none.
fn render_ms(header: Option<&str>) -> Result<f64, String> {
    let header = header.ok_or("no Server-Timing header")?;
    let dur = header
        .split(',')
        .map(|metric| metric.split(';').map(str::trim))
        .find_map(|mut params| {
            (params.next() == Some("render")).then(|| params.find_map(|p| p.strip_prefix("dur=")))?
        })
        .ok_or_else(|| format!("Server-Timing {header:?} has no render;dur="))?;
    match dur.parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms),
        _ => Err(format!("Server-Timing {header:?}: render duration {dur:?} is not a number of milliseconds")),
    }
}

/// Ten deployments per project, as pushes and env changes make them: each with a build
/// and a log, the newest live and the others superseded.
async fn seed(url: &str, keyring: paastech_store::Keyring, names: &[String]) {
    let store = paastech_store::SqlStore::open(url, keyring).expect("opening the server's store");
    let processes: BTreeMap<String, String> = [("web".to_owned(), "python3 app.py".to_owned())].into();
    let log: String = (0..40).map(|i| format!("-----> step {i}: doing a build thing that prints a line\n")).collect();
    for name in names {
        let project = store.project(&ProjectName::parse(name).expect("name")).await.expect("project");
        for version in 1..=DEPLOYMENTS {
            let commit = format!("{:040x}", version * 7919 + project.id);
            let build = store.create_build(project.id, &commit).await.expect("build");
            store
                .finish_build(build.id, BuildStatus::Succeeded, Some("/nonexistent"), &processes, &log)
                .await
                .expect("finish build");
            let cause = if version % 3 == 0 { "env: set DATABASE_URL".to_owned() } else { "push".to_owned() };
            let deployment = store
                .create_deployment(&NewDeployment {
                    project_id: project.id,
                    status: DeploymentStatus::Queued,
                    build_id: Some(build.id),
                    commit: Some(commit),
                    config: [("DATABASE_URL".to_owned(), "postgres://db/app".to_owned())].into(),
                    scale: [("web".to_owned(), 1)].into(),
                    cause,
                })
                .await
                .expect("deployment");
            for status in [DeploymentStatus::Built, DeploymentStatus::Starting, DeploymentStatus::Healthy] {
                store.set_deployment_status(deployment.id, status, None).await.expect("status");
            }
            // Live as the orchestrator makes it: the one live deployment of the project is
            // superseded in the same transaction (a unique index allows one live at a time).
            store.make_live(deployment.id, &Default::default()).await.expect("live");
        }
    }
}

/// Logs in through the form and returns the session cookie's value.
fn login_cookie(server: &Server) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let base = server.api_url();
    let mut page = agent.get(format!("{base}/login")).call().expect("login page");
    let pre = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("paastech_csrf=").and_then(|c| c.split(';').next()).map(str::to_owned))
        .expect("pre-session cookie");
    let body = page.body_mut().read_to_string().expect("body");
    let start = body.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = &body[start..start + body[start..].find('"').expect("end")];
    let form = format!("csrf={csrf}&email=ada%40example.com&password=correct+horse+battery");
    let response = agent
        .post(format!("{base}/login"))
        .header("Cookie", format!("paastech_csrf={pre}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form)
        .expect("login");
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("paastech_session=").and_then(|c| c.split(';').next()).map(str::to_owned))
        .expect("session cookie")
}

#[cfg(test)]
mod tests {
    use super::render_ms;

    #[test]
    fn server_timing_is_read_or_refused() {
        assert_eq!(render_ms(Some("render;dur=1.25")), Ok(1.25));
        assert_eq!(render_ms(Some("db;dur=9, render;desc=\"page\";dur=0.50")), Ok(0.5));
        for bad in [
            None,
            Some(""),
            Some("render"),
            Some("db;dur=3"),
            Some("render;dur="),
            Some("render;dur=NaN"),
            Some("render;dur=-1"),
            Some("render;dur=inf"),
            Some("render;dur=1ms"),
        ] {
            assert!(render_ms(bad).is_err(), "{bad:?}");
        }
    }
}
