//! Issue #15 (platform backup): `paastech server backup` of a running server with two live
//! projects, `paastech server restore` into a new, empty data directory, and the server
//! started on it: both projects serve again, their config (sealed under the restored key)
//! is there, and git over SSH pushes and fetches as before, with the same host key.

use std::process::{Command, Stdio};
use std::time::Duration;

use paastech_tests::{GitRepo, Server, eventually, example, paastech_bin};
use serde_json::json;

fn server_command(config: &std::path::Path, verb: &str) -> Command {
    let mut command = Command::new(paastech_bin());
    command.args(["server", verb, "--config"]).arg(config);
    command
}

/// The SSH host key's public half as the server shows it to clients.
fn host_key(port: u16) -> String {
    let out = Command::new("ssh-keyscan").args(["-p", &port.to_string(), "-t", "ed25519", "127.0.0.1"]).output();
    let out = out.expect("ssh-keyscan");
    String::from_utf8_lossy(&out.stdout).lines().find(|l| !l.starts_with('#')).unwrap_or_default().to_owned()
}

#[test]
fn a_backup_restored_into_an_empty_data_dir_serves_every_project_again() {
    let mut server = Server::start("");
    let api = server.api();
    let ada = server.developer("ada@example.com");
    for name in ["py", "site"] {
        let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": name})));
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) =
        api.req("PATCH", "/projects/py/env", Some(&ada.token), Some(json!({"GREETING": "restored hello"})));
    assert_eq!(status, 200, "{body}");
    let py =
        GitRepo::from_dir(&server.dir.path().join("py"), &example("python-hello"), &ada.key, server.ssh_port, "py");
    let site =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    for repo in [&py, &site] {
        let (pushed, output) = repo.push("main");
        assert!(pushed, "{output}\n{}", server.log());
    }
    let py_page = server.app_get("py", "/");
    let site_page = server.app_get("site", "/");
    assert_eq!(py_page.0, 200, "{py_page:?}");
    assert!(py_page.1.contains("restored hello"), "{py_page:?}");
    assert_eq!(site_page.0, 200, "{site_page:?}");
    let key_before = host_key(server.ssh_port);
    assert!(key_before.contains("ssh-ed25519"), "{key_before}");

    // The backup, while the server runs and serves.
    let backup = server.dir.path().join("backup.tar");
    let written = server_command(&server.config_path, "backup")
        .stdout(std::fs::File::create(&backup).expect("backup file"))
        .stderr(Stdio::piped())
        .output()
        .expect("paastech server backup");
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let listing = Command::new("tar").arg("-tf").arg(&backup).output().expect("tar -tf");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for entry in ["MANIFEST.json", "database", "secrets.key", "data/ssh_host_ed25519_key", "data/repos/py.git/HEAD"] {
        assert!(listing.lines().any(|l| l == entry), "{entry} in the backup:\n{listing}");
    }
    assert!(!listing.lines().any(|l| l.starts_with("data/run")), "no sockets of the running server:\n{listing}");

    // A new machine: the same config, another data directory.
    server.stop();
    let old_dir = server.data_dir();
    let new_dir = server.dir.path().join("restored-data");
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    let moved = config
        .replace(&format!("{:?}", old_dir.display().to_string()), &format!("{:?}", new_dir.display().to_string()));
    assert_ne!(moved, config, "the config names its data_dir");
    std::fs::write(&server.config_path, moved).expect("config");

    // Not a backup: refused, nothing made.
    let mut refused = server_command(&server.config_path, "restore")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("paastech server restore");
    {
        use std::io::Write;
        let mut stdin = refused.stdin.take().expect("stdin");
        let _ = stdin.write_all(&[b'x'; 4096]);
    }
    let refused = refused.wait_with_output().expect("restore");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a PaaSTech backup"), "{refused:?}");
    assert!(!new_dir.exists(), "a failed restore leaves no data directory behind");

    let restored = server_command(&server.config_path, "restore")
        .stdin(std::fs::File::open(&backup).expect("backup"))
        .stderr(Stdio::piped())
        .output()
        .expect("paastech server restore");
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    // Only into an empty data directory.
    let again = server_command(&server.config_path, "restore")
        .stdin(std::fs::File::open(&backup).expect("backup"))
        .stderr(Stdio::piped())
        .output()
        .expect("paastech server restore");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{again:?}");

    // The old data is gone, as on a new machine; the server starts on the restored one.
    std::fs::remove_dir_all(&old_dir).expect("removing the old data_dir");
    server.start_again();
    assert!(
        eventually(Duration::from_secs(60), || server.app_get("py", "/").1.contains("restored hello")
            && server.app_get("site", "/") == site_page),
        "both serve again: {:?} {:?}\n{}",
        server.app_get("py", "/"),
        server.app_get("site", "/"),
        server.log()
    );
    // The same login, config (sealed under the restored key) and host key.
    let (status, env) = api.req("GET", "/projects/py/env", Some(&ada.token), None);
    assert_eq!((status, env), (200, json!({"GREETING": "restored hello"})));
    assert_eq!(host_key(server.ssh_port), key_before, "the SSH host key is the backup's");

    // Pushes and fetches work unchanged.
    py.write(
        "app.py",
        &std::fs::read_to_string(example("python-hello").join("app.py"))
            .expect("app")
            .replace("from python-hello", "from python-hello after the restore"),
    );
    py.commit_all("after the restore");
    let (pushed, output) = py.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    assert!(server.app_get("py", "/").1.contains("after the restore"), "{:?}", server.app_get("py", "/"));
    let fetched = site.try_git(&["fetch", "paastech"]);
    assert!(fetched.status.success(), "{}", String::from_utf8_lossy(&fetched.stderr));
}
