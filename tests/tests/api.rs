//! Issue #2 journeys over real HTTP against a real `paastech server` process.

use paastech_tests::{GitRepo, Server, example, fresh_postgres_database, http_get, ssh_keygen};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

#[test]
fn signup_login_tokens_and_me() {
    let server = Server::start("");
    let api = server.api();

    let (status, first) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "Ada@Example.com", "password": PASSWORD})));
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["email"], "ada@example.com");
    assert_eq!(first["is_admin"], true, "the first account is an admin");
    let (status, second) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "bob@example.com", "password": PASSWORD})));
    assert_eq!((status, &second["is_admin"]), (201, &Value::Bool(false)), "{second}");

    let (status, body) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "ada@example.com", "password": PASSWORD})));
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    let (status, body) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "not-an-email", "password": PASSWORD})));
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "c@example.com", "password": "short"})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("at least 8"), "{body}");

    let (status, body) =
        api.req("POST", "/auth/login", None, Some(json!({"email": "ada@example.com", "password": "wrong password"})));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) =
        api.req("POST", "/auth/login", None, Some(json!({"email": "nobody@example.com", "password": PASSWORD})));
    assert_eq!(status, 401, "an unknown account looks like a wrong password: {body}");

    let token = api.login("ada@example.com", PASSWORD);
    let (status, me) = api.req("GET", "/me", Some(&token), None);
    assert_eq!((status, me["email"].as_str()), (200, Some("ada@example.com")), "{me}");

    let (status, body) = api.req("GET", "/me", None, None);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _) = api.req("GET", "/me", Some("pt_forged"), None);
    assert_eq!(status, 401);

    // A long-lived API token works like a login token, and stops working once revoked.
    let (status, created) = api.req("POST", "/tokens", Some(&token), Some(json!({"name": "ci"})));
    assert_eq!(status, 201, "{created}");
    let api_token = created["token"].as_str().expect("token").to_owned();
    assert_eq!(api.req("GET", "/me", Some(&api_token), None).0, 200);
    let (_, tokens) = api.req("GET", "/tokens", Some(&token), None);
    let listed = tokens.as_array().expect("token list");
    assert!(listed.iter().any(|t| t["name"] == "ci" && !t["last_used_at"].is_null()), "{tokens}");
    assert!(listed.iter().all(|t| t.get("token").is_none()), "secrets are never listed: {tokens}");
    let id = created["id"].as_i64().expect("id");
    // Bob cannot revoke Ada's token.
    let bob = api.login("bob@example.com", PASSWORD);
    assert_eq!(api.req("DELETE", &format!("/tokens/{id}"), Some(&bob), None).0, 404);
    assert_eq!(api.req("DELETE", &format!("/tokens/{id}"), Some(&token), None).0, 204);
    assert_eq!(api.req("GET", "/me", Some(&api_token), None).0, 401);

    // Only admins list users.
    assert_eq!(api.req("GET", "/users", Some(&bob), None).0, 403);
    let (status, users) = api.req("GET", "/users", Some(&token), None);
    assert_eq!((status, users.as_array().map(Vec::len)), (200, Some(2)), "{users}");
}

#[test]
fn failed_logins_are_slowed_down() {
    let server = Server::start("");
    let api = server.api();
    api.user("ada@example.com");
    for attempt in 1..=10 {
        let (status, _) =
            api.req("POST", "/auth/login", None, Some(json!({"email": "ada@example.com", "password": "nope nope"})));
        assert_eq!(status, 401, "attempt {attempt}");
    }
    let (status, body) =
        api.req("POST", "/auth/login", None, Some(json!({"email": "ada@example.com", "password": PASSWORD})));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "even the right password waits: {body}"
    );
}

#[test]
fn closed_signup_lets_only_admins_create_accounts() {
    let server = Server::start("[auth]\nsignup = \"closed\"\n");
    let api = server.api();
    let admin = api.user("admin@example.com");
    let (status, body) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "eve@example.com", "password": PASSWORD})));
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) =
        api.req("POST", "/auth/signup", Some(&admin), Some(json!({"email": "eve@example.com", "password": PASSWORD})));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn ssh_keys_are_validated_and_unique() {
    let server = Server::start("");
    let api = server.api();
    let ada = api.user("ada@example.com");
    let bob = api.user("bob@example.com");
    let (_, public) = ssh_keygen(server.dir.path(), "ada_key");

    for (bad, why) in [
        ("not a key", "key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "key"),
        ("", "key"),
    ] {
        let (status, body) = api.req("POST", "/ssh-keys", Some(&ada), Some(json!({"name": "x", "public_key": bad})));
        assert_eq!(status, 400, "{bad:?}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default().to_lowercase();
        assert!(message.contains(why), "{bad:?}: the message should say why: {body}");
    }

    let (status, key) = api.req("POST", "/ssh-keys", Some(&ada), Some(json!({"public_key": public})));
    assert_eq!(status, 201, "{key}");
    assert!(key["fingerprint"].as_str().unwrap_or_default().starts_with("SHA256:"), "{key}");
    assert_eq!(key["name"], "ada_key", "the comment names the key by default");

    let (status, body) =
        api.req("POST", "/ssh-keys", Some(&bob), Some(json!({"name": "stolen", "public_key": public})));
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");

    let (_, keys) = api.req("GET", "/ssh-keys", Some(&ada), None);
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    let (_, keys) = api.req("GET", "/ssh-keys", Some(&bob), None);
    assert_eq!(keys.as_array().map(Vec::len), Some(0), "{keys}");
    let id = key["id"].as_i64().expect("id");
    assert_eq!(api.req("DELETE", &format!("/ssh-keys/{id}"), Some(&bob), None).0, 404);
    assert_eq!(api.req("DELETE", &format!("/ssh-keys/{id}"), Some(&ada), None).0, 204);
    // Once removed it may be registered again, by anyone.
    assert_eq!(api.req("POST", "/ssh-keys", Some(&bob), Some(json!({"name": "mine", "public_key": public}))).0, 201);
}

#[test]
fn project_names_follow_the_dns_label_rule() {
    let server = Server::start("");
    let api = server.api();
    let ada = api.user("ada@example.com");
    let cases = [
        ("blog", 201),
        ("my-app-2", 201),
        ("a1", 201),
        ("a-name-that-is-exactly-forty-chars-long0", 201),
        ("a-name-that-is-exactly-forty-one-chars-lo", 400),
        ("x", 400),
        ("1blog", 400),
        ("-blog", 400),
        ("blog-", 400),
        ("Blog", 400),
        ("my_app", 400),
        ("my.app", 400),
        ("", 400),
        ("blog", 409),
    ];
    for (name, expected) in cases {
        let (status, body) = api.req("POST", "/projects", Some(&ada), Some(json!({"name": name})));
        assert_eq!(status, expected, "{name:?}: {body}");
        if expected == 400 {
            assert!(
                body["error"]["message"].as_str().unwrap_or_default().contains("lowercase letters"),
                "quotes the rule: {body}"
            );
        }
    }
    let (_, blog) = api.req("GET", "/projects/blog", Some(&ada), None);
    assert_eq!(blog["git_url"], format!("ssh://git@127.0.0.1:{}/blog.git", server.ssh_port), "{blog}");
    assert_eq!(blog["url"], format!("http://blog.localhost:{}", server.ingress_port), "{blog}");
}

#[test]
fn other_users_projects_are_not_found() {
    let server = Server::start("");
    let api = server.api();
    let admin = api.user("admin@example.com");
    let ada = api.user("ada@example.com");
    let bob = api.user("bob@example.com");
    assert_eq!(api.req("POST", "/projects", Some(&ada), Some(json!({"name": "secret"}))).0, 201);
    assert_eq!(api.req("PATCH", "/projects/secret/env", Some(&ada), Some(json!({"TOKEN": "s3cr3t"}))).0, 200);

    let routes: [(&str, &str, Option<Value>); 12] = [
        ("GET", "/projects/secret", None),
        ("DELETE", "/projects/secret", None),
        ("GET", "/projects/secret/env", None),
        ("PATCH", "/projects/secret/env", Some(json!({"A": "b"}))),
        ("GET", "/projects/secret/deployments", None),
        ("GET", "/projects/secret/scale", None),
        ("GET", "/projects/secret/limits", None),
        ("PUT", "/projects/secret/limits", Some(json!({"memory_mb": 64}))),
        ("POST", "/projects/secret/deployments", Some(json!({}))),
        ("GET", "/projects/secret/logs", None),
        ("GET", "/projects/secret/ps", None),
        ("PUT", "/projects/secret/scale", Some(json!({"web": 2}))),
    ];
    for (method, path, body) in &routes {
        let (status, answer) = api.req(method, path, Some(&bob), body.clone());
        assert_eq!(status, 404, "{method} {path} as another user: {answer}");
        // The same answer as for a project that does not exist.
        let missing = path.replace("secret", "missing");
        let (status_missing, answer_missing) = api.req(method, &missing, Some(&bob), body.clone());
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (status_missing, answer_missing["error"]["code"].clone())
        );
    }
    let (_, listed) = api.req("GET", "/projects", Some(&bob), None);
    assert_eq!(listed, json!([]), "bob lists none of ada's projects");

    // The owner and an admin see it.
    assert_eq!(api.req("GET", "/projects/secret/env", Some(&ada), None).1, json!({"TOKEN": "s3cr3t"}));
    let (status, env) = api.req("GET", "/projects/secret/env", Some(&admin), None);
    assert_eq!((status, env), (200, json!({"TOKEN": "s3cr3t"})));
    // Every project route needs a token at all.
    for (method, path, body) in routes {
        assert_eq!(api.req(method, path, None, body).0, 401, "{method} {path} without a token");
    }
}

#[test]
fn env_and_scale_round_trip() {
    let server = Server::start("");
    let api = server.api();
    let ada = api.user("ada@example.com");
    assert_eq!(api.req("POST", "/projects", Some(&ada), Some(json!({"name": "shop"}))).0, 201);
    let (status, env) = api.req("PATCH", "/projects/shop/env", Some(&ada), Some(json!({"A": "1", "B": "two words"})));
    assert_eq!((status, env), (200, json!({"A": "1", "B": "two words"})));
    let (_, env) = api.req("PATCH", "/projects/shop/env", Some(&ada), Some(json!({"A": null, "C": "3"})));
    assert_eq!(env, json!({"B": "two words", "C": "3"}));
    for bad in [json!({}), json!({"1X": "y"}), json!({"PORT": "80"}), json!({"A": 5}), json!(["A"])] {
        let (status, body) = api.req("PATCH", "/projects/shop/env", Some(&ada), Some(bad.clone()));
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
        assert!(body["error"]["message"].is_string(), "error shape: {body}");
    }
    assert_eq!(
        api.req("PUT", "/projects/shop/scale", Some(&ada), Some(json!({"web": 2, "worker": 1}))).1,
        json!({"web": 2, "worker": 1})
    );
    assert_eq!(api.req("PUT", "/projects/shop/scale", Some(&ada), Some(json!({"web": 99}))).0, 400);
    assert_eq!(api.req("GET", "/projects/shop/limits", Some(&ada), None).1, json!({"memory_mb": null, "cpus": null}));
    for bad in [json!({"memory_mb": 1}), json!({"cpus": 0}), json!({"cpus": 100.0}), json!({"memory_mb": "big"})] {
        let (status, body) = api.req("PUT", "/projects/shop/limits", Some(&ada), Some(bad.clone()));
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
    }
    let (status, limits) = api.req("PUT", "/projects/shop/limits", Some(&ada), Some(json!({"memory_mb": 256})));
    assert_eq!((status, limits), (200, json!({"memory_mb": 256, "cpus": null})));
    let (status, deployments) = api.req("GET", "/projects/shop/deployments", Some(&ada), None);
    assert_eq!((status, deployments), (200, json!([])));
}

#[test]
fn bodies_are_size_limited_and_errors_are_json() {
    let server = Server::start("");
    let api = server.api();
    let big = "x".repeat(200 * 1024);
    let (status, body) = api.req("POST", "/auth/signup", None, Some(json!({"email": "a@b.io", "password": big})));
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    let (status, body) = api.req("GET", "/no/such/route", None, None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = api.req("POST", "/auth/login", None, Some(json!({"email": 1})));
    assert!(status == 400 || status == 422, "{status} {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[test]
fn health_and_openapi() {
    let server = Server::start("");
    let api = server.api();
    let (status, health) = api.req("GET", "/healthz", None, None);
    assert_eq!((status, health["database"].as_str()), (200, Some("ok")));
    let (status, doc) = api.req("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap_or_default().starts_with("3."), "{doc}");
    for path in [
        "/auth/signup",
        "/auth/login",
        "/me",
        "/tokens",
        "/ssh-keys",
        "/projects",
        "/projects/{name}",
        "/projects/{name}/env",
        "/projects/{name}/deployments",
        "/nodes",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
}

/// Everything a user made is still there after the server restarts.
fn survives_restart(mut server: Server) {
    let api = server.api();
    let ada = api.user("ada@example.com");
    let (_, public) = ssh_keygen(server.dir.path(), "restart_key");
    assert_eq!(api.req("POST", "/ssh-keys", Some(&ada), Some(json!({"name": "k", "public_key": public}))).0, 201);
    assert_eq!(api.req("POST", "/projects", Some(&ada), Some(json!({"name": "durable"}))).0, 201);
    assert_eq!(api.req("PATCH", "/projects/durable/env", Some(&ada), Some(json!({"KEEP": "me"}))).0, 200);
    let (_, created) = api.req("POST", "/tokens", Some(&ada), Some(json!({"name": "deploy"})));
    let api_token = created["token"].as_str().expect("token").to_owned();

    server.restart();
    let api = server.api();
    assert_eq!(api.req("GET", "/me", Some(&ada), None).0, 200, "login token survives");
    assert_eq!(api.req("GET", "/me", Some(&api_token), None).0, 200, "API token survives");
    assert_eq!(api.req("GET", "/projects/durable/env", Some(&ada), None).1, json!({"KEEP": "me"}));
    assert_eq!(api.req("GET", "/ssh-keys", Some(&ada), None).1.as_array().map(Vec::len), Some(1));
    api.login("ada@example.com", PASSWORD);
    let (_, second) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "late@example.com", "password": PASSWORD})));
    assert_eq!(second["is_admin"], false, "still only one first user");
}

#[test]
fn everything_survives_a_restart_on_sqlite() {
    survives_restart(Server::start(""));
}

#[test]
fn everything_survives_a_restart_on_postgres() {
    let url = fresh_postgres_database("paastech_restart");
    let server = Server::start(&format!("[database]\nurl = {url:?}\n"));
    let (_, health) = server.api().req("GET", "/healthz", None, None);
    assert_eq!(health["database"], "ok");
    survives_restart(server);
}

#[test]
fn the_api_journey_on_postgres() {
    let url = fresh_postgres_database("paastech_journey");
    let server = Server::start(&format!("[database]\nurl = {url:?}\n"));
    let api = server.api();
    let ada = api.user("ada@example.com");
    let bob = api.user("bob@example.com");
    assert_eq!(api.req("POST", "/projects", Some(&ada), Some(json!({"name": "pg-app"}))).0, 201);
    assert_eq!(api.req("POST", "/projects", Some(&bob), Some(json!({"name": "pg-app"}))).0, 409);
    assert_eq!(api.req("GET", "/projects/pg-app", Some(&bob), None).0, 404);
    let (_, public) = ssh_keygen(server.dir.path(), "pg_key");
    assert_eq!(api.req("POST", "/ssh-keys", Some(&ada), Some(json!({"public_key": public}))).0, 201);
    assert_eq!(api.req("POST", "/ssh-keys", Some(&bob), Some(json!({"public_key": public}))).0, 409);
}

/// Issue #13: `GET /nodes` lists the runtime's machines and every project's instances on
/// each, for admins. The process runtime is one `local` machine.
#[test]
fn admins_see_the_nodes_and_the_instances_on_each() {
    let server = Server::start("");
    let api = server.api();
    let ada = server.developer("ada@example.com");
    let bob = api.user("bob@example.com");
    assert_eq!(api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": "shop"}))).0, 201);
    let repo =
        GitRepo::from_dir(&server.dir.path().join("shop"), &example("static-hello"), &ada.key, server.ssh_port, "shop");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    let (status, _) = api.req("PUT", "/projects/shop/scale", Some(&ada.token), Some(json!({"web": 2})));
    assert_eq!(status, 200);

    let (status, nodes) = api.req("GET", "/nodes", Some(&ada.token), None);
    assert_eq!(status, 200, "{nodes}");
    let [node] = nodes.as_array().expect("a list").as_slice() else { panic!("one node: {nodes}") };
    assert_eq!(
        (&node["id"], &node["role"], &node["state"], &node["availability"]),
        (&json!("local"), &json!("local"), &json!("ready"), &json!("active")),
        "{node}"
    );
    assert!(node["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{node}");
    let instances = node["instances"].as_array().expect("instances");
    let names: Vec<(&str, &str, i64, i64, &str)> = instances
        .iter()
        .map(|i| {
            let field = |k: &str| i[k].as_str().unwrap_or_default();
            (
                field("project"),
                field("name"),
                i["index"].as_i64().unwrap_or(0),
                i["version"].as_i64().unwrap_or(0),
                field("state"),
            )
        })
        .collect();
    assert_eq!(names, vec![("shop", "web.1", 1, 1, "running"), ("shop", "web.2", 2, 1, "running")], "{node}");
    // Each address is where the instance answers.
    for instance in instances {
        let addr: std::net::SocketAddr =
            instance["address"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{instance}"));
        let (status, body) = http_get(addr.port(), &addr.to_string(), "/");
        assert_eq!(status, 200, "{instance}: {body}");
        assert!(body.contains("static-hello"), "{body}");
    }

    let (status, body) = api.req("GET", "/nodes", Some(&bob), None);
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("only admins")), "{body}");
    let (status, body) = api.req("GET", "/nodes", None, None);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
}
