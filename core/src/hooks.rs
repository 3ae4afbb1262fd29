//! Build hooks, as the orchestrator sees them: four stages of a deployment where custom
//! steps (WASM components, run by the plugin host) may look, add and veto. Core knows
//! nothing of how hooks run.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::domain::{EnvVars, ProjectName};
use crate::drivers::{Artifact, LogSink};
use crate::error::Result;

/// What every stage is told about the deployment.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub project: ProjectName,
    pub version: i64,
    pub commit: Option<String>,
    /// The build's source tree, where project hooks (`.paastech/hooks/*.wasm`) are read
    /// from: on a push, the exported commit; for later deployments of the same build (env
    /// changes, rollbacks, a restart) the release directory when the runtime keeps one
    /// (local processes). `None` (an image-only build) runs the operator's hooks only.
    pub source: Option<PathBuf>,
}

#[async_trait]
pub trait BuildHooks: Send + Sync {
    /// Before the build. Sees `ctx.source` read-only; files it writes into the empty
    /// directory `out` are copied into the build tree (a generated Procfile or
    /// Dockerfile). Returns env vars to add to the build. An error vetoes the push.
    async fn pre_build(&self, ctx: &HookContext, out: &Path, log: &dyn LogSink) -> Result<EnvVars>;
    /// After a successful build, with what it made. An error vetoes the deployment.
    async fn post_build(&self, ctx: &HookContext, artifact: &Artifact, log: &dyn LogSink) -> Result<()>;
    /// Before instances start: sees the names (not values) of the env and the process
    /// types. Returns env vars to add to every instance. An error vetoes the deployment.
    async fn pre_deploy(
        &self,
        ctx: &HookContext,
        env_names: &[String],
        process_types: &[String],
        log: &dyn LogSink,
    ) -> Result<EnvVars>;
    /// After the deployment went live. Cannot veto; failures are only logged.
    async fn post_deploy(&self, ctx: &HookContext, log: &dyn LogSink);
}

/// No hooks configured.
pub struct NoHooks;

#[async_trait]
impl BuildHooks for NoHooks {
    async fn pre_build(&self, _: &HookContext, _: &Path, _: &dyn LogSink) -> Result<EnvVars> {
        Ok(EnvVars::new())
    }
    async fn post_build(&self, _: &HookContext, _: &Artifact, _: &dyn LogSink) -> Result<()> {
        Ok(())
    }
    async fn pre_deploy(&self, _: &HookContext, _: &[String], _: &[String], _: &dyn LogSink) -> Result<EnvVars> {
        Ok(EnvVars::new())
    }
    async fn post_deploy(&self, _: &HookContext, _: &dyn LogSink) {}
}
