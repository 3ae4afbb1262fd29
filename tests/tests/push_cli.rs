//! Issue #3 through the CLI: deploy, rollback, logs (following), scale, ps, one-off
//! commands (`run`); and two pushes to one project never build at once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use paastech_tests::{GitRepo, Server, eventually, example, paastech_bin};
use serde_json::{Value, json};

/// The `paastech` CLI with `args`, as the user with `token` on `server`.
fn paastech(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(paastech_bin())
        .args(args)
        .env("PAASTECH_SERVER", server.api_url())
        .env("PAASTECH_TOKEN", token)
        .env("HOME", server.dir.path())
        .output()
        .expect("paastech")
}

fn cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let output = paastech(server, token, args);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn deploy_rollback_logs_scale_and_ps_from_the_cli() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    assert!(cli(&server, &ada.token, &["projects", "create", "cli-py"]).0);
    let repo = GitRepo::from_dir(
        &server.dir.path().join("repo"),
        &example("python-hello"),
        &ada.key,
        server.ssh_port,
        "cli-py",
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}");

    let (ok, output) = cli(&server, &ada.token, &["env", "set", "-p", "cli-py", "GREETING=hi"]);
    assert!(ok, "{output}");
    assert_eq!(server.app_get("cli-py", "/").1.trim(), "hi from python-hello (version 2)");

    // `deploy` makes v3 from the latest build with the current env.
    let (ok, output) = cli(&server, &ada.token, &["deploy", "-p", "cli-py"]);
    assert!(ok && output.contains("v3 of cli-py is live"), "{output}");
    // `rollback` with no version goes to the release live before the live one (v2).
    let (ok, output) = cli(&server, &ada.token, &["rollback", "-p", "cli-py"]);
    assert!(ok && output.contains("v4 of cli-py is live"), "{output}");
    let (ok, output) = cli(&server, &ada.token, &["rollback", "-p", "cli-py", "1"]);
    assert!(ok, "{output}");
    assert_eq!(server.app_get("cli-py", "/").1.trim(), "hello from python-hello (version 5)");
    let (_, output) = cli(&server, &ada.token, &["env", "list", "-p", "cli-py"]);
    assert_eq!(output.trim(), "", "the rollback restored v1's (empty) config");
    let (ok, output) = cli(&server, &ada.token, &["rollback", "-p", "cli-py", "99"]);
    assert!(!ok && output.contains("v99"), "{output}");

    let (ok, output) = cli(&server, &ada.token, &["deployments", "-p", "cli-py", "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&output).expect("json");
    let causes: Vec<&str> = list.as_array().expect("list").iter().filter_map(|d| d["cause"].as_str()).collect();
    assert_eq!(causes, ["rollback to v1", "rollback to v2", "redeploy", "env: set GREETING", "push"]);

    // Scale to two web instances: both serve, round-robin.
    let (ok, output) = cli(&server, &ada.token, &["scale", "-p", "cli-py", "web=2"]);
    assert!(ok, "{output}");
    let (ok, output) = cli(&server, &ada.token, &["ps", "-p", "cli-py", "--json"]);
    assert!(ok);
    let ps: Value = serde_json::from_str(&output).expect("json");
    let names: Vec<&str> = ps.as_array().expect("ps").iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, ["web.1", "web.2"], "{ps}");
    for _ in 0..4 {
        assert_eq!(server.app_get("cli-py", "/").0, 200);
    }
    let (ok, output) = cli(&server, &ada.token, &["scale", "-p", "cli-py", "worker=1"]);
    assert!(!ok && output.contains("no process type \"worker\""), "{output}");
    let (ok, output) = cli(&server, &ada.token, &["scale", "-p", "cli-py", "web=1"]);
    assert!(ok, "{output}");
    let (_, output) = cli(&server, &ada.token, &["ps", "-p", "cli-py"]);
    assert!(output.contains("web.1") && !output.contains("web.2"), "{output}");

    // `logs -f` streams lines as they come.
    let mut follower = Command::new(paastech_bin())
        .args(["logs", "-f", "-n", "0", "-p", "cli-py"])
        .env("PAASTECH_SERVER", server.api_url())
        .env("PAASTECH_TOKEN", &ada.token)
        .stdout(Stdio::piped())
        .spawn()
        .expect("paastech logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.app_get("cli-py", "/?from=follow").0, 404);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("web.1") && line.contains("from=follow") => break,
            Ok(line) => seen.push(line),
            Err(_) => {}
        }
    }
    assert!(std::time::Instant::now() < deadline, "no followed line for the request; saw {seen:?}");
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn two_pushes_to_one_project_never_build_at_once() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "busy"})));
    assert_eq!(status, 201, "{body}");
    // A slow build: a Procfile app whose build step (pip) is preceded by a sleeping hook
    // is not available on the process builder, so make two repos push concurrently and
    // check that their builds do not overlap in the log.
    let a =
        GitRepo::from_dir(&server.dir.path().join("a"), &example("python-hello"), &ada.key, server.ssh_port, "busy");
    let b =
        GitRepo::from_dir(&server.dir.path().join("b"), &example("python-hello"), &ada.key, server.ssh_port, "busy");
    b.write("README.md", "second\n");
    b.commit_all("second");
    // Both start from nothing: b force-pushes so it never needs a's history.
    let pa = std::thread::spawn(move || a.push("main"));
    let pb = std::thread::spawn(move || b.push("+main"));
    let (ra, rb) = (pa.join().expect("push a"), pb.join().expect("push b"));
    let waited = [&ra.1, &rb.1].iter().filter(|o| o.contains("Another deploy of busy is running; waiting")).count();
    assert!(ra.0 || rb.0, "at least one push goes through: {ra:?} {rb:?}");
    assert_eq!(waited, 1, "exactly one push waited:\n{}\n---\n{}", ra.1, rb.1);
    let (_, list) = server.api().req("GET", "/projects/busy/deployments", Some(&ada.token), None);
    let list = list.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(eventually(Duration::from_secs(5), || server.app_get("busy", "/").0 == 200));
}

/// `paastech run -- CMD…`: (exit code, stdout, stderr).
fn run(server: &Server, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let output = paastech(server, token, &[&["run"], args].concat());
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn one_off_commands_run_in_the_live_deployment() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    assert!(cli(&server, &ada.token, &["projects", "create", "run-py"]).0);
    let (code, _, stderr) = run(&server, &ada.token, &["-p", "run-py", "--", "python3", "-V"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("run-py has nothing live to run in: git push first"), "{stderr}");

    let repo = GitRepo::from_dir(
        &server.dir.path().join("repo"),
        &example("python-hello"),
        &ada.key,
        server.ssh_port,
        "run-py",
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}");
    let (ok, output) = cli(&server, &ada.token, &["env", "set", "-p", "run-py", "GREETING=hey"]);
    assert!(ok, "{output}");

    // In the release (its venv's `python` first on PATH), with the live config; stdout and
    // stderr come back, and so does the exit code. The argv reaches the app as it is.
    let script = "import os, sys; print(os.environ['GREETING'], os.environ['PAASTECH_VERSION'], \
                  os.path.exists('app.py'), sys.argv[1:]); print('to stderr', file=sys.stderr); sys.exit(4)";
    let (code, stdout, stderr) =
        run(&server, &ada.token, &["-p", "run-py", "--", "python", "-c", script, "$HOME", "a b;c"]);
    assert_eq!(code, Some(4), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("hey 2 True ['$HOME', 'a b;c']"), "{stdout}");
    assert!(stdout.contains("to stderr"), "{stdout}");
    let (code, stdout, _) = run(&server, &ada.token, &["-p", "run-py", "--json", "--", "sh", "-c", "echo $GREETING"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout, "{\"line\":\"hey\"}\n{\"exit_code\":0}\n");
    let (code, _, stderr) = run(&server, &ada.token, &["-p", "run-py", "--", "no-such-program"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no-such-program"), "{stderr}");

    // A one-off command is no instance, and others' projects stay out of reach.
    let (_, output) = cli(&server, &ada.token, &["ps", "-p", "run-py"]);
    assert!(output.contains("web.1") && !output.lines().any(|l| l.starts_with("run")), "{output}");
    let eve = server.developer("eve@example.com");
    let (code, _, stderr) = run(&server, &eve.token, &["-p", "run-py", "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not found"), "{stderr}");
    let api = server.api();
    let (status, body) = api.req("POST", "/projects/run-py/run", Some(&ada.token), Some(json!({"command": []})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("command")), "{body}");
}
