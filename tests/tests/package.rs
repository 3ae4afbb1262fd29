//! The Debian package (#17 item 1), installed on this machine as an operator would:
//! `scripts/package-deb.sh` packages the binary this test run built, `dpkg -i` installs
//! it, `systemd-analyze verify` checks the installed unit, and the installed server is
//! started the way the unit says (no systemd runs here): its `ExecStart` line, as its
//! `User`/`Group`, with exactly its `AmbientCapabilities` and bounding set and
//! `no_new_privs`, by `setpriv`. An app pushed through it answers, runs as a uid of its own
//! and cannot read the server's database; `dpkg -r` then `dpkg -i` keeps the project and
//! the operator's config; the purge at the end leaves the machine as it was found.
//!
//! It installs system-wide (/usr/bin/paastech, the `paastech` user), so it needs root and
//! holds a lock that keeps two runs from overlapping.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use paastech_tests::{Api, GitRepo, eventually, free_port, http_get, paastech_bin, processes_of, ssh_keygen};
use serde_json::{Value, json};

const UNIT: &str = "/lib/systemd/system/paastech.service";
const CONFIG: &str = "/etc/paastech/paastech.toml";
const DATA: &str = "/var/lib/paastech";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|err| panic!("running {program}: {err}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "paastech"]).stdout.starts_with(b"install ok installed")
}

/// Purges the package (and so its data, config and user) when dropped, whatever the
/// test's outcome; stops the server first.
struct Installation {
    server: Option<Child>,
}

impl Installation {
    fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        self.stop();
        let _ = run("dpkg", &["--purge", "paastech"]);
    }
}

/// `Key=value` lines of the unit's `[Service]` section.
fn service_section(unit: &str) -> BTreeMap<String, String> {
    let mut section = "";
    let mut keys = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            keys.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    keys
}

/// `CAP_NET_BIND_SERVICE CAP_SETUID` as setpriv spells a set: `+net_bind_service,+setuid`.
fn setpriv_caps(unit_value: &str) -> String {
    unit_value
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the installed server as the unit would: its ExecStart, as its user, with its
/// capabilities only, in `/` with systemd's environment for a system service.
fn start_as_the_unit(log: &Path, api_port: u16) -> Child {
    let unit = std::fs::read_to_string(UNIT).expect("the installed unit");
    let service = service_section(&unit);
    let exec = service.get("ExecStart").expect("ExecStart in the unit");
    let user = service.get("User").expect("User in the unit");
    let group = service.get("Group").expect("Group in the unit");
    let ambient = setpriv_caps(service.get("AmbientCapabilities").expect("AmbientCapabilities in the unit"));
    let bounding = setpriv_caps(service.get("CapabilityBoundingSet").expect("CapabilityBoundingSet in the unit"));
    assert_eq!(service.get("NoNewPrivileges").map(String::as_str), Some("yes"), "{unit}");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let log = File::create(log).expect("server log");
    let child = Command::new("setpriv")
        .args(["--reuid", user, "--regid", group, "--init-groups"])
        .args(["--inh-caps", &ambient, "--ambient-caps", &ambient, "--bounding-set", &format!("-all,{bounding}")])
        .args(["--no-new-privs", "--"])
        .args(&argv)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", DATA)
        .env("USER", user)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting the installed server with setpriv");
    let api = Api { base: format!("http://127.0.0.1:{api_port}/api/v1") };
    assert!(
        eventually(Duration::from_secs(30), || matches!(api.call("GET", "/healthz", None, None), Ok((200, _)))),
        "the installed server did not answer"
    );
    child
}

fn whoami(ingress: u16, project: &str) -> Value {
    let (status, body) = http_get(ingress, &format!("{project}.localhost:{ingress}"), "/whoami");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("whoami: {err}: {body}"))
}

/// The app's uid once it answers, else `None` (while the restore starts it).
fn served_uid(ingress: u16, project: &str) -> Option<u64> {
    let (status, body) = http_get(ingress, &format!("{project}.localhost:{ingress}"), "/whoami");
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body).ok()?["uid"].as_u64()
}

fn uid_of(user: &str) -> u64 {
    ok("id", &["-u", user]).trim().parse().expect("a uid")
}

#[test]
fn the_package_installs_runs_the_server_as_its_user_and_keeps_data_across_reinstall() {
    assert_eq!(uid_of("root"), 0);
    // Two runs (two test processes, two checkouts) never install at once.
    std::fs::create_dir_all("/run/lock").expect("/run/lock");
    let lock = File::create("/run/lock/paastech-package-test.lock").expect("lock file");
    lock.lock().expect("taking the package test lock");
    if installed() {
        ok("dpkg", &["--purge", "paastech"]);
    }
    assert!(run("id", &["paastech"]).stdout.is_empty(), "a paastech user exists without the package");

    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("debian");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/package-deb.sh");
    let bin = paastech_bin().to_str().expect("utf-8 path");
    let printed = ok(script.to_str().expect("utf-8 path"), &["--binary", bin, "--out", out.to_str().expect("path")]);
    let version = env!("CARGO_PKG_VERSION");
    let deb = out.join(format!("paastech_{version}_amd64.deb"));
    assert!(printed.contains(deb.to_str().expect("path")), "{printed}");
    assert!(deb.is_file(), "{printed}");

    let mut installation = Installation { server: None };
    ok("dpkg", &["-i", deb.to_str().expect("path")]);
    ok("systemd-analyze", &["verify", UNIT]);
    assert_eq!(ok("stat", &["-c", "%U:%G %a", DATA]).trim(), "paastech:paastech 711");
    assert_eq!(ok("stat", &["-c", "%U:%G %a", CONFIG]).trim(), "root:paastech 640");
    assert_eq!(ok("/usr/bin/paastech", &["--version"]).trim(), format!("paastech {version}"));

    // The operator sets the ports (on this test machine: free ones) in the packaged config.
    let (api_port, ssh_port, ingress_port) = (free_port(), free_port(), free_port());
    let mut config = std::fs::read_to_string(CONFIG).expect("packaged config");
    assert!(config.contains("data_dir = \"/var/lib/paastech\""), "{config}");
    config.push_str(&format!(
        "\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n[ssh]\nlisten = \"127.0.0.1:{ssh_port}\"\n\
         [ingress]\nlisten = \"127.0.0.1:{ingress_port}\"\ndomain = \"localhost\"\n"
    ));
    std::fs::write(CONFIG, &config).expect("editing the config");
    ok("/usr/bin/paastech", &["server", "--check", "--config", CONFIG]);

    let log = work.path().join("server.log");
    installation.server = Some(start_as_the_unit(&log, api_port));
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        server_log().contains("app isolation: each project's builds and processes run as a uid of its own"),
        "{}",
        server_log()
    );

    let api = Api { base: format!("http://127.0.0.1:{api_port}/api/v1") };
    let token = api.user("ada@example.com");
    let (key, public) = ssh_keygen(work.path(), "ada_key");
    let (status, body) = api.req("POST", "/ssh-keys", Some(&token), Some(json!({"public_key": public})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "snoop"})));
    assert_eq!(status, 201, "{body}");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/snoop");
    let repo = GitRepo::from_dir(&work.path().join("repo"), &source, &key, ssh_port, "snoop");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "push: {output}\n{}", server_log());

    // The app runs as its project's uid: not root, not the server's, nothing to escalate.
    let me = whoami(ingress_port, "snoop");
    let server_uid = uid_of("paastech");
    let app_uid = me["uid"].as_u64().expect("uid");
    assert!(app_uid != 0 && app_uid != server_uid, "{me}");
    assert_eq!(me["cap_eff"], "0000000000000000", "{me}");
    assert_eq!(me["cap_amb"], "0000000000000000", "{me}");
    assert_eq!(me["no_new_privs"], "1", "{me}");
    let (_, read) =
        http_get(ingress_port, &format!("snoop.localhost:{ingress_port}"), "/read?path=/var/lib/paastech/paastech.db");
    assert!(read.starts_with("denied: Permission denied"), "the app read the database: {read}");
    assert_eq!(ok("stat", &["-c", "%a", "/var/lib/paastech/paastech.db"]).trim(), "600");

    // Removed and installed again: the data and the operator's config are still there.
    installation.stop();
    assert!(
        eventually(Duration::from_secs(10), || processes_of(app_uid, Path::new("/var/lib/paastech")).is_empty()),
        "the app outlived the server that started it"
    );
    ok("dpkg", &["-r", "paastech"]);
    assert!(!Path::new("/usr/bin/paastech").exists(), "the binary stays after dpkg -r");
    assert!(Path::new("/var/lib/paastech/paastech.db").exists(), "dpkg -r removed the data");
    ok("dpkg", &["-i", deb.to_str().expect("path")]);
    assert_eq!(std::fs::read_to_string(CONFIG).expect("config"), config, "the operator's config was replaced");
    installation.server = Some(start_as_the_unit(&log, api_port));
    let token = api.login("ada@example.com", paastech_tests::web::PASSWORD);
    let (status, body) = api.req("GET", "/projects/snoop", Some(&token), None);
    assert_eq!(status, 200, "the project is gone after reinstall: {body}");
    assert!(
        eventually(Duration::from_secs(30), || served_uid(ingress_port, "snoop") == Some(app_uid)),
        "the app is not served again as its uid after reinstall:\n{}",
        server_log()
    );

    // The purge (also on failure, by the guard) takes data, config and user.
    installation.stop();
    ok("dpkg", &["--purge", "paastech"]);
    assert!(!Path::new(DATA).exists() && !Path::new("/etc/paastech").exists());
    assert!(run("id", &["paastech"]).stdout.is_empty(), "the user stays after purge");
    drop(installation);
    drop(lock);
}
