//! Issue #14 journeys: the Procfile's `release:` command, through the real `git` over real
//! SSH to a real server on local processes. The release step appends a line to a file in a
//! directory the project's config names; the web process serves that file as it read it at
//! start, so what it serves shows which releases ran before it started, and with which
//! config.

use std::path::Path;

use paastech_tests::{GitRepo, Server, example};
use serde_json::{Value, json};

/// Serves, on `/`, the releases file as it was when the process started.
const APP: &str = r#"import http.server, os

with open(os.path.join(os.environ["MARKER_DIR"], "releases")) as f:
    SEEN = f.read().encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(SEEN)))
        self.end_headers()
        self.wfile.write(SEEN)


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

const PROCFILE: &str = "web: python3 app.py\n\
    release: echo \"migrating v$PAASTECH_VERSION\" && echo \"v$PAASTECH_VERSION $GREETING\" >> \"$MARKER_DIR/releases\"\n";

fn deployments(server: &Server, token: &str, project: &str) -> Vec<Value> {
    let (status, body) = server.api().req("GET", &format!("/projects/{project}/deployments"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

fn releases(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("releases")).unwrap_or_default()
}

#[test]
fn the_release_command_runs_once_per_new_release_before_the_app_starts() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "rel"})));
    assert_eq!(status, 201, "{body}");
    let markers = tempfile::tempdir().expect("marker dir");
    // The app runs as its project's own uid, not the test's: it may write here.
    std::fs::set_permissions(markers.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod");
    let marker_dir = markers.path().display().to_string();
    let env = json!({"MARKER_DIR": marker_dir, "GREETING": "one"});
    let (status, body) = server.api().req("PATCH", "/projects/rel/env", Some(&ada.token), Some(env));
    assert_eq!(status, 200, "{body}");

    let repo =
        GitRepo::from_dir(&server.dir.path().join("rel"), &example("python-hello"), &ada.key, server.ssh_port, "rel");
    repo.write("app.py", APP);
    repo.write("Procfile", PROCFILE);
    repo.commit_all("a release step");
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    for expected in [
        "remote: -----> Running release command: echo",
        "remote: migrating v1",
        "remote: -----> Release command exited with code 0",
    ] {
        assert!(output.contains(expected), "{expected:?} is not in the push's output:\n{output}");
    }
    assert_eq!(server.app_get("rel", "/"), (200, "v1 one\n".to_owned()), "it ran before web started");

    // A config change is a new release: the step runs again with the new config.
    let (status, body) =
        server.api().req("PATCH", "/projects/rel/env", Some(&ada.token), Some(json!({"GREETING": "two"})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.app_get("rel", "/"), (200, "v1 one\nv2 two\n".to_owned()));

    // A failing step rejects the push with its output; v2 keeps serving.
    repo.write("Procfile", "web: python3 app.py\nrelease: echo 'cannot migrate: table is locked' && exit 3\n");
    repo.commit_all("a failing release step");
    let (ok, output) = repo.push("main");
    assert!(!ok, "a failing release step must fail the push: {output}");
    assert!(output.contains("remote: cannot migrate: table is locked"), "the step's output: {output}");
    assert!(output.contains("exited with code 3"), "the exit code: {output}");
    assert_eq!(server.app_get("rel", "/"), (200, "v1 one\nv2 two\n".to_owned()));
    let list = deployments(&server, &ada.token, "rel");
    assert_eq!((list[0]["version"].as_i64(), list[0]["status"].as_str()), (Some(3), Some("failed")), "{list:?}");
    assert_eq!(list[1]["status"], "live");

    // One whose program is missing never starts: the push is rejected the same way.
    repo.write("Procfile", "web: python3 app.py\nrelease: no-such-migrate-tool --up\n");
    repo.commit_all("a release step whose program is missing");
    let (ok, output) = repo.push("main");
    assert!(!ok, "a release step that cannot start must fail the push: {output}");
    assert!(output.contains("no-such-migrate-tool") && output.contains("exited with code 127"), "{output}");
    assert_eq!(server.app_get("rel", "/"), (200, "v1 one\nv2 two\n".to_owned()));

    // A rollback does not run it: the file keeps its two lines.
    let (status, body) =
        server.api().req("POST", "/projects/rel/deployments", Some(&ada.token), Some(json!({"version": 1})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.app_get("rel", "/"), (200, "v1 one\nv2 two\n".to_owned()));
    assert_eq!(releases(markers.path()), "v1 one\nv2 two\n");

    // It is no process type: nothing runs as `release`, and it cannot be scaled.
    let (_, ps) = server.api().req("GET", "/projects/rel/ps", Some(&ada.token), None);
    let names: Vec<&str> = ps.as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["web.1"], "{ps}");
    let (status, body) = server.api().req("PUT", "/projects/rel/scale", Some(&ada.token), Some(json!({"release": 1})));
    assert_eq!(status, 400, "{body}");

    // Its output is in the app's log too.
    let (_, logs) = server.api().req("GET", "/projects/rel/logs?lines=200", Some(&ada.token), None);
    let logs = logs.as_str().unwrap_or_default();
    assert!(logs.contains("release: migrating v2"), "{logs}");
}
