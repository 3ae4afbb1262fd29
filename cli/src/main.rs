//! `paastech`: the client commands, and `paastech server`.

mod access;
mod backup;
mod client;
mod commands;
mod config;
mod interactive;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// mimalloc rather than glibc's malloc: the ingress allocates and frees small buffers for
/// every request (headers, HTTP/2 frames, TLS records), and glibc's arenas spent 6% of its
/// time under HTTP/2 load in `perf` (malloc, free, consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "paastech", version, about = "PaaSTech: a self-hosted platform as a service")]
struct Cli {
    /// The PaaSTech server (API address), e.g. http://127.0.0.1:7000.
    #[arg(long, global = true, env = "PAASTECH_SERVER")]
    server: Option<String>,
    /// An API token (default: the saved login).
    #[arg(long, global = true, env = "PAASTECH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print listings as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ProjectArg {
    /// The project (default: the one the `paastech` git remote points at).
    #[arg(short = 'p', long = "project")]
    project: Option<String>,
}

impl ProjectArg {
    /// This one if it names a project, else `other`.
    fn or(self, other: ProjectArg) -> ProjectArg {
        if self.project.is_some() { self } else { other }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create an account (the first account on a server is its admin).
    Signup(CredentialArgs),
    /// Log in and save the token for later commands.
    Login(CredentialArgs),
    /// Forget the saved login.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// Manage the SSH keys you push with.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Create, list, inspect and delete projects.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// A project's members and their roles (owner, developer, viewer): `access add EMAIL
    /// --role ROLE`, `access list`, `access remove EMAIL`, `access transfer EMAIL`.
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// Admins: `users list`, `users disable|enable USER`, `users delete USER [--projects
    /// transfer --to EMAIL | --projects delete]` (USER: an email or id).
    #[command(subcommand)]
    Users(access::UsersCommand),
    /// A project's environment variables.
    #[command(subcommand)]
    Env(EnvCommand),
    /// A project's custom domains: host names it answers on besides NAME.<domain>.
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// Show or change a project's HTTPS policy: `paastech https`, `paastech https redirect
    /// on|off`, `paastech https hsts SECONDS|off`.
    Https {
        #[command(flatten)]
        project: ProjectArg,
        #[command(subcommand)]
        change: Option<HttpsCommand>,
    },
    /// A project's add-ons (databases): `paastech addons` lists them; `create`, `info`,
    /// `destroy`, `backup` (to stdout) and `restore` (from stdin) manage one.
    Addons {
        #[command(flatten)]
        project: ProjectArg,
        #[command(subcommand)]
        command: Option<AddonsCommand>,
    },
    /// A project's deploy webhooks: `paastech webhooks` lists them with their last
    /// delivery; `add URL [--events …]`, `remove ID` and `deliveries ID` manage one.
    Webhooks {
        #[command(flatten)]
        project: ProjectArg,
        #[command(subcommand)]
        command: Option<WebhooksCommand>,
    },
    /// A project's preview apps: `paastech previews` lists them; `on` deploys each push
    /// to a branch other than main as its own app at BRANCH--NAME.<domain>, `off` removes
    /// them all.
    Previews {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
    /// Whether a project's idle web instances sleep (scale to zero): `paastech sleep` shows
    /// it; `on` stops them after MINUTES without a request (default 30) and the next
    /// request wakes them; `off` keeps them running (and wakes a sleeping app).
    Sleep {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
        /// Minutes without a request before the web instances stop (1 to 10080).
        #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u32).range(1..=10080))]
        after: Option<u32>,
        /// Let the web sleep even while other process types (a worker) run; by default
        /// they keep the project awake.
        #[arg(long)]
        ignore_workers: bool,
    },
    /// List a project's scheduled jobs (from `app.json` of the live deployment) with their
    /// next run, then the last runs of each: start, end, exit code.
    Cron(ProjectArg),
    /// List a project's deployments, newest first.
    Deployments(ProjectArg),
    /// Deploy the latest build again, or a given version (its build and config).
    Deploy {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Roll back to a version (default: the one before the live one): code and config.
    Rollback {
        #[command(flatten)]
        project: ProjectArg,
        version: Option<i64>,
    },
    /// Show the app's log; -f follows it.
    Logs {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many past lines to show.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Set how many instances of each process type run: `paastech scale web=2 worker=1`.
    Scale {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(required = true, value_name = "TYPE=N")]
        counts: Vec<String>,
    },
    /// List the app's instances and their state.
    Ps(ProjectArg),
    /// Stop the app's instances (of one process type with --process) and keep them
    /// stopped, across server restarts and pushes, until `paastech start`. Deployments and
    /// config stay; with `web` stopped the app answers 503 "app stopped".
    Stop {
        #[command(flatten)]
        project: ProjectArg,
        /// Only this process type (`web`, `worker`, …).
        #[arg(long, value_name = "TYPE")]
        process: Option<String>,
    },
    /// Start what `paastech stop` stopped (one process type with --process), in the live
    /// deployment; web instances must pass their health check.
    Start {
        #[command(flatten)]
        project: ProjectArg,
        /// Only this process type.
        #[arg(long, value_name = "TYPE")]
        process: Option<String>,
    },
    /// Replace the app's instances one by one, each new web instance healthy before traffic
    /// moves to it: no request fails. A stopped app is refused (start it).
    Restart {
        #[command(flatten)]
        project: ProjectArg,
        /// Only this process type.
        #[arg(long, value_name = "TYPE")]
        process: Option<String>,
    },
    /// Run a one-off command in the live deployment, with its code, env and limits:
    /// `paastech run -- python manage.py migrate`. Exits with the command's exit code.
    Run {
        #[command(flatten)]
        project: ProjectArg,
        /// The program and its arguments, after `--`; no shell (`-- sh -c '…'` for one).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
        /// Run it on a terminal (an interactive session) even when stdin is not one.
        #[arg(long, conflicts_with = "no_tty")]
        tty: bool,
        /// Never open an interactive session: stream the output as lines, as on a pipe.
        #[arg(long)]
        no_tty: bool,
    },
    /// Show or set the memory and CPU of each instance: `paastech limits memory=256 cpus=0.5`
    /// (`default` resets one to the server's default). A change deploys.
    Limits {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(value_name = "memory=MB|cpus=N")]
        settings: Vec<String>,
    },
    /// Show the audit log, newest first: who changed what, when, from which address. With
    /// `-p`, that project's records (for its members); without, everything you may read
    /// (all of it for an admin; else your own actions and your projects' records).
    Audit {
        /// Only this project's records.
        #[arg(short = 'p', long = "project")]
        project: Option<String>,
        /// How many records (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only records older than this id (the ID column), for the page before.
        #[arg(long)]
        before: Option<i64>,
    },
    /// List the machines apps run on (one `local` node without a cluster), their state,
    /// and every project's instances on each. Admins only.
    Nodes,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Run the PaaSTech server.
    Server(ServerArgs),
    /// Used by the server itself.
    #[command(subcommand, hide = true)]
    Internal(InternalCommand),
}

#[derive(Subcommand)]
enum InternalCommand {
    /// git's pre-receive hook: hands the push to the server and relays its output.
    PreReceive,
    /// Serves a static site from DIR on 127.0.0.1:$PORT.
    ServeStatic { dir: PathBuf },
}

#[derive(Args)]
struct CredentialArgs {
    #[arg(long)]
    email: Option<String>,
    /// Read the password from standard input instead of prompting (and, for `login` to an
    /// account with two-factor login, the code from the next line).
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a public key (default: ~/.ssh/id_ed25519.pub, then ~/.ssh/id_rsa.pub).
    Add {
        path: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
    },
    List,
    /// Remove a key by its id (see `keys list`).
    Remove {
        id: i64,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a long-lived API token; it is shown once.
    Create {
        name: String,
    },
    List,
    /// Revoke a token by its id.
    Revoke {
        id: i64,
    },
}

#[derive(Subcommand)]
enum ProjectsCommand {
    Create {
        name: String,
    },
    List,
    Info(ProjectArg),
    /// Delete a project, its repository and its deployments.
    Delete {
        name: String,
        /// Do not ask to type the name again.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    List(ProjectArg),
    /// Set variables: `paastech env set KEY=value …`.
    Set {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Unset variables.
    Unset {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DomainsCommand {
    /// Serve the project on DOMAIN too (point its DNS at this server): takes effect at once.
    Add {
        #[command(flatten)]
        project: ProjectArg,
        domain: String,
    },
    List(ProjectArg),
    /// Stop serving the project on DOMAIN.
    Remove {
        #[command(flatten)]
        project: ProjectArg,
        domain: String,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// POST a signed JSON event to URL when a deployment goes live or fails; prints the
    /// secret that signs them (shown once).
    Add {
        #[command(flatten)]
        project: ProjectArg,
        url: String,
        /// The events to send, comma-separated: deploy.succeeded, deploy.failed (default: all).
        #[arg(long, value_delimiter = ',', value_name = "EVENT,…")]
        events: Vec<String>,
    },
    /// Stop sending events to the webhook ID (from `paastech webhooks`).
    Remove {
        #[command(flatten)]
        project: ProjectArg,
        id: i64,
    },
    /// The webhook's last delivery attempts, newest first: status code or error, duration.
    Deliveries {
        #[command(flatten)]
        project: ProjectArg,
        id: i64,
    },
}

#[derive(Subcommand)]
enum AddonsCommand {
    /// Provision an add-on of KIND (a kind the server offers, such as postgres or redis) and
    /// set its config vars (DATABASE_URL; REDIS_URL and REDIS_KEY_PREFIX): a new deployment
    /// once the project has a build.
    Create {
        #[command(flatten)]
        project: ProjectArg,
        kind: String,
        /// Its name in the project (default: the kind).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
    },
    /// Show an add-on and its config vars.
    Info {
        #[command(flatten)]
        project: ProjectArg,
        name: String,
    },
    /// Unset the add-on's config vars, then destroy it and all its data.
    Destroy {
        #[command(flatten)]
        project: ProjectArg,
        name: String,
        /// Confirm that the add-on's data is to be destroyed.
        #[arg(long)]
        yes: bool,
    },
    /// Write a backup of the add-on's data to stdout: `paastech addons backup NAME > file`.
    Backup {
        #[command(flatten)]
        project: ProjectArg,
        name: String,
    },
    /// Replace the add-on's data with a backup read from stdin: `paastech addons restore
    /// NAME < file`.
    Restore {
        #[command(flatten)]
        project: ProjectArg,
        name: String,
    },
}

#[derive(Subcommand)]
enum HttpsCommand {
    /// Redirect plain HTTP to HTTPS (301) for the project's names that have a certificate.
    Redirect {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Send HSTS with this max-age in seconds (0 to 63072000) over HTTPS, or `off`.
    Hsts {
        #[command(flatten)]
        project: ProjectArg,
        #[arg(value_name = "SECONDS|off")]
        max_age: String,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// The TOML configuration (default: the embedded default, local processes + SQLite).
    #[arg(long, short = 'c', env = "PAASTECH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, print which database migrations a start would run
    /// (running none), and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Replace the key that seals config vars at rest with a new one and seal every value
    /// again with it. Stop the server first: it is refused while a server holds the key.
    RotateKey,
    /// Write a backup of the whole platform (database, repositories, builds, keys,
    /// certificates) to stdout as a tar stream, while the server runs.
    Backup,
    /// Read a backup from stdin into this config's empty data_dir (and empty database),
    /// then start the server as usual: every live deployment starts again.
    Restore,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Internal(InternalCommand::PreReceive) => {
            return ExitCode::from(u8::try_from(paastech_driver_git::hook::run_client()).unwrap_or(1));
        }
        Command::Internal(InternalCommand::ServeStatic { dir }) => server::serve_static(dir),
        Command::Server(ServerArgs { config, command: Some(ServerCommand::RotateKey), .. }) => {
            server::rotate_key(config)
        }
        Command::Server(ServerArgs { config, command: Some(ServerCommand::Backup), .. }) => backup::backup(config),
        Command::Server(ServerArgs { config, command: Some(ServerCommand::Restore), .. }) => backup::restore(config),
        Command::Server(args) => server::main(args.config, args.check),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "paastech", &mut std::io::stdout());
            Ok(())
        }
        command => commands::run(&cli.server, cli.token, cli.json, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks its own definition only when a command is used: check all of them.
    #[test]
    fn command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
