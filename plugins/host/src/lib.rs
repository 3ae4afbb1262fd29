//! The WASM build-hook host: the only crate that knows wasmtime. It implements core's
//! [`BuildHooks`] by running WebAssembly components (WIT package `paastech:hooks@0.1.0`,
//! in `plugins/wit/`) at the four stages of a deployment.
//!
//! Two sources of hooks, run in this order at every stage they take part in:
//! - the operator's ([`HookSpec`], from `[[hooks]]`), compiled once when the host is made;
//!   a missing or invalid file is an error then, naming the file;
//! - the project's own, `.paastech/hooks/*.wasm` in its repository (with optional config
//!   in `NAME.toml` beside each), when [`HostOptions::project_hooks`] allows them; compiled
//!   per push, cached by content hash.
//!
//! Every call gets a fresh store: a timeout (epoch interruption), a memory cap, and WASI
//! with no environment, no network and only the source tree (read-only) and, at
//! pre-build, the output directory preopened. A veto, trap, timeout or limit fails the
//! stage with a message naming the hook and the cause; the server is not affected.

mod output;
mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paastech_core::drivers::{Artifact, LogSink};
use paastech_core::hooks::{BuildHooks, HookContext};
use paastech_core::{EnvVars, Error, ProjectName, Result};
use sha2::{Digest, Sha256};

use crate::output::Output;
use crate::runtime::{BuildInfo, Call, Compiled, Context, DeployInfo, Failure, Invocation, Runtime};

/// Where a project keeps its own hooks, relative to the root of its repository.
pub const PROJECT_HOOKS_DIR: &str = ".paastech/hooks";
/// How many compiled project hooks are kept (by content hash) between pushes.
const PROJECT_CACHE_SIZE: usize = 64;
/// Added to a hook's own timeout before the host stops waiting for a call that is stuck
/// outside the guest's code (where epoch interruption cannot reach).
const OUTER_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// The stages of a deployment where hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    PreBuild,
    PostBuild,
    PreDeploy,
    PostDeploy,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::PreBuild, Stage::PostBuild, Stage::PreDeploy, Stage::PostDeploy];

    /// The name used in configuration and messages (`pre-build`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreBuild => "pre-build",
            Stage::PostBuild => "post-build",
            Stage::PreDeploy => "pre-deploy",
            Stage::PostDeploy => "post-deploy",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Stage::ALL.iter().map(|stage| stage.as_str()).collect();
            format!("unknown stage {s:?} (known stages: {})", known.join(", "))
        })
    }
}

/// What one call of a hook may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookLimits {
    /// Wall time of one call; the guest is interrupted past it.
    pub timeout: Duration,
    /// The most linear memory the guest may grow to.
    pub memory_bytes: usize,
}

impl Default for HookLimits {
    fn default() -> Self {
        HookLimits { timeout: Duration::from_secs(10), memory_bytes: 64 * 1024 * 1024 }
    }
}

/// An operator's hook: one `[[hooks]]` entry.
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub name: String,
    /// The component file (`cargo build --target wasm32-wasip2` output).
    pub path: PathBuf,
    /// The stages it runs at; at least one.
    pub stages: Vec<Stage>,
    /// What the hook reads with `config(key)`.
    pub config: BTreeMap<String, String>,
    pub limits: HookLimits,
}

/// How the host treats project hooks.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    /// Run `.paastech/hooks/*.wasm` from the project's repository.
    pub project_hooks: bool,
    /// The limits of each project hook call.
    pub project_limits: HookLimits,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions { project_hooks: true, project_limits: HookLimits::default() }
    }
}

/// Why the host could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("hook {name:?}: cannot read {}: {source}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {name:?}: {}: {message}", path.display())]
    Invalid { name: String, path: PathBuf, message: String },
    #[error("hook {name:?}: {message}")]
    Config { name: String, message: String },
    #[error("{0}")]
    Engine(String),
}

/// Turns a `[hooks.config]` value into the string a hook reads: strings as they are,
/// numbers and booleans written out, lists of those comma-separated.
pub fn config_value(value: &toml::Value) -> std::result::Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(items) => {
            let items: std::result::Result<Vec<String>, String> = items
                .iter()
                .map(|item| match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        Err("a list may hold only strings, numbers and booleans".to_owned())
                    }
                    other => config_value(other),
                })
                .collect();
            Ok(items?.join(","))
        }
        toml::Value::Table(_) => Err("expected a string, number, boolean or list, found a table".into()),
    }
}

/// Converts a whole config table with [`config_value`], naming the key at fault.
pub fn config_table(table: &toml::Table) -> std::result::Result<BTreeMap<String, String>, String> {
    table
        .iter()
        .map(|(key, value)| config_value(value).map(|v| (key.clone(), v)).map_err(|e| format!("{key}: {e}")))
        .collect()
}

/// A hook ready to run.
struct Loaded {
    name: String,
    /// `operator` or `project`, for messages.
    origin: &'static str,
    stages: Vec<Stage>,
    config: Arc<BTreeMap<String, String>>,
    limits: HookLimits,
    compiled: Compiled,
}

/// Runs build hooks; hand it to `Orchestrator::with_hooks`.
pub struct HookHost {
    runtime: Arc<Runtime>,
    operator: Vec<Arc<Loaded>>,
    options: HostOptions,
    /// Compiled project hooks by content hash (a small LRU: first in, first out).
    cache: Mutex<Vec<([u8; 32], Compiled)>>,
    /// The project hooks of each project's latest deployment, for stages that have no
    /// source tree to read them from (container builds).
    remembered: Mutex<HashMap<ProjectName, ProjectHooks>>,
}

/// The project hooks found for one version of a project.
type ProjectHooks = (i64, Vec<Arc<Loaded>>);

impl HookHost {
    /// Compiles every operator hook. Slow (JIT): call once at server start.
    pub fn new(specs: Vec<HookSpec>, options: HostOptions) -> std::result::Result<HookHost, PluginError> {
        let runtime = Arc::new(Runtime::new().map_err(PluginError::Engine)?);
        let mut operator = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.stages.is_empty() {
                return Err(PluginError::Config { name: spec.name, message: "stages is empty".into() });
            }
            let bytes = std::fs::read(&spec.path).map_err(|source| PluginError::Read {
                name: spec.name.clone(),
                path: spec.path.clone(),
                source,
            })?;
            let compiled = runtime.compile(&bytes).map_err(|message| PluginError::Invalid {
                name: spec.name.clone(),
                path: spec.path.clone(),
                message,
            })?;
            tracing::info!(hook = %spec.name, path = %spec.path.display(), "build hook compiled");
            operator.push(Arc::new(Loaded {
                name: spec.name,
                origin: "operator",
                stages: spec.stages,
                config: Arc::new(spec.config),
                limits: spec.limits,
                compiled,
            }));
        }
        Ok(HookHost {
            runtime,
            operator,
            options,
            cache: Mutex::new(Vec::new()),
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// The names of the operator's hooks, in order.
    pub fn operator_hooks(&self) -> Vec<&str> {
        self.operator.iter().map(|hook| hook.name.as_str()).collect()
    }

    /// Whether projects' own hooks run.
    pub fn project_hooks_allowed(&self) -> bool {
        self.options.project_hooks
    }

    /// Reads and compiles `.paastech/hooks/*.wasm` under `source`, in file-name order.
    async fn load_project_hooks(&self, source: &Path) -> Result<Vec<Arc<Loaded>>> {
        let dir = source.join(PROJECT_HOOKS_DIR);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Error::DeployFailed(format!("cannot read {PROJECT_HOOKS_DIR}: {err}"))),
        };
        let mut files = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|err| Error::DeployFailed(format!("cannot read {PROJECT_HOOKS_DIR}: {err}")))?
        {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "wasm") {
                files.push(path);
            }
        }
        files.sort();
        let mut hooks = Vec::with_capacity(files.len());
        for path in files {
            let file =
                format!("{PROJECT_HOOKS_DIR}/{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Symlinks could point outside the tree; a project hook must be a file of the repo.
            let meta = tokio::fs::symlink_metadata(&path).await;
            if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                return Err(Error::DeployFailed(format!("project hook {file} is not a regular file")));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|err| Error::DeployFailed(format!("cannot read project hook {file}: {err}")))?;
            let config = project_hook_config(&path.with_extension("toml"), &name).await?;
            let compiled = self.compile_cached(bytes).await.map_err(|message| {
                Error::DeployFailed(format!("project hook {file} is not a valid hook component: {message}"))
            })?;
            hooks.push(Arc::new(Loaded {
                name,
                origin: "project",
                stages: Stage::ALL.to_vec(),
                config: Arc::new(config),
                limits: self.options.project_limits,
                compiled,
            }));
        }
        Ok(hooks)
    }

    /// Compiles a project hook off the async threads (JIT is CPU-bound), or takes it from
    /// the cache.
    async fn compile_cached(&self, bytes: Vec<u8>) -> std::result::Result<Compiled, String> {
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some((_, compiled)) =
            self.cache.lock().expect("hook cache lock is never poisoned").iter().find(|(h, _)| *h == hash)
        {
            return Ok(compiled.clone());
        }
        let runtime = Arc::clone(&self.runtime);
        let compiled = tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .map_err(|err| format!("compiling: {err}"))??;
        let mut cache = self.cache.lock().expect("hook cache lock is never poisoned");
        if cache.len() >= PROJECT_CACHE_SIZE {
            cache.remove(0);
        }
        cache.push((hash, compiled.clone()));
        Ok(compiled)
    }

    /// The hooks of a stage: the operator's, then the project's.
    async fn hooks_for(&self, ctx: &HookContext, stage: Stage) -> Result<Vec<Arc<Loaded>>> {
        let mut hooks: Vec<Arc<Loaded>> =
            self.operator.iter().filter(|hook| hook.stages.contains(&stage)).cloned().collect();
        if !self.options.project_hooks {
            return Ok(hooks);
        }
        let remembered = {
            let all = self.remembered.lock().expect("remembered hooks lock is never poisoned");
            all.get(&ctx.project).filter(|(version, _)| *version == ctx.version).map(|(_, hooks)| hooks.clone())
        };
        let project = match (remembered, &ctx.source) {
            // Pre-build reads the fresh tree; later stages reuse what it found.
            (Some(hooks), _) if stage != Stage::PreBuild => hooks,
            (_, Some(source)) => {
                let loaded = self.load_project_hooks(source).await?;
                self.remembered
                    .lock()
                    .expect("remembered hooks lock is never poisoned")
                    .insert(ctx.project.clone(), (ctx.version, loaded.clone()));
                loaded
            }
            (Some(hooks), None) => hooks,
            (None, None) => Vec::new(),
        };
        hooks.extend(project.into_iter().filter(|hook| hook.stages.contains(&stage)));
        Ok(hooks)
    }

    /// Runs one hook's stage off the async threads, streaming its lines to `log`.
    async fn run(
        &self,
        hook: &Loaded,
        ctx: &HookContext,
        out: Option<&Path>,
        call: Call,
        log: &dyn LogSink,
    ) -> Result<Vec<(String, String)>> {
        let stage = call.stage();
        let invocation = Invocation {
            hook: hook.compiled.clone(),
            config: Arc::clone(&hook.config),
            limits: hook.limits,
            ctx: Context {
                project: ctx.project.to_string(),
                version: ctx.version,
                commit: ctx.commit.clone(),
                source_dir: ctx.source.as_ref().map(|_| runtime::SOURCE_GUEST_DIR.to_owned()),
            },
            source: ctx.source.clone(),
            out: out.map(Path::to_owned),
            call,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let output = Output::new(tx);
        let runtime = Arc::clone(&self.runtime);
        let started = std::time::Instant::now();
        let mut task = tokio::task::spawn_blocking(move || runtime::invoke(&runtime, invocation, output));
        let deadline = tokio::time::sleep(hook.limits.timeout + OUTER_TIMEOUT_SLACK);
        tokio::pin!(deadline);
        let prefix = format!("       [{}] ", hook.name);
        let result = loop {
            tokio::select! {
                Some(line) = rx.recv() => log.line(&format!("{prefix}{line}")),
                joined = &mut task => break Some(joined),
                () = &mut deadline => break None,
            }
        };
        while let Ok(line) = rx.try_recv() {
            log.line(&format!("{prefix}{line}"));
        }
        let ok = matches!(result, Some(Ok(Ok(_))));
        paastech_core::metrics::metrics().hook_call(&hook.name, ok, started.elapsed());
        let who = format!("{} hook {} ({stage})", hook.origin, hook.name);
        let failure = match result {
            None => Failure::TimedOut(hook.limits.timeout),
            Some(Err(join)) => Failure::Crashed { cause: format!("failed: {join}"), stderr: Vec::new() },
            Some(Ok(Ok(env))) => {
                tracing::debug!(hook = %hook.name, %stage, elapsed_ms = started.elapsed().as_millis() as u64, "hook ran");
                return Ok(env);
            }
            Some(Ok(Err(failure))) => failure,
        };
        let message = match failure {
            Failure::Vetoed(message) => format!("{who} rejected the deployment: {message}"),
            Failure::TimedOut(limit) => format!("{who} timed out after {}", human_duration(limit)),
            Failure::MemoryExceeded(bytes) => {
                format!("{who} exceeded its memory limit of {} MiB", bytes / (1024 * 1024))
            }
            Failure::Crashed { cause, stderr } if stderr.is_empty() => format!("{who} {cause}"),
            Failure::Crashed { cause, stderr } => format!("{who} {cause}: {}", stderr.join(" | ")),
            Failure::Setup(message) => format!("{who} could not start: {message}"),
        };
        tracing::warn!(project = %ctx.project, hook = %hook.name, %stage, reason = %message, "build hook failed");
        Err(Error::DeployFailed(message))
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

/// The optional `NAME.toml` beside a project hook: flat keys, as `[hooks.config]`.
async fn project_hook_config(path: &Path, name: &str) -> Result<BTreeMap<String, String>> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(Error::DeployFailed(format!("cannot read {PROJECT_HOOKS_DIR}/{name}.toml: {err}"))),
    };
    let table: toml::Table = toml::from_str(&text)
        .map_err(|err| Error::DeployFailed(format!("{PROJECT_HOOKS_DIR}/{name}.toml: {}", err.message().trim_end())))?;
    config_table(&table).map_err(|err| Error::DeployFailed(format!("{PROJECT_HOOKS_DIR}/{name}.toml: {err}")))
}

fn env_of(pairs: Vec<(String, String)>) -> EnvVars {
    pairs.into_iter().collect()
}

#[async_trait]
impl BuildHooks for HookHost {
    async fn pre_build(&self, ctx: &HookContext, out: &Path, log: &dyn LogSink) -> Result<EnvVars> {
        let mut env = EnvVars::new();
        for hook in self.hooks_for(ctx, Stage::PreBuild).await? {
            env.extend(env_of(self.run(&hook, ctx, Some(out), Call::PreBuild, log).await?));
        }
        Ok(env)
    }

    async fn post_build(&self, ctx: &HookContext, artifact: &Artifact, log: &dyn LogSink) -> Result<()> {
        let build = BuildInfo {
            artifact: artifact.reference.clone(),
            processes: artifact.processes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        for hook in self.hooks_for(ctx, Stage::PostBuild).await? {
            self.run(&hook, ctx, None, Call::PostBuild(build.clone()), log).await?;
        }
        Ok(())
    }

    async fn pre_deploy(
        &self,
        ctx: &HookContext,
        env_names: &[String],
        process_types: &[String],
        log: &dyn LogSink,
    ) -> Result<EnvVars> {
        let deploy = DeployInfo { env_names: env_names.to_vec(), process_types: process_types.to_vec() };
        let mut env = EnvVars::new();
        for hook in self.hooks_for(ctx, Stage::PreDeploy).await? {
            env.extend(env_of(self.run(&hook, ctx, None, Call::PreDeploy(deploy.clone()), log).await?));
        }
        Ok(env)
    }

    async fn post_deploy(&self, ctx: &HookContext, log: &dyn LogSink) {
        let hooks = match self.hooks_for(ctx, Stage::PostDeploy).await {
            Ok(hooks) => hooks,
            Err(err) => {
                log.line(&format!("-----> post-deploy hooks skipped: {err}"));
                return;
            }
        };
        for hook in hooks {
            if let Err(err) = self.run(&hook, ctx, None, Call::PostDeploy, log).await {
                // Post-deploy cannot veto: the deployment is live already.
                log.line(&format!("-----> {err}"));
            }
        }
    }
}
