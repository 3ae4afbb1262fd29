//! Issue #2: the `paastech` CLI and `paastech server`'s configuration checks, run as real
//! processes.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use paastech_tests::{GitRepo, Server, example, failed, ok, paastech_bin, ssh_keygen};
use serde_json::Value;

#[test]
fn cli_journey_signup_login_keys_projects_env() {
    let server = Server::start("");
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let pw = Some("correct horse battery\n");

    let out = ok(&server.cli(home, &["signup", "--email", "ada@example.com", "--password-stdin"], pw));
    assert!(out.contains("ada@example.com") && out.contains("admin"), "{out}");
    let err = failed(&server.cli(home, &["whoami"], None));
    assert!(err.contains("paastech login"), "tells how to log in: {err}");
    let err =
        failed(&server.cli(home, &["login", "--email", "ada@example.com", "--password-stdin"], Some("bad password\n")));
    assert!(err.contains("wrong email or password"), "{err}");
    ok(&server.cli(home, &["login", "--email", "ada@example.com", "--password-stdin"], pw));

    let saved = home.join(".config/paastech/login.json");
    let mode = std::fs::metadata(&saved).expect("saved login").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the saved login is private");
    let out = ok(&server.cli(home, &["whoami"], None));
    assert!(out.contains("ada@example.com (admin)"), "{out}");

    // `keys add` with no path takes ~/.ssh/id_ed25519.pub.
    std::fs::create_dir_all(home.join(".ssh")).expect("~/.ssh");
    ssh_keygen(&home.join(".ssh"), "id_ed25519");
    let out = ok(&server.cli(home, &["keys", "add"], None));
    assert!(out.contains("SHA256:"), "{out}");
    let keys: Value = serde_json::from_str(&ok(&server.cli(home, &["keys", "list", "--json"], None))).expect("json");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    let out = ok(&server.cli(home, &["keys", "list"], None));
    assert!(out.starts_with("ID") && out.contains("FINGERPRINT"), "a table: {out}");

    let out = ok(&server.cli(home, &["projects", "create", "cli-app"], None));
    assert!(out.contains("git remote add paastech ssh://git@127.0.0.1:"), "{out}");
    let err = failed(&server.cli(home, &["projects", "create", "Bad_Name"], None));
    assert!(err.contains("lowercase letters"), "{err}");
    let projects: Value =
        serde_json::from_str(&ok(&server.cli(home, &["projects", "list", "--json"], None))).expect("json");
    assert_eq!(projects[0]["name"], "cli-app", "{projects}");

    ok(&server.cli(home, &["env", "set", "-p", "cli-app", "GREETING=hi there", "MODE=prod"], None));
    ok(&server.cli(home, &["env", "unset", "-p", "cli-app", "MODE"], None));
    let out = ok(&server.cli(home, &["env", "list", "-p", "cli-app"], None));
    assert_eq!(out.trim(), "GREETING=hi there");
    let err = failed(&server.cli(home, &["env", "set", "-p", "cli-app", "NOEQUALS"], None));
    assert!(err.contains("KEY=value"), "{err}");

    // The project of the `paastech` git remote is the default.
    let repo = home.join("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    let git =
        |args: &[&str]| assert!(Command::new("git").args(args).current_dir(&repo).status().expect("git").success());
    git(&["init", "-q"]);
    git(&["remote", "add", "paastech", &format!("ssh://git@127.0.0.1:{}/cli-app.git", server.ssh_port)]);
    let out = paastech_tests::cli(&repo, &server.api_url(), &["env", "list"], None);
    // HOME is the repo here, so no saved login: the error is about the login, not the project.
    assert!(String::from_utf8_lossy(&out.stderr).contains("login"), "{out:?}");
    let token = serde_json::from_str::<Value>(&std::fs::read_to_string(&saved).expect("login")).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let out = Command::new(paastech_bin())
        .args(["projects", "info"])
        .current_dir(&repo)
        .env("PAASTECH_SERVER", server.api_url())
        .env("PAASTECH_TOKEN", &token)
        .output()
        .expect("paastech");
    assert!(ok(&out).contains("cli-app"));

    let out = ok(&server.cli(home, &["deployments", "-p", "cli-app", "--json"], None));
    assert_eq!(out.trim(), "[]");
    ok(&server.cli(home, &["projects", "delete", "cli-app", "--yes"], None));
    let err = failed(&server.cli(home, &["projects", "info", "-p", "cli-app"], None));
    assert!(err.contains("not found"), "{err}");

    ok(&server.cli(home, &["logout"], None));
    assert!(!saved.exists());
}

/// Issue #13: `paastech nodes` prints the runtime's machines and what runs on each; only
/// for admins.
#[test]
fn nodes_lists_the_machines_and_their_instances_for_admins() {
    let server = Server::start("");
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let ada = server.developer("ada@example.com");
    let bob = server.api().user("bob@example.com");
    let (status, body) =
        server.api().req("POST", "/projects", Some(&ada.token), Some(serde_json::json!({"name": "site"})));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());

    let out = ok(&server.cli(home, &["nodes", "--token", &ada.token], None));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["ID", "HOSTNAME", "ADDRESS", "ROLE", "STATE", "AVAILABILITY", "INSTANCES"], "{out}");
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        (row.first(), row.get(2..7)),
        (Some(&"local"), Some(&["-", "local", "ready", "active", "site/web.1"][..])),
        "{out}"
    );
    assert_eq!(lines.next(), None, "one machine: {out}");

    let nodes: Value =
        serde_json::from_str(&ok(&server.cli(home, &["nodes", "--json", "--token", &ada.token], None))).expect("json");
    assert_eq!(nodes[0]["instances"][0]["project"], "site", "{nodes}");
    assert_eq!(nodes[0]["instances"][0]["state"], "running", "{nodes}");

    let err = failed(&server.cli(home, &["nodes", "--token", &bob], None));
    assert!(err.contains("only admins may list nodes"), "{err}");
}

#[test]
fn completions_are_printed() {
    let out = Command::new(paastech_bin()).args(["completions", "bash"]).output().expect("paastech");
    assert!(ok(&out).contains("paastech"));
}

fn check(config: &str) -> Output {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("paastech.toml");
    std::fs::write(&path, config).expect("config");
    Command::new(paastech_bin()).args(["server", "--config"]).arg(&path).output().expect("paastech server")
}

#[test]
fn config_errors_stop_the_server_naming_key_file_and_line() {
    let cases = [
        ("[api]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n", "paastech.toml:3:", "lisen"),
        ("[ingress]\ndomain = 5\n", "paastech.toml:2:", "string"),
        ("[runtime]\ndriver = \"kubernetes\"\n", "paastech.toml:2:", "kubernetes"),
        ("[runtime]\ndriver = \"process\"\nshiny = true\n", "paastech.toml:3:", "shiny"),
        ("[build]\ndriver = \"nope\"\n", "paastech.toml:2:", "known drivers: docker, podman, process"),
        ("[database]\nurl = \"mysql://x\"\n", "", "sqlite"),
        ("[build]\nkeep_builds = 1\n", "paastech.toml:2:", "keep_builds"),
        ("this is not toml\n", "paastech.toml:1:", ""),
    ];
    for (config, location, needle) in cases {
        let output = check(config);
        let stderr = failed(&output);
        assert!(stderr.contains(location), "{config:?}: {stderr}");
        assert!(stderr.contains(needle), "{config:?}: {stderr}");
        assert!(!stderr.contains("server started"), "nothing listened: {stderr}");
    }
}

#[test]
fn server_check_validates_without_starting() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "[runtime]\ndriver = \"process\"\n").expect("config");
    let out = Command::new(paastech_bin()).args(["server", "--check", "--config"]).arg(&path).output().expect("run");
    assert!(ok(&out).contains("valid"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[runtime]\ndriver = \"nope\"\n").expect("config");
    let out = Command::new(paastech_bin()).args(["server", "--check", "--config"]).arg(&bad).output().expect("run");
    assert!(failed(&out).contains("bad.toml:2:"));
    let out = Command::new(paastech_bin())
        .args(["server", "--check", "--config", "/nonexistent/x.toml"])
        .output()
        .expect("run");
    assert!(failed(&out).contains("/nonexistent/x.toml"));
}
