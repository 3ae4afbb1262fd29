//! `paastech access` (a project's members and roles, its transfer) and `paastech users`
//! (admins: list, disable, enable and delete accounts).

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ProjectArg;
use crate::client::{Client, print_table};
use crate::commands::{path_segment, resolve_project};

#[derive(Subcommand)]
pub enum AccessCommand {
    /// Give EMAIL a role on the project (or change the role they have): owner, developer
    /// or viewer.
    Add {
        #[command(flatten)]
        project: ProjectArg,
        email: String,
        #[arg(long, value_parser = ["owner", "developer", "viewer"])]
        role: String,
    },
    /// List the project's members and their roles.
    List(ProjectArg),
    /// Take EMAIL's role away (your own: leave the project).
    Remove {
        #[command(flatten)]
        project: ProjectArg,
        email: String,
    },
    /// Make EMAIL the project's owner; you stay a member with the owner role.
    Transfer {
        #[command(flatten)]
        project: ProjectArg,
        email: String,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// List every account.
    List,
    /// Refuse the account's logins, tokens and SSH keys, and end its sessions.
    Disable { user: String },
    /// Let a disabled account in again.
    Enable { user: String },
    /// Delete an account. When it owns projects, say what becomes of them:
    /// `--projects transfer --to EMAIL` or `--projects delete`.
    Delete {
        user: String,
        #[arg(long, value_parser = ["transfer", "delete"])]
        projects: Option<String>,
        /// Who gets the projects, with `--projects transfer`.
        #[arg(long)]
        to: Option<String>,
    },
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_members(members: &Value) {
    let rows: Vec<Vec<String>> = members
        .as_array()
        .map(|items| items.iter().map(|m| vec![text(&m["email"]), text(&m["role"]), text(&m["since"])]).collect())
        .unwrap_or_default();
    print_table(&["EMAIL", "ROLE", "SINCE"], &rows);
}

pub fn access(client: &Client, json_out: bool, cmd: AccessCommand) -> Result<()> {
    match cmd {
        AccessCommand::Add { project, email, role } => {
            let name = resolve_project(&project)?;
            let member: Value =
                client.post(&format!("/projects/{name}/collaborators"), &json!({"email": email, "role": role}))?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&member)?);
                return Ok(());
            }
            println!("{} is a {} of {name}.", text(&member["email"]), text(&member["role"]));
        }
        AccessCommand::List(project) => {
            let name = resolve_project(&project)?;
            let members: Value = client.get(&format!("/projects/{name}/collaborators"))?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&members)?);
                return Ok(());
            }
            print_members(&members);
        }
        AccessCommand::Remove { project, email } => {
            let name = resolve_project(&project)?;
            client.delete(&format!("/projects/{name}/collaborators/{}", path_segment(&email)))?;
            println!("{email} is no longer a member of {name}.");
        }
        AccessCommand::Transfer { project, email } => {
            let name = resolve_project(&project)?;
            let members: Value = client.post(&format!("/projects/{name}/transfer"), &json!({"email": email}))?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&members)?);
                return Ok(());
            }
            println!("{email} owns {name} now.");
            print_members(&members);
        }
    }
    Ok(())
}

pub fn users(client: &Client, json_out: bool, cmd: UsersCommand) -> Result<()> {
    match cmd {
        UsersCommand::List => {
            let users: Value = client.get("/users")?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&users)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = users
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|u| {
                            let mut flags = Vec::new();
                            if u["is_admin"] == Value::Bool(true) {
                                flags.push("admin");
                            }
                            if u["disabled"] == Value::Bool(true) {
                                flags.push("disabled");
                            }
                            vec![text(&u["id"]), text(&u["email"]), flags.join(","), text(&u["created_at"])]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["ID", "EMAIL", "FLAGS", "CREATED"], &rows);
        }
        UsersCommand::Disable { user } => set_disabled(client, &user, true)?,
        UsersCommand::Enable { user } => set_disabled(client, &user, false)?,
        UsersCommand::Delete { user, projects, to } => {
            let mut path = format!("/users/{}", path_segment(&user));
            match (projects.as_deref(), to.as_deref()) {
                (None, None) => {}
                (Some("transfer"), Some(to)) => path.push_str(&format!("?projects=transfer&to={}", path_segment(to))),
                (Some("transfer"), None) => bail!("--projects transfer needs --to EMAIL"),
                (Some(fate), None) => path.push_str(&format!("?projects={fate}")),
                (_, Some(_)) => bail!("--to goes with --projects transfer"),
            }
            client.delete(&path)?;
            println!("Deleted {user}.");
        }
    }
    Ok(())
}

fn set_disabled(client: &Client, user: &str, disabled: bool) -> Result<()> {
    let _: Value = client.patch(&format!("/users/{}", path_segment(user)), &json!({"disabled": disabled}))?;
    println!("{user} is {}.", if disabled { "disabled" } else { "enabled again" });
    Ok(())
}
