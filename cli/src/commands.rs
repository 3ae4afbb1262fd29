//! The client commands: each is one or two API calls and a readable (or `--json`) answer.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::{self, Client, SavedLogin, print_table};
use crate::{
    AddonsCommand, Command, CredentialArgs, DomainsCommand, EnvCommand, HttpsCommand, KeysCommand, ProjectArg,
    ProjectsCommand, TokensCommand, WebhooksCommand,
};

pub fn run(server: &Option<String>, token: Option<String>, json_out: bool, command: Command) -> Result<()> {
    let client = Client::new(server.clone(), token)?;
    let out = Output { json: json_out };
    match command {
        Command::Signup(args) => signup(&client, args),
        Command::Login(args) => login(&client, args),
        Command::Logout => logout(),
        Command::Whoami => whoami(&client, out),
        Command::Keys(cmd) => keys(&client, out, cmd),
        Command::Tokens(cmd) => tokens(&client, out, cmd),
        Command::Projects(cmd) => projects(&client, out, cmd),
        Command::Access(cmd) => crate::access::access(&client, out.json, cmd),
        Command::Users(cmd) => crate::access::users(&client, out.json, cmd),
        Command::Env(cmd) => env(&client, out, cmd),
        Command::Domains(cmd) => domains(&client, out, cmd),
        Command::Https { project, change } => https(&client, out, project, change),
        Command::Previews { project, state } => previews(&client, out, project, state),
        Command::Sleep { project, state, after, ignore_workers } => {
            sleep(&client, out, project, state, after, ignore_workers)
        }
        Command::Addons { project, command } => addons(&client, out, project, command),
        Command::Webhooks { project, command } => webhooks(&client, out, project, command),
        Command::Cron(project) => cron(&client, out, project),
        Command::Audit { project, limit, before } => audit(&client, out, project.as_deref(), limit, before),
        Command::Deployments(project) => deployments(&client, out, project),
        Command::Deploy { project, version } => deploy(&client, out, project, version, false),
        Command::Rollback { project, version } => deploy(&client, out, project, version, true),
        Command::Logs { project, follow, lines } => logs(&client, project, follow, lines),
        Command::Scale { project, counts } => scale(&client, out, project, counts),
        Command::Ps(project) => ps(&client, out, project),
        Command::Stop { project, process } => lifecycle(&client, out, project, "stop", process),
        Command::Start { project, process } => lifecycle(&client, out, project, "start", process),
        Command::Restart { project, process } => lifecycle(&client, out, project, "restart", process),
        Command::Run { project, command, tty, no_tty } => {
            if crate::interactive::wanted(tty, no_tty, out.json) {
                let name = resolve_project(&project)?;
                let code = crate::interactive::run(&client, &name, command)?;
                std::process::exit(code);
            }
            run_once(&client, out, project, command)
        }
        Command::Limits { project, settings } => limits(&client, out, project, settings),
        Command::Nodes => nodes(&client, out),
        Command::Completions { .. } | Command::Server(_) | Command::Internal(_) => {
            unreachable!("handled in main")
        }
    }
}

#[derive(Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn json(&self, value: &Value) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rows(items: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    items
        .as_array()
        .map(|items| items.iter().map(|item| fields.iter().map(|f| text(&item[*f])).collect()).collect())
        .unwrap_or_default()
}

fn email_and_password(args: &CredentialArgs, confirm: bool) -> Result<(String, String)> {
    let email = match &args.email {
        Some(email) => email.clone(),
        None => {
            eprint!("Email: ");
            std::io::stderr().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for the password: use --password-stdin");
        }
        let password = rpassword::prompt_password("Password: ")?;
        if confirm && rpassword::prompt_password("Password (again): ")? != password {
            bail!("the passwords do not match");
        }
        password
    };
    Ok((email, password))
}

/// The code of a two-factor login: the next line of standard input with
/// `--password-stdin`, else asked on the terminal.
fn two_factor_code(args: &CredentialArgs) -> Result<String> {
    if !args.password_stdin {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for the two-factor code: use --password-stdin with the code on the next line");
        }
        eprint!("Two-factor code (or a recovery code): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let code = line.trim().to_owned();
    if code.is_empty() {
        bail!("this account has two-factor login: give a code of your app, or a recovery code");
    }
    Ok(code)
}

fn signup(client: &Client, args: CredentialArgs) -> Result<()> {
    let (email, password) = email_and_password(&args, true)?;
    let user: Value = client.post("/auth/signup", &json!({"email": email, "password": password}))?;
    let admin = if user["is_admin"] == Value::Bool(true) { " (admin)" } else { "" };
    println!(
        "Created account {}{admin}. Now run: paastech login --email {}",
        text(&user["email"]),
        text(&user["email"])
    );
    Ok(())
}

fn login(client: &Client, args: CredentialArgs) -> Result<()> {
    let (email, password) = email_and_password(&args, false)?;
    let mut body = json!({"email": email, "password": password});
    let answer: Value = match client.post("/auth/login", &body) {
        Ok(answer) => answer,
        Err(err) if err.is::<client::TwoFactorRequired>() => {
            body["code"] = json!(two_factor_code(&args)?);
            client.post("/auth/login", &body)?
        }
        Err(err) => return Err(err),
    };
    let token = answer["token"].as_str().context("the server sent no token")?.to_owned();
    let path = client::save_login(&SavedLogin { server: client.base().to_owned(), email: email.clone(), token })?;
    println!("Logged in to {} as {email} (saved in {}).", client.base(), path.display());
    Ok(())
}

fn logout() -> Result<()> {
    if client::forget_login()? {
        println!("Logged out.");
    } else {
        println!("Not logged in.");
    }
    Ok(())
}

fn whoami(client: &Client, out: Output) -> Result<()> {
    let me: Value = client.get("/me")?;
    if out.json {
        return out.json(&me);
    }
    let role = if me["is_admin"] == Value::Bool(true) { " (admin)" } else { "" };
    println!("{}{role} on {}", text(&me["email"]), client.base());
    Ok(())
}

fn default_key_path() -> Result<PathBuf> {
    let home = dirs::home_dir().context("no home directory to find ~/.ssh in")?;
    for name in ["id_ed25519.pub", "id_rsa.pub"] {
        let path = home.join(".ssh").join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("no ~/.ssh/id_ed25519.pub or ~/.ssh/id_rsa.pub: pass the path of a public key")
}

fn keys(client: &Client, out: Output, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Add { path, name } => {
            let path = match path {
                Some(path) => path,
                None => default_key_path()?,
            };
            let public_key = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let key: Value = client.post("/ssh-keys", &json!({"name": name, "public_key": public_key.trim()}))?;
            if out.json {
                return out.json(&key);
            }
            println!("Added key {} ({}) as id {}.", text(&key["name"]), text(&key["fingerprint"]), text(&key["id"]));
        }
        KeysCommand::List => {
            let keys: Value = client.get("/ssh-keys")?;
            if out.json {
                return out.json(&keys);
            }
            print_table(
                &["ID", "NAME", "FINGERPRINT", "ADDED"],
                &rows(&keys, &["id", "name", "fingerprint", "created_at"]),
            );
        }
        KeysCommand::Remove { id } => {
            client.delete(&format!("/ssh-keys/{id}"))?;
            println!("Removed key {id}.");
        }
    }
    Ok(())
}

fn domains(client: &Client, out: Output, cmd: DomainsCommand) -> Result<()> {
    match cmd {
        DomainsCommand::Add { project, domain } => {
            let name = resolve_project(&project)?;
            let added: Value = client.post(&format!("/projects/{name}/domains"), &json!({"domain": domain}))?;
            if out.json {
                return out.json(&added);
            }
            println!("Added {} to {name}: {}", text(&added["domain"]), text(&added["url"]));
            println!("Point its DNS (an A/AAAA record, or a CNAME) at this server for it to reach the app.");
        }
        DomainsCommand::List(project) => {
            let name = resolve_project(&project)?;
            let domains: Value = client.get(&format!("/projects/{name}/domains"))?;
            if out.json {
                return out.json(&domains);
            }
            let rows: Vec<Vec<String>> = domains
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|d| {
                            let cert = certificate_summary(&d["certificate"]);
                            vec![text(&d["domain"]), text(&d["url"]), cert, text(&d["created_at"])]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["DOMAIN", "URL", "CERTIFICATE", "ADDED"], &rows);
        }
        DomainsCommand::Remove { project, domain } => {
            let name = resolve_project(&project)?;
            client.delete(&format!("/projects/{name}/domains/{}", path_segment(&domain)))?;
            println!("Removed {domain} from {name}.");
        }
    }
    Ok(())
}

/// A certificate's state in a few words: `valid until …`, `failed: why (retry at …)`.
fn certificate_summary(cert: &Value) -> String {
    if cert.is_null() {
        return "-".into();
    }
    let status = text(&cert["status"]);
    let mut summary = match (status.as_str(), cert["expires_at"].as_str()) {
        ("valid", Some(until)) => format!("valid until {until}"),
        ("expired", Some(since)) => format!("expired {since}"),
        ("operator", _) => "the operator's certificate".into(),
        _ => status.clone(),
    };
    if let Some(error) = cert["last_error"].as_str() {
        summary.push_str(&format!(": {error}"));
    }
    if let Some(next) = cert["next_attempt_at"].as_str()
        && status != "valid"
    {
        summary.push_str(&format!(" (next attempt {next})"));
    }
    summary
}

fn webhooks(client: &Client, out: Output, project: ProjectArg, command: Option<WebhooksCommand>) -> Result<()> {
    // `-p` may stand before or after the verb.
    let Some(command) = command else {
        let name = resolve_project(&project)?;
        let mut hooks: Value = client.get(&format!("/projects/{name}/webhooks"))?;
        let mut rows = Vec::new();
        for hook in hooks.as_array_mut().map(Vec::as_mut_slice).unwrap_or_default() {
            let id = hook["id"].as_i64().unwrap_or_default();
            let attempts: Value = client.get(&format!("/projects/{name}/webhooks/{id}/deliveries"))?;
            let last = attempts.as_array().and_then(|a| a.first()).map(attempt_summary).unwrap_or("none yet".into());
            let events = hook["events"].as_array().map(|e| e.iter().map(text).collect::<Vec<_>>().join(","));
            rows.push(vec![id.to_string(), text(&hook["url"]), events.unwrap_or_default(), last]);
            hook["deliveries"] = attempts;
        }
        if out.json {
            return out.json(&hooks);
        }
        print_table(&["ID", "URL", "EVENTS", "LAST DELIVERY"], &rows);
        return Ok(());
    };
    match command {
        WebhooksCommand::Add { project: p, url, events } => {
            let project = resolve_project(&p.or(project))?;
            let created: Value =
                client.post(&format!("/projects/{project}/webhooks"), &json!({"url": url, "events": events}))?;
            if out.json {
                return out.json(&created);
            }
            let events = created["events"].as_array().map(|e| e.iter().map(text).collect::<Vec<_>>().join(", "));
            println!(
                "Added webhook {} to {project}: {} ({})",
                created["id"],
                text(&created["url"]),
                events.unwrap_or_default()
            );
            println!("secret: {}", text(&created["secret"]));
            println!(
                "Keep it: it is not shown again. Each POST carries X-PaaSTech-Signature-256: sha256=<HMAC-SHA256 of the body with it>."
            );
        }
        WebhooksCommand::Remove { project: p, id } => {
            let project = resolve_project(&p.or(project))?;
            client.delete(&format!("/projects/{project}/webhooks/{id}"))?;
            println!("Removed webhook {id} from {project}.");
        }
        WebhooksCommand::Deliveries { project: p, id } => {
            let project = resolve_project(&p.or(project))?;
            let attempts: Value = client.get(&format!("/projects/{project}/webhooks/{id}/deliveries"))?;
            if out.json {
                return out.json(&attempts);
            }
            let rows: Vec<Vec<String>> = attempts
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|a| {
                            vec![
                                text(&a["at"]),
                                text(&a["event"]),
                                text(&a["delivery"]),
                                a["attempt"].to_string(),
                                attempt_summary(a),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["AT", "EVENT", "DELIVERY", "ATTEMPT", "RESULT"], &rows);
        }
    }
    Ok(())
}

/// One delivery attempt in a few words: `200 in 12 ms`, `error: why (10003 ms)`.
fn attempt_summary(attempt: &Value) -> String {
    let ms = attempt["duration_ms"].as_u64().unwrap_or_default();
    match attempt["status_code"].as_u64() {
        Some(code) => format!("{code} in {ms} ms"),
        None => format!("error: {} ({ms} ms)", text(&attempt["error"])),
    }
}

fn addons(client: &Client, out: Output, project: ProjectArg, command: Option<AddonsCommand>) -> Result<()> {
    // `-p` may stand before or after the verb.
    let Some(command) = command else {
        let name = resolve_project(&project)?;
        let addons: Value = client.get(&format!("/projects/{name}/addons"))?;
        if out.json {
            return out.json(&addons);
        }
        print_table(&["NAME", "KIND", "CREATED"], &rows(&addons, &["name", "kind", "created_at"]));
        return Ok(());
    };
    match command {
        AddonsCommand::Create { project: p, kind, name } => {
            let project = resolve_project(&p.or(project))?;
            let created: Value =
                client.post(&format!("/projects/{project}/addons"), &json!({"kind": kind, "name": name}))?;
            if out.json {
                return out.json(&created);
            }
            let addon = text(&created["addon"]["name"]);
            match created["deployment_version"].as_i64() {
                Some(version) => println!("Created {addon} ({kind}) for {project}; deployed v{version}"),
                None => println!("Created {addon} ({kind}) for {project}; its config is used from the next deploy"),
            }
        }
        AddonsCommand::Info { project: p, name } => {
            let project = resolve_project(&p.or(project))?;
            let info: Value = client.get(&format!("/projects/{project}/addons/{name}"))?;
            if out.json {
                return out.json(&info);
            }
            println!(
                "name:    {}\nkind:    {}\ncreated: {}",
                text(&info["name"]),
                text(&info["kind"]),
                text(&info["created_at"])
            );
            if let Some(config) = info["config"].as_object() {
                for (key, value) in config {
                    println!("{key}={}", text(value));
                }
            }
        }
        AddonsCommand::Destroy { project: p, name, yes } => {
            let project = resolve_project(&p.or(project))?;
            if !yes {
                bail!("destroying {name} deletes all its data: run again with --yes to confirm");
            }
            client.delete(&format!("/projects/{project}/addons/{name}"))?;
            println!("Destroyed {name} of {project}");
        }
        AddonsCommand::Backup { project: p, name } => {
            let project = resolve_project(&p.or(project))?;
            let mut backup = client.get_stream(&format!("/projects/{project}/addons/{name}/backup"))?;
            let mut stdout = std::io::stdout().lock();
            std::io::copy(&mut backup, &mut stdout).context("the backup was cut short: it is incomplete")?;
            stdout.flush().context("writing the backup")?;
        }
        AddonsCommand::Restore { project: p, name } => {
            let project = resolve_project(&p.or(project))?;
            client.post_reader(&format!("/projects/{project}/addons/{name}/restore"), std::io::stdin().lock())?;
            eprintln!("Restored {name} of {project}");
        }
    }
    Ok(())
}

fn https(client: &Client, out: Output, project: ProjectArg, change: Option<HttpsCommand>) -> Result<()> {
    // `-p` may stand before or after the verb.
    let (project, body) = match change {
        None => (project, None),
        Some(HttpsCommand::Redirect { project: p, state }) => (p.or(project), Some(json!({"redirect": state == "on"}))),
        Some(HttpsCommand::Hsts { project: p, max_age }) => {
            let max_age =
                match max_age.as_str() {
                    "off" => Value::Null,
                    seconds => json!(seconds.parse::<i64>().with_context(|| format!(
                        "{seconds:?} is not a max-age: give seconds (0 to 63072000) or off"
                    ))?),
                };
            (p.or(project), Some(json!({"hsts_max_age": max_age})))
        }
    };
    let name = resolve_project(&project)?;
    let path = format!("/projects/{name}/https");
    let policy: Value = match body {
        Some(body) => client.patch(&path, &body)?,
        None => client.get(&path)?,
    };
    if out.json {
        return out.json(&policy);
    }
    let redirect = if policy["redirect"].as_bool() == Some(true) { "on" } else { "off" };
    let hsts = policy["hsts_max_age"].as_u64().map_or("off".to_owned(), |s| format!("max-age={s}"));
    println!("{name}: redirect to https {redirect}, hsts {hsts}");
    Ok(())
}

fn previews(client: &Client, out: Output, project: ProjectArg, state: Option<String>) -> Result<()> {
    let name = resolve_project(&project)?;
    let path = format!("/projects/{name}/previews");
    let view: Value = match state.as_deref() {
        Some(state) => client.put(&path, &json!({ "enabled": state == "on" }))?,
        None => client.get(&path)?,
    };
    if out.json {
        return out.json(&view);
    }
    let enabled = if view["enabled"].as_bool() == Some(true) { "on" } else { "off" };
    println!("{name}: previews {enabled}");
    let previews = view["previews"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !previews.is_empty() {
        let rows = previews
            .iter()
            .map(|p| {
                vec![
                    text(&p["name"]),
                    text(&p["branch"]),
                    p["live_version"].as_i64().map_or("-".into(), |v| format!("v{v}")),
                    text(&p["url"]),
                ]
            })
            .collect::<Vec<_>>();
        print_table(&["NAME", "BRANCH", "LIVE", "URL"], &rows);
    }
    Ok(())
}

fn sleep(
    client: &Client,
    out: Output,
    project: ProjectArg,
    state: Option<String>,
    after: Option<u32>,
    ignore_workers: bool,
) -> Result<()> {
    let name = resolve_project(&project)?;
    let path = format!("/projects/{name}/sleep");
    let view: Value = match state.as_deref() {
        Some(state) => {
            let mut body = json!({ "enabled": state == "on" });
            if let Some(after) = after {
                body["after_minutes"] = json!(after);
            }
            if ignore_workers {
                body["workers_keep_awake"] = json!(false);
            }
            client.put(&path, &body)?
        }
        None if after.is_some() || ignore_workers => {
            bail!("say `on` to change the idle time: paastech sleep on --after MINUTES")
        }
        None => client.get(&path)?,
    };
    if out.json {
        return out.json(&view);
    }
    print_sleep(&name, &view);
    Ok(())
}

/// One line for a project's sleep (and a second with its last wake's failure).
fn print_sleep(name: &str, view: &Value) {
    let now = if view["asleep"].as_bool() == Some(true) { "asleep" } else { "awake" };
    if view["enabled"].as_bool() == Some(true) {
        let workers =
            if view["workers_keep_awake"].as_bool() == Some(false) { "; workers do not keep it awake" } else { "" };
        println!("{name}: sleep on, after {} min without a request{workers}; {now}", text(&view["after_minutes"]));
    } else {
        println!("{name}: sleep off; {now}");
    }
    if let Some(error) = view["wake_error"].as_str() {
        println!("last wake failed: {error}");
    }
}

/// `s` as one URL path segment: every byte but the unreserved ones percent-encoded, so a
/// `/`, `?` or `#` a user typed stays inside the segment.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tokens(client: &Client, out: Output, cmd: TokensCommand) -> Result<()> {
    match cmd {
        TokensCommand::Create { name } => {
            let token: Value = client.post("/tokens", &json!({"name": name}))?;
            if out.json {
                return out.json(&token);
            }
            println!("{}", text(&token["token"]));
            eprintln!("This token is shown once: store it now (e.g. as PAASTECH_TOKEN).");
        }
        TokensCommand::List => {
            let tokens: Value = client.get("/tokens")?;
            if out.json {
                return out.json(&tokens);
            }
            print_table(
                &["ID", "NAME", "CREATED", "LAST USED", "EXPIRES"],
                &rows(&tokens, &["id", "name", "created_at", "last_used_at", "expires_at"]),
            );
        }
        TokensCommand::Revoke { id } => {
            client.delete(&format!("/tokens/{id}"))?;
            println!("Revoked token {id}.");
        }
    }
    Ok(())
}

/// The project of `-p`, else the one the `paastech` git remote of the current repository
/// points at (`ssh://git@host:port/NAME.git`).
pub fn resolve_project(arg: &ProjectArg) -> Result<String> {
    if let Some(name) = &arg.project {
        return Ok(name.clone());
    }
    let output = std::process::Command::new("git").args(["remote", "get-url", "paastech"]).output();
    if let Ok(output) = output
        && output.status.success()
        && let Some(name) = project_from_remote(String::from_utf8_lossy(&output.stdout).trim())
    {
        return Ok(name);
    }
    bail!("which project? pass -p NAME, or run inside a git repository with a `paastech` remote")
}

fn project_from_remote(url: &str) -> Option<String> {
    let last = url.trim_end_matches('/').rsplit(['/', ':']).next()?;
    let name = last.strip_suffix(".git").unwrap_or(last);
    (!name.is_empty()).then(|| name.to_owned())
}

fn projects(client: &Client, out: Output, cmd: ProjectsCommand) -> Result<()> {
    match cmd {
        ProjectsCommand::Create { name } => {
            let project: Value = client.post("/projects", &json!({"name": name}))?;
            if out.json {
                return out.json(&project);
            }
            println!("Created project {}.", text(&project["name"]));
            println!("  git remote add paastech {}", text(&project["git_url"]));
            println!("  git push paastech main");
            println!("It will be served at {}", text(&project["url"]));
        }
        ProjectsCommand::List => {
            let projects: Value = client.get("/projects")?;
            if out.json {
                return out.json(&projects);
            }
            print_table(&["NAME", "STATUS", "URL", "OWNER"], &rows(&projects, &["name", "status", "url", "owner"]));
        }
        ProjectsCommand::Info(arg) => {
            let name = resolve_project(&arg)?;
            let project: Value = client.get(&format!("/projects/{name}"))?;
            if out.json {
                return out.json(&project);
            }
            for field in ["name", "status", "live_version", "url", "git_url", "owner", "created_at"] {
                println!("{:<13} {}", format!("{field}:"), text(&project[field]));
            }
            if !project["certificate"].is_null() {
                println!("{:<13} {}", "certificate:", certificate_summary(&project["certificate"]));
            }
            if project["stopped"].as_bool() == Some(true) {
                println!("{:<13} yes (`paastech start` starts it)", "stopped:");
            } else if let Some(types) = project["stopped_processes"].as_array().filter(|t| !t.is_empty()) {
                let types: Vec<String> = types.iter().map(text).collect();
                println!("{:<13} {}", "stopped:", types.join(", "));
            }
        }
        ProjectsCommand::Delete { name, yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("deleting {name} cannot be undone: pass --yes to confirm");
                }
                eprint!("This deletes {name}, its repository and its deployments. Type the name to confirm: ");
                std::io::stderr().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if line.trim() != name {
                    bail!("the name did not match; nothing deleted");
                }
            }
            client.delete(&format!("/projects/{name}"))?;
            println!("Deleted project {name}.");
        }
    }
    Ok(())
}

fn env(client: &Client, out: Output, cmd: EnvCommand) -> Result<()> {
    let (project, changes) = match cmd {
        EnvCommand::List(arg) => {
            let name = resolve_project(&arg)?;
            let env: Value = client.get(&format!("/projects/{name}/env"))?;
            if out.json {
                return out.json(&env);
            }
            if let Some(vars) = env.as_object() {
                for (key, value) in vars {
                    println!("{key}={}", text(value));
                }
            }
            return Ok(());
        }
        EnvCommand::Set { project, pairs } => {
            let mut changes = BTreeMap::new();
            for pair in pairs {
                let (key, value) = pair.split_once('=').with_context(|| format!("{pair:?} is not KEY=value"))?;
                changes.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            (project, changes)
        }
        EnvCommand::Unset { project, keys } => (project, keys.into_iter().map(|k| (k, Value::Null)).collect()),
    };
    let name = resolve_project(&project)?;
    let env: Value = client.patch(&format!("/projects/{name}/env"), &changes)?;
    if out.json {
        return out.json(&env);
    }
    println!("Updated the env of {name}: {} variable(s) now set.", env.as_object().map_or(0, |o| o.len()));
    Ok(())
}

fn cron(client: &Client, out: Output, arg: ProjectArg) -> Result<()> {
    let name = resolve_project(&arg)?;
    let cron: Value = client.get(&format!("/projects/{name}/cron"))?;
    if out.json {
        return out.json(&cron);
    }
    let jobs = rows(&cron["jobs"], &["job", "schedule", "timezone", "next_run_at", "command"]);
    if jobs.is_empty() {
        println!("{name} has no scheduled jobs: declare them in app.json under \"cron\" and push.");
    } else {
        let jobs: Vec<Vec<String>> = jobs
            .into_iter()
            .map(|mut row| {
                row[0] = format!("cron.{}", row[0]);
                if row[3] == "-" {
                    row[3] = "stopped".into();
                }
                row
            })
            .collect();
        print_table(&["JOB", "SCHEDULE", "TIMEZONE", "NEXT RUN", "COMMAND"], &jobs);
    }
    let runs = cron["runs"].as_array().map(Vec::as_slice).unwrap_or_default();
    if runs.is_empty() {
        return Ok(());
    }
    println!();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let result = match (run["outcome"].as_str(), run["exit_code"].as_i64()) {
                (Some("skipped"), _) => "skipped (still running)".to_owned(),
                (_, Some(code)) => code.to_string(),
                _ => format!("error: {}", text(&run["error"])),
            };
            vec![
                format!("cron.{}", text(&run["job"])),
                format!("v{}", text(&run["version"])),
                text(&run["scheduled_at"]),
                text(&run["started_at"]),
                text(&run["finished_at"]),
                result,
            ]
        })
        .collect();
    print_table(&["JOB", "VERSION", "SCHEDULED", "STARTED", "ENDED", "EXIT CODE"], &rows);
    Ok(())
}

fn deployments(client: &Client, out: Output, arg: ProjectArg) -> Result<()> {
    let name = resolve_project(&arg)?;
    let list: Value = client.get(&format!("/projects/{name}/deployments"))?;
    if out.json {
        return out.json(&list);
    }
    let mut rows = rows(&list, &["version", "status", "commit", "cause", "created_at"]);
    for row in &mut rows {
        row[0] = format!("v{}", row[0]);
        row[2] = row[2].chars().take(10).collect();
    }
    print_table(&["VERSION", "STATUS", "COMMIT", "CAUSE", "CREATED"], &rows);
    Ok(())
}

fn deploy(client: &Client, out: Output, arg: ProjectArg, version: Option<i64>, rollback: bool) -> Result<()> {
    let name = resolve_project(&arg)?;
    let version = match (version, rollback) {
        (Some(v), _) => Some(v),
        (None, false) => None,
        (None, true) => Some(previous_version(client, &name)?),
    };
    if let Some(v) = version {
        eprintln!("Deploying v{v} of {name} (its build and config)…");
    } else {
        eprintln!("Deploying the latest build of {name}…");
    }
    let deployment: Value = client.post(&format!("/projects/{name}/deployments"), &json!({"version": version}))?;
    if out.json {
        return out.json(&deployment);
    }
    println!("v{} of {name} is {}.", text(&deployment["version"]), text(&deployment["status"]));
    Ok(())
}

/// The version that was live before the live one.
fn previous_version(client: &Client, name: &str) -> Result<i64> {
    let list: Value = client.get(&format!("/projects/{name}/deployments?limit=500"))?;
    let list = list.as_array().cloned().unwrap_or_default();
    let live = list.iter().find(|d| d["status"] == "live").and_then(|d| d["version"].as_i64());
    let live = live.with_context(|| format!("{name} has no live deployment to roll back from"))?;
    list.iter()
        .filter(|d| d["status"] == "superseded")
        .filter_map(|d| d["version"].as_i64())
        .find(|v| *v < live)
        .with_context(|| format!("{name} has no earlier version that was live: pass a version"))
}

fn logs(client: &Client, arg: ProjectArg, follow: bool, lines: usize) -> Result<()> {
    let name = resolve_project(&arg)?;
    let mut reader = client.get_stream(&format!("/projects/{name}/logs?follow={follow}&lines={lines}"))?;
    let mut stdout = std::io::stdout().lock();
    let mut buffer = [0u8; 8192];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        stdout.write_all(&buffer[..n])?;
        stdout.flush()?;
    }
}

/// Prints a one-off command's output as it comes, then exits with its exit code.
fn run_once(client: &Client, out: Output, arg: ProjectArg, command: Vec<String>) -> Result<()> {
    let name = resolve_project(&arg)?;
    let reader = client.post_stream(&format!("/projects/{name}/run"), &json!({ "command": command }))?;
    let mut stdout = std::io::stdout().lock();
    for event in std::io::BufReader::new(reader).lines() {
        let event = event.context("reading the command's output")?;
        if out.json {
            writeln!(stdout, "{event}")?;
        }
        let event: Value = serde_json::from_str(&event).context("unexpected answer from the server")?;
        if let Some(line) = event["line"].as_str() {
            if !out.json {
                writeln!(stdout, "{line}")?;
            }
        } else if let Some(code) = event["exit_code"].as_i64() {
            stdout.flush()?;
            std::process::exit(i32::try_from(code).unwrap_or(1));
        } else if let Some(message) = event["error"]["message"].as_str() {
            stdout.flush()?;
            bail!("{message}");
        }
        stdout.flush()?;
    }
    bail!("the server ended the command's output without its exit code")
}

fn scale(client: &Client, out: Output, arg: ProjectArg, counts: Vec<String>) -> Result<()> {
    let name = resolve_project(&arg)?;
    let mut scale = BTreeMap::new();
    for pair in counts {
        let (process, count) = pair.split_once('=').with_context(|| format!("{pair:?} is not TYPE=N"))?;
        let count: u32 = count.parse().with_context(|| format!("{pair:?}: N must be a whole number"))?;
        scale.insert(process.to_owned(), count);
    }
    let result: Value = client.put(&format!("/projects/{name}/scale"), &scale)?;
    if out.json {
        return out.json(&result);
    }
    let shown: Vec<String> =
        result.as_object().map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
    println!("Scaled {name}: {}", shown.join(" "));
    Ok(())
}

/// `stop`, `start` or `restart` (the API route of the same name), of one process type or all.
fn lifecycle(client: &Client, out: Output, arg: ProjectArg, verb: &str, process: Option<String>) -> Result<()> {
    let name = resolve_project(&arg)?;
    let body = match &process {
        Some(process) => json!({ "process": process }),
        None => json!({}),
    };
    let result: Value = client.post(&format!("/projects/{name}/{verb}"), &body)?;
    if out.json {
        return out.json(&result);
    }
    let what = process.as_deref().map_or_else(|| name.clone(), |p| format!("{p} of {name}"));
    match verb {
        "restart" => {
            let restarted: Vec<&str> =
                result["restarted"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if restarted.is_empty() {
                println!("Nothing of {what} runs: nothing to restart.");
            } else {
                println!("Restarted {what}: {}", restarted.join(" "));
            }
        }
        _ => {
            let stopped: Vec<&str> =
                result["stopped_processes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let done = if verb == "stop" { "Stopped" } else { "Started" };
            println!("{done} {what}.");
            if result["stopped"].as_bool() == Some(true) {
                println!("{name} is stopped: `paastech start` starts it.");
            } else if !stopped.is_empty() {
                println!("Stopped process types: {}", stopped.join(", "));
            }
        }
    }
    Ok(())
}

fn ps(client: &Client, out: Output, arg: ProjectArg) -> Result<()> {
    let name = resolve_project(&arg)?;
    let stats: Value = client.get(&format!("/projects/{name}/stats"))?;
    let instances = &stats["instances"];
    if out.json {
        return out.json(instances);
    }
    let mut rows = rows(instances, &["name", "version", "state", "restarts"]);
    for (row, instance) in rows.iter_mut().zip(instances.as_array().into_iter().flatten()) {
        row[1] = format!("v{}", row[1]);
        row.push(instance["cpu_percent"].as_f64().map_or("-".into(), |p| format!("{p:.1}%")));
        row.push(match (instance["memory_bytes"].as_u64(), instance["memory_limit_bytes"].as_u64()) {
            (Some(used), Some(limit)) => format!("{} / {}", mebibytes(used), mebibytes(limit)),
            (Some(used), None) => mebibytes(used),
            (None, _) => "-".into(),
        });
    }
    print_table(&["INSTANCE", "VERSION", "STATE", "RESTARTS", "CPU", "MEMORY"], &rows);
    let sleep: Value = client.get(&format!("/projects/{name}/sleep"))?;
    if sleep["enabled"].as_bool() == Some(true) || sleep["asleep"].as_bool() == Some(true) {
        if sleep["asleep"].as_bool() == Some(true) {
            println!("web: asleep (the next request wakes it)");
        }
        print_sleep(&name, &sleep);
    }
    Ok(())
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn audit(client: &Client, out: Output, project: Option<&str>, limit: u32, before: Option<i64>) -> Result<()> {
    let mut path = format!("/audit?limit={limit}");
    if let Some(project) = project {
        path.push_str(&format!("&project={}", path_segment(project)));
    }
    if let Some(before) = before {
        path.push_str(&format!("&before={before}"));
    }
    let events: Value = client.get(&path)?;
    if out.json {
        return out.json(&events);
    }
    let rows = rows(&events, &["id", "at", "actor", "address", "project", "action", "detail"]);
    if rows.is_empty() {
        println!("No audit records.");
    } else {
        print_table(&["ID", "AT", "WHO", "FROM", "PROJECT", "ACTION", "DETAIL"], &rows);
    }
    Ok(())
}

fn nodes(client: &Client, out: Output) -> Result<()> {
    let nodes: Value = client.get("/nodes")?;
    if out.json {
        return out.json(&nodes);
    }
    let mut rows = rows(&nodes, &["id", "hostname", "address", "role", "state", "availability"]);
    for (row, node) in rows.iter_mut().zip(nodes.as_array().into_iter().flatten()) {
        // Each instance as PROJECT/TYPE.N, so a node's line says what runs there.
        let instances: Vec<String> = node["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{}/{}", text(&i["project"]), text(&i["name"])))
            .collect();
        row.push(if instances.is_empty() { "-".to_owned() } else { instances.join(" ") });
    }
    print_table(&["ID", "HOSTNAME", "ADDRESS", "ROLE", "STATE", "AVAILABILITY", "INSTANCES"], &rows);
    Ok(())
}

fn limits(client: &Client, out: Output, arg: ProjectArg, settings: Vec<String>) -> Result<()> {
    let name = resolve_project(&arg)?;
    let path = format!("/projects/{name}/limits");
    let mut limits: Value = client.get(&path)?;
    if !settings.is_empty() {
        for setting in &settings {
            let (key, value) =
                setting.split_once('=').with_context(|| format!("{setting:?} is not memory=MB or cpus=N"))?;
            let value = match (key, value) {
                (_, "default") => Value::Null,
                ("memory", mb) => {
                    json!(mb.parse::<u64>().with_context(|| format!("memory={mb}: a whole number of MiB"))?)
                }
                ("cpus", cpus) => json!(cpus.parse::<f64>().with_context(|| format!("cpus={cpus}: a number"))?),
                _ => bail!("unknown limit {key:?}: use memory=MB or cpus=N"),
            };
            let field = if key == "memory" { "memory_mb" } else { "cpus" };
            limits[field] = value;
        }
        limits = client.put(&path, &limits)?;
    }
    if out.json {
        return out.json(&limits);
    }
    let memory = limits["memory_mb"].as_u64().map(|mb| format!("{mb} MiB")).unwrap_or("server default".into());
    let cpus = limits["cpus"].as_f64().map(|c| c.to_string()).unwrap_or("server default".into());
    println!("{name}: memory {memory}, cpus {cpus}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{path_segment, project_from_remote};

    #[test]
    fn path_segments_keep_reserved_characters_inside() {
        assert_eq!(path_segment("www.example.com"), "www.example.com");
        assert_eq!(path_segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(path_segment("bücher.example"), "b%C3%BCcher.example");
    }

    #[test]
    fn project_names_from_remotes() {
        for (url, name) in [
            ("ssh://git@paas.example.com:2222/blog.git", Some("blog")),
            ("ssh://git@127.0.0.1:2222/blog", Some("blog")),
            ("git@paas.example.com:shop.git", Some("shop")),
            ("", None),
        ] {
            assert_eq!(project_from_remote(url).as_deref(), name, "{url:?}");
        }
    }
}
