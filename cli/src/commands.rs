//! The client commands: each is one or two API calls and a readable (or `--json`) answer.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::{self, Client, SavedLogin, print_table};
use crate::{
    Command, CredentialArgs, EnvCommand, KeysCommand, ProjectArg, ProjectsCommand, TokensCommand,
};

pub fn run(
    server: &Option<String>,
    token: Option<String>,
    json_out: bool,
    command: Command,
) -> Result<()> {
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
        Command::Env(cmd) => env(&client, out, cmd),
        Command::Deployments(project) => deployments(&client, out, project),
        Command::Completions { .. } | Command::Server(_) => unreachable!("handled in main"),
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
        .map(|items| {
            items
                .iter()
                .map(|item| fields.iter().map(|f| text(&item[*f])).collect())
                .collect()
        })
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

fn signup(client: &Client, args: CredentialArgs) -> Result<()> {
    let (email, password) = email_and_password(&args, true)?;
    let user: Value = client.post(
        "/auth/signup",
        &json!({"email": email, "password": password}),
    )?;
    let admin = if user["is_admin"] == Value::Bool(true) {
        " (admin)"
    } else {
        ""
    };
    println!(
        "Created account {}{admin}. Now run: paastech login --email {}",
        text(&user["email"]),
        text(&user["email"])
    );
    Ok(())
}

fn login(client: &Client, args: CredentialArgs) -> Result<()> {
    let (email, password) = email_and_password(&args, false)?;
    let answer: Value = client.post(
        "/auth/login",
        &json!({"email": email, "password": password}),
    )?;
    let token = answer["token"]
        .as_str()
        .context("the server sent no token")?
        .to_owned();
    let path = client::save_login(&SavedLogin {
        server: client.base().to_owned(),
        email: email.clone(),
        token,
    })?;
    println!(
        "Logged in to {} as {email} (saved in {}).",
        client.base(),
        path.display()
    );
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
    let role = if me["is_admin"] == Value::Bool(true) {
        " (admin)"
    } else {
        ""
    };
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
            let public_key = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let key: Value = client.post(
                "/ssh-keys",
                &json!({"name": name, "public_key": public_key.trim()}),
            )?;
            if out.json {
                return out.json(&key);
            }
            println!(
                "Added key {} ({}) as id {}.",
                text(&key["name"]),
                text(&key["fingerprint"]),
                text(&key["id"])
            );
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
                &rows(
                    &tokens,
                    &["id", "name", "created_at", "last_used_at", "expires_at"],
                ),
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
    let output = std::process::Command::new("git")
        .args(["remote", "get-url", "paastech"])
        .output();
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
            print_table(
                &["NAME", "STATUS", "URL", "OWNER"],
                &rows(&projects, &["name", "status", "url", "owner"]),
            );
        }
        ProjectsCommand::Info(arg) => {
            let name = resolve_project(&arg)?;
            let project: Value = client.get(&format!("/projects/{name}"))?;
            if out.json {
                return out.json(&project);
            }
            for field in [
                "name",
                "status",
                "live_version",
                "url",
                "git_url",
                "owner",
                "created_at",
            ] {
                println!("{:<13} {}", format!("{field}:"), text(&project[field]));
            }
        }
        ProjectsCommand::Delete { name, yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("deleting {name} cannot be undone: pass --yes to confirm");
                }
                eprint!(
                    "This deletes {name}, its repository and its deployments. Type the name to confirm: "
                );
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
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("{pair:?} is not KEY=value"))?;
                changes.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            (project, changes)
        }
        EnvCommand::Unset { project, keys } => (
            project,
            keys.into_iter().map(|k| (k, Value::Null)).collect(),
        ),
    };
    let name = resolve_project(&project)?;
    let env: Value = client.patch(&format!("/projects/{name}/env"), &changes)?;
    if out.json {
        return out.json(&env);
    }
    println!(
        "Updated the env of {name}: {} variable(s) now set.",
        env.as_object().map_or(0, |o| o.len())
    );
    Ok(())
}

fn deployments(client: &Client, out: Output, arg: ProjectArg) -> Result<()> {
    let name = resolve_project(&arg)?;
    let list: Value = client.get(&format!("/projects/{name}/deployments"))?;
    if out.json {
        return out.json(&list);
    }
    let mut rows = rows(
        &list,
        &["version", "status", "commit", "cause", "created_at"],
    );
    for row in &mut rows {
        row[0] = format!("v{}", row[0]);
        row[2] = row[2].chars().take(10).collect();
    }
    print_table(&["VERSION", "STATUS", "COMMIT", "CAUSE", "CREATED"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::project_from_remote;

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
