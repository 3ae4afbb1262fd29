//! Issue #3 journeys: the real `git` over real SSH to a real server process, the app served
//! through the real ingress, on the embedded default (local processes + SQLite).

use std::process::Command;
use std::time::Duration;

use paastech_tests::{GitRepo, Server, eventually, example, ssh_command};
use serde_json::{Value, json};

fn create_project(server: &Server, token: &str, name: &str) {
    let (status, body) = server.api().req("POST", "/projects", Some(token), Some(json!({"name": name})));
    assert_eq!(status, 201, "{body}");
}

fn deployments(server: &Server, token: &str, project: &str) -> Vec<Value> {
    let (status, body) = server.api().req("GET", &format!("/projects/{project}/deployments"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

#[test]
fn python_app_push_env_broken_push_rollback_and_restart() {
    let mut server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "py-app");
    let (status, page) = server.app_get("py-app", "/");
    assert_eq!(status, 503, "nothing live yet: {page}");

    let repo =
        GitRepo::from_dir(&server.dir.path().join("py"), &example("python-hello"), &ada.key, server.ssh_port, "py-app");
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    assert!(output.contains("remote: -----> Building py-app v1"), "build log streams back: {output}");
    let url = format!("http://py-app.localhost:{}", server.ingress_port);
    assert!(
        output.contains(&format!("remote: -----> Deployed py-app v1: {url}")),
        "ends with version and URL: {output}"
    );
    let (status, body) = server.app_get("py-app", "/");
    assert_eq!((status, body.trim()), (200, "hello from python-hello (version 1)"));
    let list = deployments(&server, &ada.token, "py-app");
    assert_eq!(list[0]["status"], "live");
    assert_eq!(list[0]["commit"], repo.head());

    // An env change makes v2 and reaches the app.
    let (status, env) =
        server.api().req("PATCH", "/projects/py-app/env", Some(&ada.token), Some(json!({"GREETING": "bonjour"})));
    assert_eq!((status, env), (200, json!({"GREETING": "bonjour"})));
    assert_eq!(server.app_get("py-app", "/").1.trim(), "bonjour from python-hello (version 2)");

    // A push whose app dies at start is rejected; v2 keeps serving.
    repo.write("app.py", "import sys\nprint('boom: missing config', flush=True)\nsys.exit(3)\n");
    repo.commit_all("broken");
    let (ok, output) = repo.push("main");
    assert!(!ok, "a broken app must fail the push: {output}");
    assert!(output.contains("web.1"), "the reason names the process: {output}");
    assert_eq!(server.app_get("py-app", "/").1.trim(), "bonjour from python-hello (version 2)");
    let list = deployments(&server, &ada.token, "py-app");
    assert_eq!((list[0]["version"].as_i64(), list[0]["status"].as_str()), (Some(3), Some("failed")));
    assert_eq!(list[1]["status"], "live");

    // A fixed push goes live as v4; other branches are stored without a deploy.
    repo.git(&["checkout", "-q", "HEAD~1", "--", "app.py"]);
    repo.write(
        "app.py",
        &std::fs::read_to_string(example("python-hello").join("app.py"))
            .expect("app")
            .replace("from python-hello", "from v4"),
    );
    repo.commit_all("fixed");
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}");
    assert_eq!(server.app_get("py-app", "/").1.trim(), "bonjour from v4 (version 4)");
    let (ok, output) = repo.push("main:refs/heads/feature");
    assert!(ok && output.contains("only main (or master) deploys"), "{output}");
    assert_eq!(deployments(&server, &ada.token, "py-app").len(), 4);

    // Rollback to v1: its code and its config (no GREETING).
    let (status, body) =
        server.api().req("POST", "/projects/py-app/deployments", Some(&ada.token), Some(json!({"version": 1})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.app_get("py-app", "/").1.trim(), "hello from python-hello (version 5)");
    assert_eq!(server.api().req("GET", "/projects/py-app/env", Some(&ada.token), None).1, json!({}));
    let list = deployments(&server, &ada.token, "py-app");
    assert_eq!((list[0]["status"].as_str(), list[0]["cause"].as_str()), (Some("live"), Some("rollback to v1")));

    // The app's own output is in its log.
    let (status, logs) = server.api().req("GET", "/projects/py-app/logs?lines=200", Some(&ada.token), None);
    assert_eq!(status, 200);
    let logs = logs.as_str().unwrap_or_default().to_owned();
    assert!(logs.contains("web.1: python-hello listening"), "{logs}");
    assert!(logs.contains("\"GET / HTTP/1.1\" 200"), "{logs}");

    // After a restart the live version serves again without a push.
    server.restart();
    assert!(
        eventually(Duration::from_secs(20), || server.app_get("py-app", "/").1.trim()
            == "hello from python-hello (version 5)"),
        "the app serves again after a restart:\n{}",
        server.log()
    );
    let (_, ps) = server.api().req("GET", "/projects/py-app/ps", Some(&ada.token), None);
    assert_eq!(ps[0]["name"], "web.1", "{ps}");
    assert_eq!(ps[0]["state"], "running", "{ps}");
}

#[test]
fn node_and_static_apps_are_served() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "node-app");
    create_project(&server, &ada.token, "site");
    let node = GitRepo::from_dir(
        &server.dir.path().join("node"),
        &example("node-hello"),
        &ada.key,
        server.ssh_port,
        "node-app",
    );
    let site =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    let (ok, output) = node.push("main");
    assert!(ok, "{output}\n{}", server.log());
    let (status, body) = server.app_get("node-app", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from node-hello"), "{body}");
    let (ok, output) = site.push("main");
    assert!(ok, "{output}\n{}", server.log());
    let (status, body) = server.app_get("site", "/");
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read_to_string(example("static-hello").join("index.html")).expect("index"));
    let (status, _) = server.app_get("site", "/style.css");
    assert_eq!(status, 200);
    let (status, _) = server.app_get("nothing-here", "/");
    assert_eq!(status, 404);
}

#[test]
fn a_failed_build_rejects_the_push_with_the_reason() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "nothing");
    let dir = server.dir.path().join("empty");
    let repo = GitRepo::from_dir(&dir, &example("static-hello"), &ada.key, server.ssh_port, "nothing");
    repo.git(&["rm", "-q", "index.html", "style.css", "README.md"]);
    repo.write("notes.txt", "no app here\n");
    repo.commit_all("not an app");
    let (ok, output) = repo.push("main");
    assert!(!ok, "{output}");
    assert!(output.contains("Procfile") && output.contains("package.json"), "lists what was looked for: {output}");
    let list = deployments(&server, &ada.token, "nothing");
    assert_eq!(list[0]["status"], "failed");
    // The ref did not move: the server's main is still absent.
    let output = repo.try_git(&["ls-remote", "paastech"]);
    assert!(String::from_utf8_lossy(&output.stdout).trim().is_empty(), "{output:?}");
}

#[test]
fn ssh_allows_only_git_for_the_owner() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    let eve = server.developer("eve@example.com");
    create_project(&server, &ada.token, "private");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("ada"),
        &example("static-hello"),
        &ada.key,
        server.ssh_port,
        "private",
    );
    assert!(repo.push("main").0);

    // Eve can neither push to nor fetch Ada's project.
    let eve_repo = GitRepo::from_dir(
        &server.dir.path().join("eve"),
        &example("static-hello"),
        &eve.key,
        server.ssh_port,
        "private",
    );
    let (ok, output) = eve_repo.push("main");
    assert!(!ok && output.contains("project not found or access denied"), "{output}");
    let clone = Command::new("git")
        .args(["clone", "-q", &format!("ssh://git@127.0.0.1:{}/private.git", server.ssh_port)])
        .arg(server.dir.path().join("eve-clone"))
        .env("GIT_SSH_COMMAND", ssh_command(&eve.key, server.ssh_port))
        .output()
        .expect("git clone");
    assert!(!clone.status.success());
    assert!(String::from_utf8_lossy(&clone.stderr).contains("project not found or access denied"));

    // Ada can clone her own.
    let clone = Command::new("git")
        .args(["clone", "-q", &format!("ssh://git@127.0.0.1:{}/private.git", server.ssh_port)])
        .arg(server.dir.path().join("ada-clone"))
        .env("GIT_SSH_COMMAND", ssh_command(&ada.key, server.ssh_port))
        .output()
        .expect("git clone");
    assert!(clone.status.success(), "{clone:?}");
    assert!(server.dir.path().join("ada-clone/index.html").exists());

    // Anything but git is refused.
    let ssh = |args: &[&str]| {
        let mut command = Command::new("ssh");
        command.args(["-i"]).arg(&ada.key).args([
            "-p",
            &server.ssh_port.to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-T",
            "git@127.0.0.1",
        ]);
        command.args(args).output().expect("ssh")
    };
    for command in [&["ls", "/"][..], &["git-receive-pack 'private.git'; id"], &["sh", "-c", "id"]] {
        let output = ssh(command);
        assert!(!output.status.success(), "{command:?} must be refused");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("uid="), "{command:?} ran");
    }
    let output = ssh(&[]);
    assert!(!output.status.success(), "no shell");
}

/// App processes are children of the server: after the server is killed (a crash, the OOM
/// killer), its next start stops the orphans before starting the live deployments again.
#[test]
fn a_killed_server_leaves_no_orphan_app_running() {
    let mut server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "orphans");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("site"),
        &example("static-hello"),
        &ada.key,
        server.ssh_port,
        "orphans",
    );
    assert!(repo.push("main").0);
    let release = server.data_dir().join("releases").join("orphans");
    let apps = || -> Vec<String> {
        let output = Command::new("pgrep").args(["-f", &release.display().to_string()]).output().expect("pgrep");
        String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect()
    };
    let before = apps();
    assert!(!before.is_empty(), "the static server runs");

    server.kill();
    assert_eq!(apps(), before, "the orphan outlives a killed server");
    server.start_again();
    assert!(
        eventually(Duration::from_secs(20), || server.app_get("orphans", "/").0 == 200),
        "served again:\n{}",
        server.log()
    );
    let after = apps();
    assert!(!after.is_empty(), "a new instance runs");
    assert!(after.iter().all(|pid| !before.contains(pid)), "the orphans {before:?} were stopped: {after:?}");
}

/// Old builds' artifacts are removed once `keep_builds` newer ones exist: disk use stays
/// bounded, and a rollback to a removed build says why it cannot be done.
#[test]
fn old_builds_are_pruned_and_say_so() {
    let server = Server::start("[build]\nkeep_builds = 2\n");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "pruned");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("site"),
        &example("static-hello"),
        &ada.key,
        server.ssh_port,
        "pruned",
    );
    assert!(repo.push("main").0);
    for round in 2..=3 {
        repo.write("index.html", &format!("<h1>round {round}</h1>\n"));
        repo.commit_all(&format!("round {round}"));
        let (ok, output) = repo.push("main");
        assert!(ok, "{output}");
    }
    let releases = server.data_dir().join("releases").join("pruned");
    assert!(!releases.join("v1").exists(), "v1's release directory was removed");
    assert!(releases.join("v2").exists() && releases.join("v3").exists(), "the newest two are kept");
    let (status, body) =
        server.api().req("POST", "/projects/pruned/deployments", Some(&ada.token), Some(json!({"version": 1})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("removed to save space"), "{body}");
    let (status, body) =
        server.api().req("POST", "/projects/pruned/deployments", Some(&ada.token), Some(json!({"version": 2})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.app_get("pruned", "/").1, "<h1>round 2</h1>\n");
}

/// The pids of the `paastech internal serve-static DIR` processes serving a release of
/// `project` (their DIR is the release directory, which holds the project's name).
fn static_server_pids(server: &Server, project: &str) -> Vec<u32> {
    // This server's only: another test running beside this one may have a "site" too.
    let releases = format!("{}/releases/{project}/", server.data_dir().display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.get(1..3) == Some(&["internal".to_owned(), "serve-static".to_owned()][..])
            && args.get(3).is_some_and(|dir| dir.starts_with(&releases))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Keeps processes stopped (SIGSTOP) until dropped, so a test failing midway leaves none
/// frozen.
struct Frozen(Vec<u32>);

impl Frozen {
    fn new(pids: Vec<u32>) -> Self {
        for pid in &pids {
            let status = Command::new("kill").args(["-STOP", &pid.to_string()]).status().expect("kill");
            assert!(status.success(), "stopping {pid}");
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
    }
}

#[test]
fn a_static_site_is_served_by_the_ingress_and_a_push_serves_its_new_files_at_once() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "site");
    let site =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    let (ok, output) = site.push("main");
    assert!(ok, "{output}\n{}", server.log());
    let v1 = std::fs::read_to_string(example("static-hello").join("index.html")).expect("index");
    assert_eq!(server.app_get("site", "/"), (200, v1.clone()));

    // The ingress answers from the files itself: with the static server process frozen
    // (a proxied request would wait for it), the site is still served.
    let pids = static_server_pids(&server, "site");
    assert_eq!(pids.len(), 1, "one web instance serves the site: {pids:?}");
    {
        let _frozen = Frozen::new(pids);
        assert_eq!(server.app_get("site", "/"), (200, v1.clone()));
        assert_eq!(server.app_get("site", "/style.css").0, 200);
    }

    // A new deployment is a new directory: its files are served as soon as the push
    // returns, never the old cached ones.
    site.write("index.html", "<h1>version two</h1>\n");
    site.commit_all("version two");
    let (ok, output) = site.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert_eq!(server.app_get("site", "/"), (200, "<h1>version two</h1>\n".to_owned()));
    let _frozen = Frozen::new(static_server_pids(&server, "site"));
    assert_eq!(server.app_get("site", "/"), (200, "<h1>version two</h1>\n".to_owned()));
}
