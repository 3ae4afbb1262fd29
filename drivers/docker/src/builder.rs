//! `DockerBuilder`: the pushed commit's Dockerfile (or a generated one) built by the engine
//! into `paastech/NAME:vVERSION`, its output streamed to the push.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder, LogSink};
use paastech_core::{Error, Result};
use tokio::time::Instant;

use crate::engine::{Engine, EngineConfig, engine_error, status_of};
use paastech_core::app::container::{self as context, GENERATED_DOCKERFILE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerBuilderConfig {
    pub engine: EngineConfig,
    /// The image a Dockerfile is generated `FROM` for apps without one. `None`: such apps
    /// are refused with a message saying a Dockerfile is needed.
    pub base_image: Option<String>,
    /// The longest a build may take.
    pub timeout: Duration,
}

impl Default for DockerBuilderConfig {
    fn default() -> Self {
        DockerBuilderConfig { engine: EngineConfig::default(), base_image: None, timeout: Duration::from_secs(15 * 60) }
    }
}

pub struct DockerBuilder {
    config: DockerBuilderConfig,
    engine: Engine,
}

/// The image tag of a project's version.
pub fn image_tag(project: &str, version: i64) -> String {
    format!("paastech/{project}:v{version}")
}

impl DockerBuilder {
    pub fn new(config: DockerBuilderConfig) -> Self {
        let engine = Engine::new(config.engine.clone());
        DockerBuilder { config, engine }
    }
}

#[async_trait]
impl ImageBuilder for DockerBuilder {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn build(&self, request: &BuildRequest, log: &dyn LogSink) -> Result<Artifact> {
        let started = Instant::now();
        let source = request.source.clone();
        let plan = {
            let (source, base_image, env) = (source.clone(), self.config.base_image.clone(), request.env.clone());
            tokio::task::spawn_blocking(move || context::plan(&source, base_image.as_deref(), &env))
                .await
                .map_err(|e| Error::internal("reading the source tree", e))??
        };
        plan.announce(log);
        let extra = plan.generated.as_ref().map(|g| g.dockerfile.clone().into_bytes());
        let context = tokio::task::spawn_blocking(move || {
            let extra: Vec<(&str, &[u8])> =
                extra.as_deref().map(|d| vec![(GENERATED_DOCKERFILE, d)]).unwrap_or_default();
            context::tar_context(Vec::new(), &source, &extra)
        })
        .await
        .map_err(|e| Error::internal("packing the build context", e))?
        .map_err(|e| Error::internal("packing the build context", e))?;

        let tag = image_tag(request.project.as_str(), request.version);
        // Only the vars the Dockerfile declares: no other reaches the engine.
        let buildargs: HashMap<String, String> = plan.build_args.clone().into_iter().collect();
        let labels = HashMap::from([
            (crate::labels::PROJECT.to_owned(), request.project.to_string()),
            (crate::labels::DEPLOYMENT.to_owned(), request.version.to_string()),
        ]);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(plan.dockerfile)
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&buildargs)
            .labels(&labels)
            .build();
        let docker = self.engine.client().await?;
        log.line(&format!("-----> Building image {tag} ({} KiB of context)", context.len() / 1024));
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        let mut partial = String::new();
        let outcome = tokio::time::timeout(self.config.timeout, async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                            partial.push_str(text);
                            while let Some(end) = partial.find('\n') {
                                let line: String = partial.drain(..=end).collect();
                                let line = line.trim_end();
                                if !line.is_empty() {
                                    log.line(line);
                                }
                            }
                        }
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        })
        .await;
        if !partial.trim().is_empty() {
            log.line(partial.trim_end());
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let message = err.to_string();
                if let Some((tool, hint)) = plan.generated.as_ref().and_then(|g| g.needs.as_ref())
                    && message.contains(&format!("command -v {tool}"))
                {
                    return Err(Error::Invalid(hint.clone()));
                }
                if status_of(&err).is_some() || matches!(err, bollard::errors::Error::DockerStreamError { .. }) {
                    return Err(Error::Invalid(format!("docker build failed: {message}")));
                }
                return Err(engine_error("building the image", err));
            }
            Err(_) => {
                return Err(Error::Invalid(format!(
                    "the build took longer than its limit of {}s",
                    self.config.timeout.as_secs()
                )));
            }
        }
        for (name, command) in &plan.processes {
            let shown = if command.is_empty() { "(the image's own command)" } else { command };
            log.line(&format!("-----> Process type {name}: {shown}"));
        }
        log.line(&format!("-----> Built {tag} in {:.1}s", started.elapsed().as_secs_f64()));
        tracing::info!(project = %request.project, version = request.version, image = %tag, "built image");
        Ok(Artifact { reference: tag, processes: plan.processes })
    }

    async fn remove(&self, artifact: &str) -> Result<()> {
        if !artifact.starts_with("paastech/") {
            return Err(Error::Invalid(format!("{artifact:?} is not an image this builder made")));
        }
        let docker = self.engine.client().await?;
        match docker.remove_image(artifact, Some(RemoveImageOptionsBuilder::default().build()), None).await {
            Ok(_) => Ok(()),
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            Err(err) => Err(engine_error(format!("removing image {artifact}"), err)),
        }
    }
}
