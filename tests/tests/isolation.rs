//! Apps on the process runtime never run as the server's user (#17 item 2): each project
//! runs as a uid of its own, with no capability, no supplementary group and no way to
//! gain privileges, and cannot read the server's database, keys, repositories or another
//! project's release directory. The app (`tests/apps/snoop`) tries, and says what it got
//! over HTTP. The server (root here) stops every process it started, whatever its uid.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paastech_tests::{GitRepo, Server, eventually, processes_of};
use serde_json::{Value, json};

fn snoop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps").join("snoop")
}

fn whoami(server: &Server, project: &str) -> Value {
    let (status, body) = server.app_get(project, "/whoami");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("{project}'s whoami: {err}: {body}"))
}

/// What the app of `project` got trying to read `path`.
fn read(server: &Server, project: &str, path: &Path) -> String {
    let path = path.to_str().expect("utf-8 path");
    assert!(path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)), "no escaping needed: {path}");
    let (status, body) = server.app_get(project, &format!("/read?path={path}"));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn an_app_runs_as_its_own_user_and_cannot_read_the_server_or_another_project() {
    let mut server = Server::start("");
    // The test's temporary directory has whatever mode the test's umask gave it (0700
    // would alone keep every app out of everything below it by path): make it what
    // /var/lib is to /var/lib/paastech, so that what the apps cannot read is kept from
    // them by the data directory's own modes, and what they may read they can.
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let ada = server.developer("ada@example.com");
    for name in ["alpha", "beta"] {
        let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": name})));
        assert_eq!(status, 201, "{body}");
        let repo = GitRepo::from_dir(&server.dir.path().join(name), &snoop(), &ada.key, server.ssh_port, name);
        let (ok, output) = repo.push("main");
        assert!(ok, "push {name}: {output}\n{}", server.log());
    }

    let alpha = whoami(&server, "alpha");
    let beta = whoami(&server, "beta");
    let alpha_uid = alpha["uid"].as_u64().expect("uid");
    assert_ne!(alpha_uid, 0, "the app runs as root: {alpha}");
    assert_ne!(alpha["uid"], beta["uid"], "two projects share a uid");
    assert_eq!(alpha["gid"], alpha["uid"], "{alpha}");
    assert_eq!(alpha["groups"], json!([]), "supplementary groups are cleared: {alpha}");
    assert_eq!(alpha["cap_eff"], "0000000000000000", "{alpha}");
    assert_eq!(alpha["cap_amb"], "0000000000000000", "{alpha}");
    assert_eq!(alpha["no_new_privs"], "1", "{alpha}");

    let data = server.data_dir();
    let own = PathBuf::from(alpha["cwd"].as_str().expect("cwd"));
    let other = PathBuf::from(beta["cwd"].as_str().expect("cwd"));
    assert!(own.starts_with(&data) && other.starts_with(&data), "{own:?} {other:?}");
    // What must be readable is, by the same absolute path: the probe can say "readable".
    assert_eq!(read(&server, "alpha", &own), "readable");
    assert_eq!(read(&server, "alpha", &own.join("app.py")), "readable");

    let secrets = [
        data.join("paastech.db"),
        data.join("secrets").join("secrets.key"),
        data.join("ssh_host_ed25519_key"),
        data.join("repos"),
        other.clone(),
        other.join("app.py"),
        data.join("releases").join("beta"),
        data.clone(),
    ];
    for path in &secrets {
        assert!(path.exists(), "{} does not exist: the denial below would prove nothing", path.display());
        let got = read(&server, "alpha", path);
        assert!(got.starts_with("denied: Permission denied"), "alpha read {}: {got}", path.display());
    }

    // A deleted project's uid is retired and its build cache removed: a project made
    // again under its name, by someone else, starts with neither.
    let beta_uid = beta["uid"].as_u64().expect("uid");
    let beta_cache = data.join("cache").join("beta");
    assert!(beta_cache.is_dir(), "beta's build cache {} is not where this test looks", beta_cache.display());
    let (status, body) = server.api().req("DELETE", "/projects/beta", Some(&ada.token), None);
    assert!(status == 204 || status == 200, "{status} {body}");
    assert!(!beta_cache.exists(), "the deleted project's cache is left: {}", beta_cache.display());
    let bob = server.developer("bob@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&bob.token), Some(json!({"name": "beta"})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(&server.dir.path().join("beta-again"), &snoop(), &bob.key, server.ssh_port, "beta");
    let (ok, output) = repo.push("main");
    assert!(ok, "push beta again: {output}\n{}", server.log());
    let again = whoami(&server, "beta")["uid"].as_u64().expect("uid");
    assert!(
        again != beta_uid && again != alpha_uid,
        "the new beta got uid {again} (old beta {beta_uid}, alpha {alpha_uid})"
    );

    // Stopping the server stops every process it started, though none is its own uid.
    assert!(!processes_of(alpha_uid, &data).is_empty(), "alpha's app is not running as {alpha_uid}");
    server.stop();
    assert!(
        eventually(Duration::from_secs(10), || processes_of(alpha_uid, &data).is_empty()),
        "processes of uid {alpha_uid} outlived the server: {:?}",
        processes_of(alpha_uid, &data)
    );
}

/// A server that cannot switch users (not root, no capability) says so at start, in one
/// line naming what it lacks, and still starts: its apps run as itself.
#[test]
fn a_server_without_the_capabilities_says_which_isolation_it_gives() {
    use std::process::{Command, Stdio};

    let server = Server::configured("");
    let nobody = "65534";
    let chown = Command::new("chown").args(["-R", &format!("{nobody}:{nobody}")]).arg(server.dir.path()).status();
    assert!(chown.expect("chown").success());
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let log = std::fs::File::create(server.log_path()).expect("log");
    let mut child = Command::new("setpriv")
        .args(["--reuid", nobody, "--regid", nobody, "--clear-groups", "--inh-caps=-all", "--"])
        .arg(paastech_tests::paastech_bin())
        .args(["server", "--config"])
        .arg(&server.config_path)
        .env("HOME", server.dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("setpriv");
    let api = server.api();
    let ready = eventually(Duration::from_secs(30), || matches!(api.call("GET", "/healthz", None, None), Ok((200, _))));
    let _ = child.kill();
    let _ = child.wait();
    let said = server.log();
    assert!(ready, "the server did not start:\n{said}");
    let lines: Vec<&str> = said.lines().filter(|l| l.contains("app isolation")).collect();
    assert_eq!(lines.len(), 1, "{said}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(
        lines[0].contains("none between apps and the server")
            && lines[0].contains("lacks CAP_CHOWN, CAP_KILL, CAP_SETGID, CAP_SETUID")
            && lines[0].contains("run as the server's own user (uid 65534)"),
        "{}",
        lines[0]
    );
}

/// A data directory below a directory other users cannot pass (root's home, where a
/// server run from root's shell keeps it by default) would keep apps of their own uids
/// from their releases by path: the server says so and runs apps as itself, and they
/// work (a virtualenv's scripts name their interpreter by its path).
#[test]
fn a_data_dir_apps_could_not_reach_keeps_apps_on_the_servers_uid_and_says_so() {
    let mut server = Server::configured("");
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    server.start_again();
    let said = server.log();
    let line =
        said.lines().find(|l| l.contains("app isolation")).unwrap_or_else(|| panic!("no isolation line:\n{said}"));
    assert!(
        line.contains("none between apps and the server") && line.contains("which other users cannot pass"),
        "{line}"
    );

    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "venv"})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(&server.dir.path().join("venv"), &snoop(), &ada.key, server.ssh_port, "venv");
    // A line that is not a comment: a venv with pip, and pip run by its path.
    repo.write("requirements.txt", "--no-index\n");
    repo.commit_all("a venv");
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert_eq!(whoami(&server, "venv")["uid"], 0, "apps run as the server (root here)");
}
