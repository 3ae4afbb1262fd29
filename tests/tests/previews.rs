//! Issue #15, item 7: preview apps. With `paastech previews on`, a branch pushed over real
//! git/SSH is built and served as its own app at `BRANCH--NAME.<domain>` with the project's
//! config (but not its add-on's credentials) and `PAASTECH_PREVIEW=1`; it is listed with
//! the project, survives a server restart, and goes when its branch is deleted, when
//! previews are turned off, or with the project. Colliding branch names, the limit, and
//! names kept for previews are refused naming the problem.

use std::time::Duration;

use paastech_tests::web::Web;
use paastech_tests::{GitRepo, Server, eventually, example, failed, ok, postgres_admin_url};
use serde_json::{Value, json};

/// A project name unique to this run: the add-on lives on a PostgreSQL shared by tests.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// The names of the project's previews, as the API lists them.
fn previews(server: &Server, token: &str, project: &str) -> (bool, Vec<(String, String)>) {
    let (status, body) = server.api().req("GET", &format!("/projects/{project}/previews"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    let list = body["previews"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (p["name"].as_str().unwrap_or_default().to_owned(), p["branch"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    (body["enabled"] == json!(true), list)
}

#[test]
fn a_branch_becomes_a_preview_app_with_the_projects_config_and_goes_with_its_branch() {
    let mut server = Server::start(&format!(
        "[previews]\nmax_per_project = 2\n[addons.postgres]\nurl = {:?}\n",
        postgres_admin_url()
    ));
    let api = server.api();
    let ada = server.developer("ada@example.com");
    let shop = unique("shop");
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({ "name": shop })));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("shop"), &example("python-hello"), &ada.key, server.ssh_port, &shop);
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    let (status, body) =
        api.req("PATCH", &format!("/projects/{shop}/env"), Some(&ada.token), Some(json!({"GREETING": "bonjour"})));
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        api.req("POST", &format!("/projects/{shop}/addons"), Some(&ada.token), Some(json!({"kind": "postgres"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.app_get(&shop, "/").1, "bonjour from python-hello (version 3)\n");

    // The branch tells the app it is a preview.
    let app = std::fs::read_to_string(repo.dir.join("app.py")).expect("app.py");
    let marked = app.replace(
        "body = f\"{greeting} from python-hello\"",
        "body = f\"{greeting} from python-hello preview={os.environ.get('PAASTECH_PREVIEW')}\"",
    );
    assert_ne!(app, marked, "the example's greeting line moved");
    repo.write("app.py", &marked);
    repo.commit_all("show whether this is a preview");

    // Previews off (the default): the branch is stored, nothing is deployed.
    let (pushed, output) = repo.push("HEAD:refs/heads/feature/Login");
    assert!(pushed, "{output}");
    assert!(output.contains("previews are off"), "{output}");
    assert_eq!(previews(&server, &ada.token, &shop), (false, vec![]));

    // On, through the CLI; the next push of the branch deploys it.
    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));
    let said = ok(&server.cli(home.path(), &["previews", "on", "-p", &shop], None));
    assert!(said.contains("previews on"), "{said}");
    repo.write("CHANGES", "login form\n");
    repo.commit_all("login form");
    let (pushed, output) = repo.push("HEAD:refs/heads/feature/Login");
    let preview = format!("feature-login--{shop}");
    assert!(pushed, "{output}\n{}", server.log());
    assert!(output.contains(&format!("Deployed preview {preview} v1")), "{output}");
    assert_eq!(server.app_get(&preview, "/"), (200, "bonjour from python-hello preview=1 (version 1)\n".into()));
    assert_eq!(server.app_get(&shop, "/").1, "bonjour from python-hello (version 3)\n", "main is untouched");

    // Its config: the project's, without the add-on's credentials, plus PAASTECH_PREVIEW.
    let (status, env) = api.req("GET", &format!("/projects/{preview}/env"), Some(&ada.token), None);
    assert_eq!(status, 200, "{env}");
    assert_eq!(env["GREETING"], "bonjour", "{env}");
    assert_eq!(env["PAASTECH_PREVIEW"], "1", "{env}");
    assert_eq!(env.get("DATABASE_URL"), None, "a preview must not reach the project's database: {env}");
    let (status, info) = api.req("GET", &format!("/projects/{preview}"), Some(&ada.token), None);
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["preview_of"], json!({"project": shop, "branch": "feature/Login"}));
    assert_eq!(previews(&server, &ada.token, &shop), (true, vec![(preview.clone(), "feature/Login".into())]));
    let listed = ok(&server.cli(home.path(), &["previews", "-p", &shop], None));
    assert!(listed.contains(&preview) && listed.contains("feature/Login") && listed.contains("v1"), "{listed}");

    // Refused, naming the problem: a branch that makes the same name, past the limit, a
    // push to the preview's own name, a project named like a preview, previews of a
    // preview, and someone else's project.
    let (pushed, output) = repo.push("HEAD:refs/heads/Feature-Login");
    assert!(!pushed, "{output}");
    assert!(output.contains("\"feature/Login\" and \"Feature-Login\" both make the preview app"), "{output}");
    let (pushed, output) = repo.push("HEAD:refs/heads/second");
    assert!(pushed, "{output}\n{}", server.log());
    let (pushed, output) = repo.push("HEAD:refs/heads/third");
    assert!(!pushed, "{output}");
    assert!(output.contains("2 preview apps, the most it may run at once"), "{output}");
    let other = GitRepo::from_dir(
        &server.dir.path().join("direct"),
        &example("python-hello"),
        &ada.key,
        server.ssh_port,
        &preview,
    );
    let (pushed, output) = other.push("main");
    assert!(!pushed && output.contains("is a preview app"), "{output}");
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({ "name": "x--y" })));
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("reserved"), "{body}");
    let (status, body) =
        api.req("PUT", &format!("/projects/{preview}/previews"), Some(&ada.token), Some(json!({"enabled": true})));
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("is a preview app"), "{body}");
    let bob = server.developer("bob@example.com");
    for (method, body) in [("GET", None), ("PUT", Some(json!({"enabled": false})))] {
        let (status, answer) = api.req(method, &format!("/projects/{shop}/previews"), Some(&bob.token), body);
        assert_eq!(status, 404, "{method} of someone else's previews: {answer}");
    }
    assert_eq!(server.app_get(&preview, "/").0, 200, "the refused pushes left the preview serving");

    // A server restart brings the preview back with the project.
    server.restart();
    let expected = (200, "bonjour from python-hello preview=1 (version 1)\n".to_owned());
    assert!(
        eventually(Duration::from_secs(30), || server.app_get(&preview, "/") == expected),
        "after a restart: {:?}\n{}",
        server.app_get(&preview, "/"),
        server.log()
    );

    // Deleting the branch removes its preview, and only it.
    let (pushed, output) = repo.push(":refs/heads/feature/Login");
    assert!(pushed, "{output}");
    assert!(output.contains(&format!("its preview {preview} removed")), "{output}");
    assert_eq!(server.app_get(&preview, "/").0, 404);
    let (status, _) = api.req("GET", &format!("/projects/{preview}"), Some(&ada.token), None);
    assert_eq!(status, 404);
    let second = format!("second--{shop}");
    assert_eq!(previews(&server, &ada.token, &shop), (true, vec![(second.clone(), "second".into())]));
    // Restored after the restart too (each project is restored on its own; the first one
    // answering says nothing of this one).
    assert!(
        eventually(Duration::from_secs(30), || server.app_get(&second, "/").0 == 200),
        "the other preview after a restart: {:?}\n{}",
        server.app_get(&second, "/"),
        server.log()
    );

    // The web UI lists it under the project's settings; turning previews off there (the
    // checkbox left empty) removes the rest.
    let mut web = Web::new(&server.api_url());
    web.log_in("ada@example.com");
    let page = web.get(&format!("/projects/{second}/settings"));
    assert!(page.body.contains("This is the preview app of branch <code>second</code>"), "{}", page.body);
    let page = web.get(&format!("/projects/{shop}/settings"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("href=\"/projects/{second}\"")) && page.body.contains(" checked>"),
        "{}",
        page.body
    );
    let turned = web.post(&format!("/projects/{shop}/previews"), &[("csrf", &page.csrf())]);
    assert_eq!(turned.status, 303, "{}", turned.body);
    assert_eq!(previews(&server, &ada.token, &shop), (false, vec![]));
    let page = web.get(&format!("/projects/{shop}/settings?done=previews-off"));
    assert!(page.body.contains("Previews off") && !page.body.contains(" checked>"), "{}", page.body);

    // On again and a push makes one, which goes with the project.
    assert_eq!(server.app_get(&second, "/").0, 404);
    let refused = failed(&server.cli(home.path(), &["previews", "maybe", "-p", &shop], None));
    assert!(refused.contains("maybe"), "{refused}");
    ok(&server.cli(home.path(), &["previews", "on", "-p", &shop], None));
    repo.write("CHANGES", "second, again\n");
    repo.commit_all("second again");
    let (pushed, output) = repo.push("HEAD:refs/heads/second");
    assert!(pushed, "{output}\n{}", server.log());
    assert_eq!(server.app_get(&second, "/").0, 200);
    let (status, body) = api.req("DELETE", &format!("/projects/{shop}"), Some(&ada.token), None);
    assert_eq!(status, 204, "{body}");
    let (status, _) = api.req("GET", &format!("/projects/{second}"), Some(&ada.token), None);
    assert_eq!(status, 404, "the preview went with its project");
    assert_eq!(server.app_get(&second, "/").0, 404);
}
