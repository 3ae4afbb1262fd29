//! `ProcessBuilder`: builds a release directory in place, with the language's own tools.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder, LogSink};
use paastech_core::{Error, ProjectName, Result};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::group;
use crate::lines::Lines;
use crate::toolchains::{self, ToolEnv};
use crate::users::{AppUser, AppUsers, reachable_by_others};
use paastech_core::app::detect::{self, Detected, Language};
use paastech_core::app::shell::{shell_join, shell_quote};
use paastech_core::app::versions;

/// Variables passed from the server's environment to build steps besides PATH and HOME.
/// They say where toolchains live and how to reach package registries (proxies, extra CA
/// certificates); without them a toolchain in a non-default place is not found and a
/// server behind a proxy cannot download anything. Nothing else of the server's leaks.
const PASSTHROUGH_VARS: &[&str] = &[
    "RUSTUP_HOME",
    "CARGO_HOME",
    "PYENV_ROOT",
    "NVM_DIR",
    "UV_PYTHON_INSTALL_DIR",
    "PYENV_VERSION",
    "GOROOT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
];

const PIP_INSTALL: &[&str] = &["install", "--disable-pip-version-check", "--progress-bar", "off"];

#[derive(Debug, Clone)]
pub struct ProcessBuilderConfig {
    /// Download caches kept between builds (`pip/`, `npm/`, `go/`).
    pub cache_dir: PathBuf,
    /// The time limit of a whole build; the step running when it expires is killed.
    pub timeout: Duration,
    /// The argv prefix of the static file server; the app directory is appended.
    pub static_server: Vec<String>,
    /// Each project's build steps run as its uid (the one its processes get) when the
    /// server can switch users. `None`: as the server's user.
    pub users: Option<Arc<AppUsers>>,
}

pub struct ProcessBuilder {
    config: ProcessBuilderConfig,
}

impl ProcessBuilder {
    pub fn new(config: ProcessBuilderConfig) -> Self {
        ProcessBuilder { config }
    }

    /// The interpreters the app in `dir` gets: the version its `.python-version`,
    /// `runtime.txt` or `engines.node` asks for, found among the machine's (the build fails
    /// naming what was asked and what there is), else the `python3` or `node` on PATH.
    /// `env` is the build's own (its PATH, HOME); with `app_user`, only interpreters other
    /// users can reach count (one in the server's private home is of no use to the app).
    async fn choose_tools(
        &self,
        language: Option<Language>,
        dir: &Path,
        env: &ToolEnv,
        app_user: bool,
        log: &dyn LogSink,
    ) -> Result<Tools> {
        let usable = |found: Vec<versions::Interpreter>| -> Vec<versions::Interpreter> {
            found.into_iter().filter(|i| !app_user || reachable_by_others(&i.path)).collect()
        };
        let env = env.clone();
        let mut tools = Tools { python: None, uv: None, node: None, path: env.path() };
        match language {
            Some(Language::Python) => {
                if let Some(wanted) = versions::python_wanted(dir)? {
                    let found = usable(toolchains::pythons(&env).await);
                    let asked = wanted.to_string();
                    let path = pick("Python", &asked, wanted.file, &found, |v| wanted.matches(v), log)?;
                    tools.python = Some(path);
                }
                tools.uv = toolchains::uv(&env);
                if tools.uv.is_some() {
                    log.line("-----> Installing with uv");
                }
            }
            Some(Language::Node) => {
                if let Some(wanted) = versions::node_wanted(dir)? {
                    let found = usable(toolchains::nodes(&env).await);
                    let file = "package.json engines.node";
                    tools.node = Some(pick("Node", &wanted.asked, file, &found, |v| wanted.matches(v), log)?);
                }
            }
            _ => {}
        }
        Ok(tools)
    }

    /// The steps that build `language` in `dir` with `tools`, its downloads kept in
    /// `cache`, in order.
    fn plan(&self, language: Option<Language>, dir: &Path, cache: &Path, tools: &Tools) -> Result<Vec<Step>> {
        let venv = |with_pip: bool| match &tools.uv {
            Some(uv) => {
                // The interpreter chosen, else `python3` on PATH, as without uv.
                let python = tools.python.as_deref().map_or("python3".into(), Path::to_string_lossy);
                uv_step(uv, &["venv", "--quiet", "--python", &python, ".venv"], cache)
            }
            None => {
                let args: &[&str] =
                    if with_pip { &["-m", "venv", ".venv"] } else { &["-m", "venv", "--without-pip", ".venv"] };
                let step = Step::new("python3", args);
                match &tools.python {
                    Some(path) => step.program(path.clone()),
                    None => step,
                }
            }
        };
        let install = |args: &[&str]| match &tools.uv {
            Some(uv) => {
                let python = dir.join(".venv/bin/python").to_string_lossy().into_owned();
                uv_step(uv, &[&["pip", "install", "--python", python.as_str()], args].concat(), cache)
            }
            None => {
                let pip_cache = cache.join("pip");
                Step::new(".venv/bin/pip", &[PIP_INSTALL, args].concat())
                    .program(dir.join(".venv/bin/pip"))
                    .env("PIP_CACHE_DIR", pip_cache.clone())
                    .env("PIP_NO_INPUT", "1")
                    .cache(pip_cache)
            }
        };
        let steps = match language {
            None | Some(Language::Static) => Vec::new(),
            Some(Language::Python) if dir.join("requirements.txt").is_file() => {
                let text = std::fs::read_to_string(dir.join("requirements.txt"))
                    .map_err(|e| Error::internal("reading requirements.txt", e))?;
                if has_requirements(&text) {
                    vec![venv(true), install(&["-r", "requirements.txt"])]
                } else {
                    // Nothing to install: a venv without pip takes a tenth of the time.
                    vec![venv(false)]
                }
            }
            Some(Language::Python) => vec![venv(true), install(&["."])],
            Some(Language::Node) => {
                let locked = dir.join("package-lock.json").is_file() || dir.join("npm-shrinkwrap.json").is_file();
                let install = if locked { "ci" } else { "install" };
                let npm_cache = cache.join("npm");
                let npm = |args: &[&str]| {
                    let step = Step::new("npm", args)
                        .env("npm_config_cache", npm_cache.clone())
                        .env("npm_config_update_notifier", "false")
                        .cache(npm_cache.clone());
                    // The chosen node's directory first: its `npm`, and the `node` npm runs.
                    match tools.node.as_deref().and_then(Path::parent) {
                        Some(bin) => step.env("PATH", path_with(bin, &tools.path)),
                        None => step,
                    }
                };
                let mut steps = vec![npm(&[install, "--no-audit", "--no-fund"])];
                if detect::has_npm_build(dir)? {
                    steps.push(npm(&["run", "build"]));
                }
                steps
            }
            Some(Language::Rust) => {
                vec![Step::new("cargo", &["build", "--release"]).env("CARGO_TARGET_DIR", dir.join("target"))]
            }
            Some(Language::Go) => {
                let go = cache.join("go");
                vec![
                    Step::new("go", &["build", "-o", "bin/app", "."])
                        .env("GOCACHE", go.join("build"))
                        .env("GOMODCACHE", go.join("mod"))
                        .env("GOPATH", go.join("path"))
                        .cache(go),
                ]
            }
        };
        Ok(steps)
    }

    /// The environment every step starts from: nothing of the server's but where its
    /// tools are, then the project's build env. A step run as an app user gets only the
    /// PATH entries such a user can reach, and `home` as its HOME.
    fn base_env(&self, request: &BuildRequest, home: Option<&Path>) -> Vec<(OsString, OsString)> {
        let mut env = Vec::new();
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let path = match home {
            Some(_) => {
                let reachable: Vec<PathBuf> =
                    std::env::split_paths(&path).filter(|dir| reachable_by_others(dir)).collect();
                std::env::join_paths(reachable).unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
            }
            None => path,
        };
        env.push(("PATH".into(), path));
        match home {
            Some(home) => env.push(("HOME".into(), home.into())),
            None => {
                if let Some(home) = std::env::var_os("HOME") {
                    env.push(("HOME".into(), home));
                }
            }
        }
        env.push(("LANG".into(), "C.UTF-8".into()));
        for name in PASSTHROUGH_VARS {
            if let Some(value) = std::env::var_os(name) {
                env.push((name.into(), value));
            }
        }
        for (key, value) in &request.env {
            env.push((key.into(), value.into()));
        }
        env
    }

    fn static_web_command(&self, dir: &str) -> Result<String> {
        if self.config.static_server.is_empty() {
            return Err(Error::Unavailable(
                "this server has no static file server configured for the process builder".into(),
            ));
        }
        Ok(format!("{} {}", shell_join(&self.config.static_server), shell_quote(dir)))
    }
}

#[async_trait]
impl ImageBuilder for ProcessBuilder {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn build(&self, request: &BuildRequest, log: &dyn LogSink) -> Result<Artifact> {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let dir = request.source.as_path();
        let reference = dir
            .to_str()
            .ok_or_else(|| Error::internal_msg(format!("release directory {dir:?} is not UTF-8")))?
            .to_owned();
        if !dir.is_dir() {
            return Err(Error::NotFound(format!("release directory {reference} does not exist")));
        }

        let detected = {
            let dir = dir.to_owned();
            tokio::task::spawn_blocking(move || detect::detect(&dir))
                .await
                .map_err(|e| Error::internal("detecting the app", e))??
        };
        log.line(&describe(&detected));

        // As the project's user: the release directory becomes its own, and its caches
        // and HOME are a directory of its own under the cache.
        let user = match &self.config.users {
            Some(users) => users.user(&request.project)?,
            None => None,
        };
        let cache = match (&self.config.users, user) {
            (Some(users), Some(user)) => {
                let (users, dir, cache_dir, project) =
                    (Arc::clone(users), dir.to_owned(), self.config.cache_dir.clone(), request.project.clone());
                tokio::task::spawn_blocking(move || {
                    users.give_release(&dir, user)?;
                    users.project_cache(&cache_dir, &project, user)
                })
                .await
                .map_err(|e| Error::internal("preparing the build's directories", e))?
                .map_err(|e| Error::internal(format!("giving the release directory to uid {}", user.uid), e))?
            }
            _ => self.config.cache_dir.clone(),
        };
        let home = user.map(|_| cache.join("home"));
        let base_env = self.base_env(request, home.as_deref());
        let tool_env = ToolEnv::of(&base_env);
        let tools = self.choose_tools(detected.language, dir, &tool_env, user.is_some(), log).await?;
        for step in self.plan(detected.language, dir, &cache, &tools)? {
            for cache in &step.caches {
                tokio::fs::create_dir_all(cache)
                    .await
                    .map_err(|e| Error::internal("creating the build cache directory", e))?;
                if let Some(user) = user
                    && std::fs::metadata(cache)
                        .map_err(|e| Error::internal("reading the build cache directory", e))?
                        .uid()
                        != user.uid
                {
                    std::os::unix::fs::lchown(cache, Some(user.uid), None)
                        .map_err(|e| Error::internal("giving the build cache directory to the app's user", e))?;
                }
            }
            run_step(&step, dir, &base_env, user, deadline, self.config.timeout, log).await?;
        }
        if let Some(node) = &tools.node {
            pin_node(dir, node, user).await?;
        }
        if detected.language == Some(Language::Python) && detect::is_django(dir)? {
            self.collectstatic(request, dir, &base_env, user, deadline, log).await?;
        }

        let mut processes = detected.processes;
        if detected.language == Some(Language::Static) {
            let command = self.static_web_command(&reference)?;
            // The site's process runs as the app's user, who must be able to run it.
            if user.is_some()
                && let Some(server) = self.config.static_server.first()
                && !reachable_by_others(Path::new(server))
            {
                return Err(Error::Unavailable(format!(
                    "the static file server {server} cannot be run by app users (a directory above it is closed to \
                     other users): install paastech where every user may run it, such as /usr/bin"
                )));
            }
            processes.insert("web".to_owned(), command);
        }
        for (name, command) in &processes {
            log.line(&format!("-----> Process type {name}: {command}"));
        }
        log.line(&format!("-----> Build finished in {:.1}s", started.elapsed().as_secs_f64()));
        tracing::info!(project = %request.project, version = request.version, dir = %reference, "built release");
        Ok(Artifact { reference, processes })
    }

    /// The project's uid is retired and its cache directory (`cache/PROJECT`: download
    /// caches, the builds' HOME) removed.
    async fn forget(&self, project: &ProjectName) -> Result<()> {
        let Some(users) = self.config.users.clone().filter(|users| users.switching()) else { return Ok(()) };
        let cache = self.config.cache_dir.join(project.as_str());
        let name = project.clone();
        tokio::task::spawn_blocking(move || {
            users.retire(&name)?;
            match std::fs::remove_dir_all(&cache) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| Error::internal("forgetting a project", e))?
        .map_err(|e| Error::internal(format!("retiring the uid and removing the build cache of {project}"), e))
    }

    async fn remove(&self, artifact: &str) -> Result<()> {
        let path = PathBuf::from(artifact);
        // A release directory is always an absolute path below some data directory; refuse
        // anything else rather than delete a surprise.
        if !path.is_absolute() || path.parent().is_none_or(|p| p.parent().is_none()) {
            return Err(Error::Invalid(format!("{artifact:?} is not a release directory")));
        }
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::internal(format!("removing release directory {artifact}"), err)),
        }
    }
}

impl ProcessBuilder {
    /// `manage.py collectstatic --noinput`, as Heroku runs it for Django apps: skipped when
    /// the project sets `DISABLE_COLLECTSTATIC` (to anything but `0`) or when the app has no
    /// `collectstatic` command (no `django.contrib.staticfiles`); a failure fails the build.
    async fn collectstatic(
        &self,
        request: &BuildRequest,
        dir: &Path,
        base_env: &[(OsString, OsString)],
        user: Option<AppUser>,
        deadline: Instant,
        log: &dyn LogSink,
    ) -> Result<()> {
        if request.env.get("DISABLE_COLLECTSTATIC").is_some_and(|value| !value.is_empty() && value != "0") {
            log.line("-----> collectstatic skipped: DISABLE_COLLECTSTATIC is set");
            return Ok(());
        }
        let python = dir.join(".venv/bin/python");
        let probe = Step::new("python", &["manage.py", "help", "collectstatic"]).program(python.clone());
        if run_step(&probe, dir, base_env, user, deadline, self.config.timeout, &Discard).await.is_err() {
            log.line("-----> collectstatic skipped: the app has no collectstatic command (django.contrib.staticfiles)");
            return Ok(());
        }
        log.line("-----> Running manage.py collectstatic --noinput");
        let step = Step::new("python", &["manage.py", "collectstatic", "--noinput"]).program(python);
        run_step(&step, dir, base_env, user, deadline, self.config.timeout, log).await.map_err(|err| match err {
            Error::Invalid(message) => Error::Invalid(format!(
                "{message}; set DISABLE_COLLECTSTATIC=1 in the project's env to build without it"
            )),
            other => other,
        })
    }
}

/// The newest of `found` that `matches` (see `versions::choose`), said in the build log.
fn pick(
    language: &str,
    asked: &str,
    file: &str,
    found: &[versions::Interpreter],
    matches: impl Fn(&semver::Version) -> bool,
    log: &dyn LogSink,
) -> Result<PathBuf> {
    let chosen = versions::choose(language, asked, file, found, matches)?;
    log.line(&format!("-----> {language} {} ({file} asks for {asked}): {}", chosen.version, chosen.path.display()));
    Ok(chosen.path.clone())
}

/// What `choose_tools` picked for a build.
struct Tools {
    /// The interpreter the venv is made from; `None`: `python3` on PATH.
    python: Option<PathBuf>,
    /// `uv`, when the server has it: venv and installs through it instead of pip.
    uv: Option<PathBuf>,
    /// The `node` binary asked for by `engines.node`; `None`: the one on PATH.
    node: Option<PathBuf>,
    /// The build's PATH, which a chosen node's directory goes before.
    path: OsString,
}

/// A `uv` step, with its cache kept between builds.
fn uv_step(uv: &Path, args: &[&str], cache: &Path) -> Step {
    let uv_cache = cache.join("uv");
    Step::new("uv", args)
        .program(uv.to_owned())
        .env("UV_CACHE_DIR", uv_cache.clone())
        .env("UV_NO_PROGRESS", "1")
        // Only interpreters the machine has: uv would otherwise download one.
        .env("UV_PYTHON_DOWNLOADS", "never")
        .cache(uv_cache)
}

/// `path` with `first` before it.
fn path_with(first: &Path, path: &OsStr) -> OsString {
    let mut joined = first.as_os_str().to_owned();
    joined.push(":");
    joined.push(path);
    joined
}

/// Makes the release run the chosen `node`: `.paastech/bin/node` links to it, and the
/// process runtime puts `.paastech/bin` on the app's PATH.
/// With an app user, the links are theirs, as the rest of the release.
async fn pin_node(dir: &Path, node: &Path, user: Option<AppUser>) -> Result<()> {
    let bin = dir.join(PINNED_BIN);
    tokio::fs::create_dir_all(&bin).await.map_err(|e| Error::internal("creating .paastech/bin", e))?;
    let link = bin.join("node");
    let _ = tokio::fs::remove_file(&link).await;
    tokio::fs::symlink(node, &link).await.map_err(|e| Error::internal("linking the chosen node", e))?;
    if let Some(user) = user {
        for path in [dir.join(".paastech"), bin, link] {
            std::os::unix::fs::lchown(&path, Some(user.uid), None)
                .map_err(|e| Error::internal("giving .paastech/bin to the app's user", e))?;
        }
    }
    Ok(())
}

/// Where a release keeps links to the interpreters its build chose.
pub const PINNED_BIN: &str = ".paastech/bin";

/// A sink for what has nowhere to go.
struct Discard;

impl LogSink for Discard {
    fn line(&self, _line: &str) {}
}

fn describe(detected: &Detected) -> String {
    let source = if detected.procfile { "commands from the Procfile" } else { "default commands" };
    match detected.language {
        Some(language) => format!("-----> Detected a {} app, {source}", language.as_str()),
        None => format!("-----> Nothing to build, {source}"),
    }
}

/// Whether a requirements file names anything to install (not only comments and blanks).
fn has_requirements(text: &str) -> bool {
    text.lines().map(str::trim).any(|line| !line.is_empty() && !line.starts_with('#'))
}

/// One build step: an argument vector, never a shell string.
struct Step {
    program: OsString,
    args: Vec<String>,
    env: Vec<(&'static str, OsString)>,
    /// Cache directories to create before the step runs.
    caches: Vec<PathBuf>,
    /// How the step is named in the build log and in errors.
    label: String,
}

impl Step {
    /// `program` is looked up in the step's PATH unless [`Step::program`] replaces it.
    fn new(program: &str, args: &[&str]) -> Self {
        Step {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            caches: Vec::new(),
            label: [program].iter().chain(args).copied().collect::<Vec<_>>().join(" "),
        }
    }

    /// Runs this absolute path; the label keeps the short name given to `new`.
    fn program(mut self, path: PathBuf) -> Self {
        self.program = path.into_os_string();
        self
    }

    fn env(mut self, key: &'static str, value: impl Into<OsString>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    fn cache(mut self, dir: PathBuf) -> Self {
        self.caches.push(dir);
        self
    }
}

async fn run_step(
    step: &Step,
    dir: &Path,
    base_env: &[(OsString, OsString)],
    user: Option<AppUser>,
    deadline: Instant,
    limit: Duration,
    log: &dyn LogSink,
) -> Result<()> {
    log.line(&format!("-----> Running {}", step.label));
    let mut command = Command::new(&step.program);
    command
        .args(&step.args)
        .current_dir(dir)
        .env_clear()
        .envs(base_env.iter().map(|(k, v)| (k, v)))
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    group::own_session(&mut command);
    if let Some(user) = user {
        // SAFETY: runs in the child between fork and exec; only raw system calls.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || user.drop_privileges());
        }
    }
    let mut child = command.spawn().map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            Error::Unavailable(format!(
                "{} is not installed on the server (needed for `{}`)",
                step.label.split(' ').next().unwrap_or_default(),
                step.label
            ))
        } else {
            Error::internal(format!("starting build step `{}`", step.label), err)
        }
    })?;
    let pgid = group::pgid_of(&child);
    let outcome = tokio::time::timeout_at(deadline, pump(&mut child, pgid, log)).await;
    match outcome {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(Error::Invalid(format!("build step `{}` failed ({status})", step.label))),
        Ok(Err(err)) => Err(Error::internal(format!("running build step `{}`", step.label), err)),
        Err(_) => {
            if let Some(pgid) = pgid {
                group::signal(pgid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(Error::Invalid(format!(
                "build step `{}` timed out: the build time limit is {}s",
                step.label,
                limit.as_secs_f64()
            )))
        }
    }
}

/// Streams the child's stdout and stderr into `log` line by line until both close and the
/// child has exited. When the child exits, what it left running in its group is killed:
/// a build step must not leave daemons behind (nor keep its pipes open forever).
async fn pump(child: &mut Child, pgid: Option<i32>, log: &dyn LogSink) -> io::Result<ExitStatus> {
    let mut out = child.stdout.take().map(Lines::new);
    let mut err = child.stderr.take().map(Lines::new);
    let mut status = None;
    loop {
        let (out_open, err_open) = (out.is_some(), err.is_some());
        if !out_open
            && !err_open
            && let Some(status) = status
        {
            return Ok(status);
        }
        tokio::select! {
            line = next(&mut out), if out_open => match line {
                Some(line) => log.line(&line),
                None => out = None,
            },
            line = next(&mut err), if err_open => match line {
                Some(line) => log.line(&line),
                None => err = None,
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited?);
                if let Some(pgid) = pgid {
                    group::signal(pgid, Signal::SIGKILL);
                }
            }
        }
    }
}

async fn next<R: tokio::io::AsyncRead + Unpin>(lines: &mut Option<Lines<R>>) -> Option<String> {
    match lines {
        Some(lines) => lines.next_line().await,
        None => None,
    }
}
