//! The container journeys of issue #4, one copy for every engine: the real `git` over real
//! SSH to a real server whose runtime is a real container engine, the app served through
//! the real ingress. Each engine's test file names its [`Engine`] and calls these.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{GitRepo, Server, eventually, example, http_get};

/// What differs between engines, as the tests see them.
pub struct Engine {
    /// The `driver` name in the configuration.
    pub driver: &'static str,
    /// The engine's own CLI, used to look at what the driver did.
    pub cli: &'static str,
    /// The local base image the setup script imported.
    pub base_image: &'static str,
    /// Where the builder tags images (`paastech/` or `localhost/paastech/`).
    pub image_prefix: &'static str,
    /// How the engine's build output starts.
    pub build_marker: &'static str,
    /// Extra arguments so `rm` does not wait, and `ps` prints full ids.
    pub rm_args: &'static [&'static str],
    pub ps_args: &'static [&'static str],
    /// Prefix of project names, so engines' tests never share a project name.
    pub prefix: &'static str,
    /// Checks a container's security settings with the engine's CLI.
    pub check_security: fn(&Engine, &str),
    /// `inspect --format` of memory and CPU, and what it prints for 128 MiB and 0.5 CPU.
    pub limits_format: &'static str,
    pub limits_expected: &'static str,
    /// A command that succeeds when the engine answers, and how to start it.
    pub ping: &'static [&'static str],
    pub setup: &'static str,
}

impl Engine {
    /// Fails (never skips) when the engine does not answer.
    pub fn require(&self) {
        let ok = Command::new(self.cli).args(self.ping).output();
        assert!(
            ok.as_ref().is_ok_and(|o| o.status.success()),
            "the {} engine is needed for these tests and does not answer: {ok:?}\n\
             start it with `bash {}` (scripts/test.sh does)",
            self.driver,
            self.setup
        );
    }

    pub fn run(&self, args: &[&str]) -> String {
        let output = Command::new(self.cli).args(args).output().expect("running the engine's CLI");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn running_containers(&self, project: &str) -> Vec<String> {
        let filter = format!("label=paastech.project={project}");
        let mut args = vec!["ps", "-q"];
        args.extend_from_slice(self.ps_args);
        args.extend(["--filter", filter.as_str()]);
        self.run(&args).split_whitespace().map(str::to_owned).collect()
    }
}

/// Removes a project's containers and images however the test ends.
struct Cleanup<'a>(&'a Engine, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let engine = self.0;
        let ids = engine.run(&["ps", "-aq", "--filter", &format!("label=paastech.project={}", self.1)]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new(engine.cli).args(engine.rm_args).args(&ids).output();
        }
        let images = engine.run(&["images", "-q", &format!("{}{}", engine.image_prefix, self.1)]);
        let images: Vec<&str> = images.split_whitespace().collect();
        if !images.is_empty() {
            let _ = Command::new(engine.cli).args(["rmi", "-f"]).args(&images).output();
        }
    }
}

fn deployments(server: &Server, token: &str, project: &str) -> Vec<Value> {
    let (status, body) = server.api().req("GET", &format!("/projects/{project}/deployments"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

fn page(server: &Server, project: &str) -> String {
    let (status, body) = server.app_get(project, "/");
    format!("{status} {}", body.trim())
}

/// A Dockerfile app pushed and served; a second push replaces it without a failed request;
/// container security; env change and rollback; scale to 2; per-project limits; a release
/// that exits at once rejected while the old one serves; a server restart adopts the
/// running containers.
pub fn dockerfile_journey(engine: &Engine) {
    engine.require();
    let project = format!("{}h{}", engine.prefix, std::process::id());
    let _cleanup = Cleanup(engine, project.clone());
    let mut server = Server::start(&format!("[runtime]\ndriver = \"{}\"\n", engine.driver));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");

    // A Dockerfile app is built by the engine, its output streamed to the push, and served.
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example("dockerfile-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    let started = std::time::Instant::now();
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    eprintln!("first push took {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        output.contains(&format!("remote: {}", engine.build_marker)),
        "the engine's build output streams back: {output}"
    );
    assert!(output.contains(&format!("Deployed {project} v1")), "{output}");
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 1)");

    // Each container: labelled, never privileged, no new privileges, capabilities dropped,
    // memory, CPU and pids limits, published on loopback only.
    let ids = engine.running_containers(&project);
    assert_eq!(ids.len(), 1, "{ids:?}");
    (engine.check_security)(engine, &ids[0]);

    // A second push replaces it while a client keeps requesting: no request fails.
    repo.write(
        "www/cgi-bin/index.cgi",
        &std::fs::read_to_string(example("dockerfile-hello").join("www/cgi-bin/index.cgi"))
            .expect("cgi")
            .replace("from dockerfile-hello", "from v2"),
    );
    repo.commit_all("second");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, count, port, host) =
            (stop.clone(), count.clone(), server.ingress_port, format!("{project}.localhost"));
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = http_get(port, &host, "/");
                if status != 200 {
                    failures.push(format!("{status} {body}"));
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    let started = std::time::Instant::now();
    let (ok, output) = repo.push("main");
    eprintln!("second push took {:.1}s", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().expect("client loop");
    assert!(ok, "{output}\n{}", server.log());
    let requests = count.load(Ordering::Relaxed);
    assert!(requests > 20, "the client loop ran: {requests}");
    assert!(failures.is_empty(), "{} of {requests} requests failed during the push: {failures:?}", failures.len());
    assert_eq!(page(&server, &project), "200 hello from v2 (version 2)");
    assert!(eventually(Duration::from_secs(20), || engine.running_containers(&project).len() == 1), "v1 was removed");

    // An env change and a rollback reach the app.
    let (status, _) = server.api().req(
        "PATCH",
        &format!("/projects/{project}/env"),
        Some(&ada.token),
        Some(json!({"GREETING": "bonjour"})),
    );
    assert_eq!(status, 200);
    assert_eq!(page(&server, &project), "200 bonjour from v2 (version 3)");
    let (status, body) = server.api().req(
        "POST",
        &format!("/projects/{project}/deployments"),
        Some(&ada.token),
        Some(json!({"version": 1})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 4)");

    // Scale to 2: two containers, both served.
    let (status, body) =
        server.api().req("PUT", &format!("/projects/{project}/scale"), Some(&ada.token), Some(json!({"web": 2})));
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(20), || engine.running_containers(&project).len() == 2),
        "{:?}",
        engine.running_containers(&project)
    );
    for _ in 0..4 {
        assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 4)");
    }

    // The project's own limits override the server's default, with a new deployment.
    let (status, body) = server.api().req(
        "PUT",
        &format!("/projects/{project}/limits"),
        Some(&ada.token),
        Some(json!({"memory_mb": 128, "cpus": 0.5})),
    );
    assert_eq!((status, &body), (200, &json!({"memory_mb": 128, "cpus": 0.5})));
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 5)");
    // The replaced containers stop in the background once traffic has moved.
    assert!(
        eventually(Duration::from_secs(30), || engine.running_containers(&project).len() == 2),
        "the scale is kept: {:?}",
        engine.running_containers(&project)
    );
    let ids = engine.running_containers(&project);
    for id in &ids {
        let limits = engine.run(&["inspect", "--format", engine.limits_format, id]);
        assert_eq!(limits.trim(), engine.limits_expected, "memory 128 MiB, half a CPU");
    }

    // A release whose container exits at once is rejected; the old one keeps serving.
    repo.write(
        "Dockerfile",
        &format!("FROM {}\nCMD [\"sh\", \"-c\", \"echo missing config; exit 3\"]\n", engine.base_image),
    );
    repo.commit_all("broken");
    let (ok, output) = repo.push("main");
    assert!(!ok, "a release that exits at once fails the push: {output}");
    assert!(output.contains("web.1"), "the reason names the process: {output}");
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 5)");
    let list = deployments(&server, &ada.token, &project);
    assert_eq!((list[0]["version"].as_i64(), list[0]["status"].as_str()), (Some(6), Some("failed")));
    assert!(eventually(Duration::from_secs(20), || engine.running_containers(&project).len() == 2), "only v4 runs");

    // After a restart the app serves again: the running containers are adopted, not
    // replaced, so the app is not interrupted.
    let before: std::collections::BTreeSet<String> = engine.running_containers(&project).into_iter().collect();
    server.restart();
    assert!(
        eventually(Duration::from_secs(30), || page(&server, &project)
            == "200 hello from dockerfile-hello (version 5)"),
        "the app serves again after a restart: {}\n{}",
        page(&server, &project),
        server.log()
    );
    let after: std::collections::BTreeSet<String> = engine.running_containers(&project).into_iter().collect();
    assert_eq!(before, after, "the same containers serve after the restart");
    let (_, logs) = server.api().req("GET", &format!("/projects/{project}/logs?lines=50"), Some(&ada.token), None);
    assert!(logs.as_str().unwrap_or_default().contains("restored after a server start"), "{logs}");
}

/// Without a Dockerfile: refused, or generated from detection and a base image.
pub fn no_dockerfile_journey(engine: &Engine) {
    engine.require();
    let project = format!("{}nodf{}", engine.prefix, std::process::id());
    let _cleanup = Cleanup(engine, project.clone());
    let server = Server::start(&format!("[runtime]\ndriver = \"{}\"\n", engine.driver));
    let ada = server.developer("ada@example.com");
    let (status, _) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201);
    let repo = GitRepo::from_dir(
        &server.dir.path().join("site"),
        &example("static-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    let (ok, output) = repo.push("main");
    assert!(!ok, "{output}");
    assert!(output.contains("Dockerfile") && output.contains("base_image"), "says what is needed: {output}");

    // With a base image, a static site gets a generated Dockerfile and is served by httpd;
    // a Python app on busybox is refused with the reason.
    let project = format!("{}gen{}", engine.prefix, std::process::id());
    let _cleanup = Cleanup(engine, project.clone());
    let server = Server::start(&format!(
        "[runtime]\ndriver = \"{}\"\n\n[build]\nbase_image = \"{}\"\n",
        engine.driver, engine.base_image
    ));
    let ada = server.developer("ada@example.com");
    let (status, _) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201);
    let repo = GitRepo::from_dir(
        &server.dir.path().join("site"),
        &example("static-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert!(output.contains("generated one for a static app"), "{output}");
    let (status, body) = server.app_get(&project, "/");
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read_to_string(example("static-hello").join("index.html")).expect("index"));

    let python =
        GitRepo::from_dir(&server.dir.path().join("py"), &example("python-hello"), &ada.key, server.ssh_port, &project);
    // Another history: forced over the site's.
    let pushed = python.try_git(&["push", "--force", "paastech", "main"]);
    let output = format!("{}{}", String::from_utf8_lossy(&pushed.stdout), String::from_utf8_lossy(&pushed.stderr));
    assert!(!pushed.status.success(), "{output}");
    assert!(output.contains("has no python3") && output.contains("add a Dockerfile"), "{output}");
    assert_eq!(server.app_get(&project, "/").0, 200, "the site keeps serving");
}

impl Engine {
    /// Everything an image tells about itself: its history (each step's command, in full),
    /// its configuration, and every file of every layer (`save`).
    fn image_everything(&self, image: &str) -> String {
        let mut text = String::new();
        for args in [&["history", "--no-trunc", image][..], &["image", "inspect", image], &["save", image]] {
            let output = Command::new(self.cli).args(args).output().expect("running the engine's CLI");
            assert!(output.status.success(), "{} {args:?}: {}", self.cli, String::from_utf8_lossy(&output.stderr));
            text.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        text
    }
}

/// A value no build output, image or engine has seen before.
fn random_value(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{what}-{:x}", nanos ^ (u128::from(std::process::id()) << 64))
}

/// No config var in an image: a secret config var reaches neither a generated Dockerfile's
/// build nor a repository Dockerfile that does not declare it (the engine is not even given
/// it: it would warn of an unused build argument), and nothing of the image (history,
/// configuration, files) holds its value; a var the Dockerfile declares with `ARG` does
/// reach the build.
pub fn secrets_stay_out_of_images_journey(engine: &Engine) {
    engine.require();
    let project = format!("{}sec{}", engine.prefix, std::process::id());
    let _cleanup = Cleanup(engine, project.clone());
    let server = Server::start(&format!(
        "[runtime]\ndriver = \"{}\"\n\n[build]\nbase_image = \"{}\"\n",
        engine.driver, engine.base_image
    ));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");
    let (secret, greeting) = (random_value("s3cret"), random_value("hello"));
    let (status, body) = server.api().req(
        "PATCH",
        &format!("/projects/{project}/env"),
        Some(&ada.token),
        Some(json!({"SECRET_TOKEN": secret, "BUILD_GREETING": greeting})),
    );
    assert_eq!(status, 200, "{body}");
    let latest_image = || {
        let version = deployments(&server, &ada.token, &project)[0]["version"].as_i64().expect("a version");
        format!("{}{project}:v{version}", engine.image_prefix)
    };
    let clean = |output: &str, what: &str| {
        assert!(!output.contains(&secret), "{what}: the secret is in the build output: {output}");
        assert!(!output.contains("not consumed"), "{what}: the engine was given an undeclared var: {output}");
    };

    // A generated Dockerfile gets no config var.
    let repo = GitRepo::from_dir(
        &server.dir.path().join("site"),
        &example("static-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert!(output.contains("generated one for a static app"), "{output}");
    clean(&output, "generated Dockerfile");
    let image = latest_image();
    let everything = engine.image_everything(&image);
    assert!(everything.contains("httpd"), "the image was read: {image}");
    assert!(!everything.contains(&secret), "the secret is in {image} (generated Dockerfile)");
    assert!(!everything.contains(&greeting), "a var is in {image} (generated Dockerfile)");

    // The repository's Dockerfile RUNs a step and declares one var: that one reaches the
    // build (and, as documented, its value is in the RUN step's history), the other not.
    repo.write(
        "Dockerfile",
        &format!(
            "FROM {}\n# the greeting only\narg BUILD_GREETING\nWORKDIR /www\nCOPY . /www\n\
             RUN echo \"built: $BUILD_GREETING\" > /www/built.txt && echo \"undeclared: [$SECRET_TOKEN]\" >> \
             /www/built.txt\nCMD [\"sh\", \"-c\", \"exec httpd -f -p \\\"$PORT\\\" -h /www\"]\n",
            engine.base_image
        ),
    );
    repo.commit_all("a Dockerfile");
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert!(output.contains("Build arguments the Dockerfile declares: BUILD_GREETING"), "{output}");
    clean(&output, "repository Dockerfile");
    assert_eq!(
        server.app_get(&project, "/built.txt"),
        (200, format!("built: {greeting}\nundeclared: []\n")),
        "the declared var reached the build, the other not"
    );
    let image = latest_image();
    let everything = engine.image_everything(&image);
    assert!(!everything.contains(&secret), "the secret is in {image} (repository Dockerfile)");
    assert!(everything.contains(&format!("BUILD_GREETING={greeting}")), "the engine records a declared ARG's value");
}

/// A Dockerfile app whose Procfile has only a `release:` line (web stays the image's own
/// command): the release step runs in the image with the deployment's config, its output
/// streams to the push; when it exits non-zero (here on an env change) the deployment
/// fails with its exit code and the previous one keeps serving.
pub fn release_journey(engine: &Engine) {
    engine.require();
    let project = format!("{}rel{}", engine.prefix, std::process::id());
    let _cleanup = Cleanup(engine, project.clone());
    let server = Server::start(&format!("[runtime]\ndriver = \"{}\"\n", engine.driver));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example("dockerfile-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    repo.write("Procfile", "release: echo \"release of v$PAASTECH_VERSION\" && exit ${RELEASE_EXIT:-0}\n");
    repo.commit_all("a release step");
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    for expected in [
        "remote: -----> Running release command: echo",
        "remote: release of v1",
        "remote: -----> Release command exited with code 0",
    ] {
        assert!(output.contains(expected), "{expected:?} is not in the push's output:\n{output}");
    }
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 1)");

    let (status, body) = server.api().req(
        "PATCH",
        &format!("/projects/{project}/env"),
        Some(&ada.token),
        Some(json!({"RELEASE_EXIT": "3"})),
    );
    assert!(status >= 400, "a failing release step fails the env change: {status} {body}");
    assert!(body.to_string().contains("exited with code 3"), "{body}");
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 1)");
    let list = deployments(&server, &ada.token, &project);
    assert_eq!((list[0]["version"].as_i64(), list[0]["status"].as_str()), (Some(2), Some("failed")), "{list:?}");
    let (_, logs) = server.api().req("GET", &format!("/projects/{project}/logs?lines=200"), Some(&ada.token), None);
    assert!(logs.as_str().unwrap_or_default().contains("release: release of v2"), "{logs}");
}

/// Issue #15: a stopped app's containers are removed and its names answer the stopped page;
/// a server restart adopts nothing of it and starts nothing; `start` serves again, and
/// `restart` replaces the container.
pub fn stop_start_restart_journey(engine: &Engine) {
    engine.require();
    let project = format!("{}stop{}", engine.prefix, std::process::id());
    let _cleanup = Cleanup(engine, project.clone());
    let mut server = Server::start(&format!("[runtime]\ndriver = \"{}\"\n", engine.driver));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example("dockerfile-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 1)");
    let post = |verb: &str| server.api().req("POST", &format!("/projects/{project}/{verb}"), Some(&ada.token), None);
    let stopped_page = |server: &Server| {
        let (status, body) = server.app_get(&project, "/");
        status == 503 && body.contains("app stopped")
    };

    let (status, body) = post("stop");
    assert_eq!(status, 200, "{body}");
    assert!(stopped_page(&server), "{}", page(&server, &project));
    assert!(engine.running_containers(&project).is_empty(), "its container is removed");

    // Containers outlive a server; a stopped app has none to adopt, and none is started.
    server.restart();
    assert!(stopped_page(&server), "{}", page(&server, &project));
    let restored = eventually(Duration::from_secs(60), || {
        let (_, logs) = server.api().req("GET", &format!("/projects/{project}/logs?lines=50"), Some(&ada.token), None);
        logs.as_str().is_some_and(|l| l.contains("v1 restored after a server start"))
    });
    assert!(restored, "the restore went through the project\n{}", server.log());
    assert!(engine.running_containers(&project).is_empty(), "the restore starts nothing of a stopped app");
    let post = |verb: &str| server.api().req("POST", &format!("/projects/{project}/{verb}"), Some(&ada.token), None);
    assert_eq!(post("restart").0, 409, "a stopped app is not restarted");

    let (status, body) = post("start");
    assert_eq!(status, 200, "{body}\n{}", server.log());
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 1)");
    let before = engine.running_containers(&project);
    assert_eq!(before.len(), 1, "{before:?}");

    let (status, body) = post("restart");
    assert_eq!((status, body), (200, json!({"restarted": ["web.1"]})));
    assert_eq!(page(&server, &project), "200 hello from dockerfile-hello (version 1)");
    let replaced = eventually(Duration::from_secs(20), || {
        let now = engine.running_containers(&project);
        now.len() == 1 && now != before
    });
    assert!(replaced, "a new container replaced {before:?}: {:?}", engine.running_containers(&project));
}
