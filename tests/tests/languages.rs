//! Language versions and conventions on the process builder (#17, item 5), as Heroku's
//! buildpacks have them: the Python version of `.python-version` or `runtime.txt` and the
//! Node range of `engines.node` are found among the machine's interpreters and used (a
//! version the machine lacks fails the push naming it and what there is); `uv` installs
//! when the server has it; Django apps get `collectstatic` unless `DISABLE_COLLECTSTATIC`
//! is set; `npm run build` runs when `package.json` has a build script. Real `git` pushes
//! over SSH to a real server on the process runtime, apps from `tests/apps/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use paastech_tests::{Developer, GitRepo, Server, ok};
use serde_json::json;

fn app(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps").join(name)
}

/// Creates `project` and a working copy of `source` pushing to it.
fn repo(server: &Server, dev: &Developer, project: &str, source: &Path) -> GitRepo {
    let (status, body) = server.api().req("POST", "/projects", Some(&dev.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");
    GitRepo::from_dir(&server.dir.path().join("work").join(project), source, &dev.key, server.ssh_port, project)
}

/// `major.minor` of Debian's own `python3` (what every machine running the tests has).
fn system_python() -> String {
    let out = ok(&Command::new("/usr/bin/python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("running /usr/bin/python3"));
    out.trim().to_owned()
}

#[test]
fn the_python_version_asked_is_used_and_one_the_machine_lacks_is_named() {
    let server = Server::start("");
    let dev = server.developer("ada@example.com");
    let repo = repo(&server, &dev, "pyver", &app("python-version"));
    let wanted = system_python();
    repo.write(".python-version", &format!("{wanted}\n"));
    repo.commit_all("ask for the system's python");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}");
    assert!(output.contains(&format!("-----> Python {wanted}.")), "{output}");
    assert!(output.contains(&format!("(.python-version asks for {wanted})")), "{output}");
    let (status, body) = server.app_get("pyver", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("{wanted}.")), "the app runs on the version asked: {body}");
    assert!(body.contains("/.venv/bin/python") && body.contains("no six"), "{body}");

    // A version the machine does not have: the push fails naming it and what there is,
    // and the running version keeps serving.
    std::fs::remove_file(repo.dir.join(".python-version")).expect("remove");
    repo.write("runtime.txt", "python-3.99\n");
    repo.commit_all("ask for a python nobody has");
    let (pushed, output) = repo.push("main");
    assert!(!pushed, "{output}");
    assert!(output.contains("runtime.txt asks for Python 3.99, which this server does not have (it has: "), "{output}");
    assert!(output.contains(&format!("{wanted}.")), "the versions there are: {output}");
    assert_eq!(server.app_get("pyver", "/").0, 200);

    // Not a CPython version at all: refused naming the file.
    std::fs::remove_file(repo.dir.join("runtime.txt")).expect("remove");
    repo.write(".python-version", "pypy3.10\n");
    repo.commit_all("ask for pypy");
    let (pushed, output) = repo.push("main");
    assert!(!pushed && output.contains(".python-version asks for \"pypy3.10\""), "{output}");
}

#[test]
fn uv_installs_when_the_server_has_it() {
    let uv = std::env::var("PAASTECH_UV").map(PathBuf::from).unwrap_or_default();
    assert!(uv.is_file(), "PAASTECH_UV ({}) is not uv: install it with `source scripts/setup/62-uv.sh`", uv.display());
    let uv_dir = uv.parent().expect("uv's directory").display().to_string();
    let path = format!("{uv_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let server = Server::start_with_env("", &[("PATH", path.as_str())]);
    let dev = server.developer("ada@example.com");
    let repo = repo(&server, &dev, "withuv", &app("python-version"));
    repo.write(".python-version", &format!("{}\n", system_python()));
    repo.write("requirements.txt", "six==1.17.0\n");
    repo.commit_all("a requirement");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}");
    assert!(output.contains("-----> Installing with uv"), "{output}");
    assert!(output.contains("uv pip install"), "the install step is uv's: {output}");
    let (status, body) = server.app_get("withuv", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("six 1.17.0"), "{body}");
}

#[test]
fn django_apps_get_collectstatic_unless_disabled() {
    let server = Server::start("");
    let dev = server.developer("ada@example.com");
    let api = server.api();

    let site = repo(&server, &dev, "site", &app("django-static"));
    let (pushed, output) = site.push("main");
    assert!(pushed, "{output}");
    assert!(output.contains("-----> Running manage.py collectstatic --noinput"), "{output}");
    let (status, body) = server.app_get("site", "/staticfiles/app.css");
    assert_eq!((status, body.trim()), (200, "body { color: teal; }"), "collected into staticfiles/");

    let bare = repo(&server, &dev, "bare", &app("django-static"));
    let env = json!({"DISABLE_COLLECTSTATIC": "1"});
    assert_eq!(api.req("PATCH", "/projects/bare/env", Some(&dev.token), Some(env)).0, 200);
    let (pushed, output) = bare.push("main");
    assert!(pushed, "{output}");
    assert!(output.contains("collectstatic skipped: DISABLE_COLLECTSTATIC is set"), "{output}");
    assert!(!output.contains("Running manage.py collectstatic"), "{output}");
    assert_eq!(server.app_get("bare", "/staticfiles/app.css").0, 404, "nothing collected");

    // A collectstatic that fails (no STATIC_ROOT) fails the push, saying how to build
    // without it; the running version keeps serving.
    let settings = std::fs::read_to_string(site.dir.join("site_settings.py")).expect("settings");
    let without_root: String =
        settings.lines().filter(|l| !l.starts_with("STATIC_ROOT")).map(|l| format!("{l}\n")).collect();
    site.write("site_settings.py", &without_root);
    site.commit_all("no STATIC_ROOT");
    let (pushed, output) = site.push("main");
    assert!(!pushed, "{output}");
    assert!(output.contains("STATIC_ROOT"), "Django's own reason: {output}");
    assert!(output.contains("set DISABLE_COLLECTSTATIC=1 in the project's env"), "{output}");
    assert_eq!(server.app_get("site", "/staticfiles/app.css").0, 200);
}

#[test]
fn node_engines_are_checked_and_the_build_script_runs() {
    let server = Server::start("");
    let dev = server.developer("ada@example.com");
    let repo = repo(&server, &dev, "nodebuild", &app("node-build"));
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}");
    assert!(output.contains("(package.json engines.node asks for >=18)"), "{output}");
    assert!(output.contains("npm run build"), "{output}");
    let (status, body) = server.app_get("nodebuild", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("built by npm run build with node v"), "{body}");
    // The node it was built with is the node it runs on.
    let built = body.split("with node ").nth(1).and_then(|rest| rest.split(';').next()).unwrap_or_default();
    assert!(body.contains(&format!("running {built}")), "{body}");

    let json = std::fs::read_to_string(repo.dir.join("package.json")).expect("package.json");
    repo.write("package.json", &json.replace(">=18", "^99"));
    repo.commit_all("ask for a node nobody has");
    let (pushed, output) = repo.push("main");
    assert!(!pushed, "{output}");
    assert!(
        output.contains("package.json engines.node asks for Node ^99, which this server does not have (it has: "),
        "{output}"
    );
    assert_eq!(server.app_get("nodebuild", "/").0, 200, "the running version keeps serving");
}
