//! Issue #12, item 2: custom domains. A real server, the static example pushed over real
//! SSH, requests through the real ingress with the custom domain as `Host`, the API and
//! the CLI; the domain survives a restart and goes away at once when removed.

use paastech_tests::{GitRepo, Server, example, failed, http_get, ok};
use serde_json::{Value, json};

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[test]
fn a_custom_domain_serves_the_project_at_once_survives_a_restart_and_is_unique() {
    let mut server = Server::start("");
    let api = server.api();
    let ada = server.developer("ada@example.com");
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": "site"})));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("site"), &example("static-hello"), &ada.key, server.ssh_port, "site");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    let (status, own) = server.app_get("site", "/");
    assert_eq!(status, 200, "{own}");
    assert!(own.contains("static-hello"), "{own}");

    let port = server.ingress_port;
    let via = |host: &str| http_get(port, host, "/");
    assert_eq!(via("www.example.com").0, 404, "an unknown domain answers the ingress's 404");

    // Added: served at once, with or without the port, in any case, no redeploy.
    let (status, added) =
        api.req("POST", "/projects/site/domains", Some(&ada.token), Some(json!({"domain": "WWW.Example.com."})));
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["domain"], "www.example.com");
    assert_eq!(added["url"], format!("http://www.example.com:{port}"));
    for host in ["www.example.com".to_string(), format!("www.example.com:{port}"), "WWW.EXAMPLE.COM".into()] {
        assert_eq!(via(&host), (200, own.clone()), "through {host:?}");
    }
    let (status, list) = api.req("GET", "/projects/site/domains", Some(&ada.token), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");
    assert_eq!(list[0]["domain"], "www.example.com");
    assert!(list[0]["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{list}");

    // Refusals name the problem.
    for (domain, words) in [
        ("blog.localhost", "platform's"),
        ("127.0.0.1", "IP address"),
        ("*.example.com", "wildcard"),
        ("no_underscores.example.com", "not a valid host name"),
    ] {
        let (status, body) =
            api.req("POST", "/projects/site/domains", Some(&ada.token), Some(json!({"domain": domain})));
        assert_eq!(status, 400, "{domain}: {body}");
        assert!(message(&body).contains(words), "{domain}: {body}");
    }

    // Another user: their project cannot take it (409, not saying whose), and Ada's
    // project's domains answer them like a missing project.
    let bo = server.developer("bo@example.com");
    let (status, body) = api.req("POST", "/projects", Some(&bo.token), Some(json!({"name": "bo-site"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        api.req("POST", "/projects/bo-site/domains", Some(&bo.token), Some(json!({"domain": "www.example.com"})));
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains("taken by another project") && !message(&body).contains("site "), "{body}");
    let (status, body) = api.req("GET", "/projects/site/domains", Some(&bo.token), None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.req("DELETE", "/projects/site/domains/www.example.com", Some(&bo.token), None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.req("DELETE", "/projects/bo-site/domains/www.example.com", Some(&bo.token), None);
    assert_eq!(status, 404, "not bo-site's: {body}");
    assert_eq!(via("www.example.com").0, 200, "still served");

    // A restart routes it again.
    server.restart();
    assert!(
        paastech_tests::eventually(std::time::Duration::from_secs(60), || via("www.example.com").0 == 200),
        "served after a restart: {:?}\n{}",
        via("www.example.com"),
        server.log()
    );
    assert_eq!(via("www.example.com").1, own);

    // Removed: 404 at once; then free for another project.
    let (status, body) = api.req("DELETE", "/projects/site/domains/WWW.example.com", Some(&ada.token), None);
    assert_eq!(status, 204, "{body}");
    let (status, page) = via("www.example.com");
    assert_eq!(status, 404, "{page}");
    assert_eq!(server.app_get("site", "/").0, 200, "the project's own name still serves");
    let (status, body) =
        api.req("POST", "/projects/bo-site/domains", Some(&bo.token), Some(json!({"domain": "www.example.com"})));
    assert_eq!(status, 201, "free again: {body}");
}

#[test]
fn cli_domains_add_list_remove() {
    let server = Server::start("");
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let pw = Some("correct horse battery\n");
    ok(&server.cli(home, &["signup", "--email", "ada@example.com", "--password-stdin"], pw));
    ok(&server.cli(home, &["login", "--email", "ada@example.com", "--password-stdin"], pw));
    ok(&server.cli(home, &["projects", "create", "blog"], None));

    let err = failed(&server.cli(home, &["domains", "add", "-p", "blog", "Bücher.example"], None));
    assert!(err.contains("use xn--bcher-kva.example"), "names the ASCII form to use: {err}");
    let out = ok(&server.cli(home, &["domains", "add", "-p", "blog", "XN--bcher-kva.example"], None));
    assert!(out.contains("xn--bcher-kva.example"), "{out}");
    assert!(out.contains("DNS"), "says what to do next: {out}");
    ok(&server.cli(home, &["domains", "add", "-p", "blog", "www.example.org"], None));
    let out = ok(&server.cli(home, &["domains", "list", "-p", "blog"], None));
    assert!(
        out.contains("DOMAIN") && out.contains("www.example.org") && out.contains("xn--bcher-kva.example"),
        "{out}"
    );
    let list: Value = serde_json::from_str(&ok(&server.cli(home, &["--json", "domains", "list", "-p", "blog"], None)))
        .expect("--json prints JSON");
    let names: Vec<&str> = list.as_array().expect("a list").iter().filter_map(|d| d["domain"].as_str()).collect();
    assert_eq!(names, ["www.example.org", "xn--bcher-kva.example"]);

    let err = failed(&server.cli(home, &["domains", "add", "-p", "blog", "www.example.org"], None));
    assert!(err.contains("already a domain of project blog"), "{err}");
    let err = failed(&server.cli(home, &["domains", "add", "-p", "blog", "10.0.0.1"], None));
    assert!(err.contains("IP address"), "{err}");

    // Any case removes it; a name with a slash stays one path segment.
    ok(&server.cli(home, &["domains", "remove", "-p", "blog", "Xn--Bcher-kva.example."], None));
    let err = failed(&server.cli(home, &["domains", "remove", "-p", "blog", "a/b.example"], None));
    assert!(err.contains("not a domain of project blog"), "{err}");
    let list: Value = serde_json::from_str(&ok(&server.cli(home, &["--json", "domains", "list", "-p", "blog"], None)))
        .expect("--json prints JSON");
    assert_eq!(
        list,
        json!([{
            "domain": "www.example.org",
            "url": list[0]["url"],
            "created_at": list[0]["created_at"],
            // No ACME on this server: no certificate to report.
            "certificate": null,
        }])
    );
}
