//! `DockerBuilder`: the pushed commit's Dockerfile (or a generated one) built by the engine
//! into `paastech/NAME:vVERSION`, its output streamed to the push.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder, LogSink};
use paastech_core::registry::ImageRegistry;
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
    /// The longest a build may take (and, apart, its push to the registry).
    pub timeout: Duration,
    /// Where each build is pushed; the artifact is then its digest reference there.
    pub registry: Option<ImageRegistry>,
}

impl Default for DockerBuilderConfig {
    fn default() -> Self {
        DockerBuilderConfig {
            engine: EngineConfig::default(),
            base_image: None,
            timeout: Duration::from_secs(15 * 60),
            registry: None,
        }
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

    /// Tags the built image `<registry>/paastech/NAME:vN`, pushes it (its progress into
    /// the build log) and answers its digest reference, `<registry>/paastech/NAME@sha256:…`,
    /// which every node resolves to exactly these bytes.
    async fn push(
        &self,
        docker: &Docker,
        registry: &ImageRegistry,
        request: &BuildRequest,
        tag: &str,
        log: &dyn LogSink,
    ) -> Result<String> {
        let started = Instant::now();
        let repository = registry.repository(request.project.as_str());
        let version = format!("v{}", request.version);
        let pushed = format!("{repository}:{version}");
        let address = &registry.address;
        docker
            .tag_image(tag, Some(TagImageOptionsBuilder::default().repo(&repository).tag(&version).build()))
            .await
            .map_err(|err| engine_error(format!("tagging {pushed}"), err))?;
        log.line(&format!("-----> Pushing {pushed} to the registry {address}"));
        let options = PushImageOptionsBuilder::default().tag(&version).build();
        let mut stream = docker.push_image(&repository, Some(options), crate::registry::credentials(registry));
        let outcome = tokio::time::timeout(self.config.timeout, async {
            // The engine repeats "Pushing" with a progress bar per layer: each other status
            // once is what a person at `git push` wants to see.
            let mut last = String::new();
            while let Some(item) = stream.next().await {
                let info = item?;
                if let Some(status) = info.status.as_deref().map(str::trim)
                    && !status.is_empty()
                    && !matches!(status, "Pushing" | "Preparing" | "Waiting")
                    && status != last
                {
                    log.line(status);
                    last = status.to_owned();
                }
            }
            Ok::<(), bollard::errors::Error>(())
        })
        .await;
        let failed =
            |why: String| Error::Unavailable(format!("pushing {pushed} to the registry {address} failed: {why}"));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let why = match err {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                };
                let _ = docker.remove_image(&pushed, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
                return Err(failed(why));
            }
            Err(_) => {
                let _ = docker.remove_image(&pushed, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
                return Err(failed(format!("it took longer than {}s", self.config.timeout.as_secs())));
            }
        }
        let image =
            docker.inspect_image(&pushed).await.map_err(|err| engine_error(format!("inspecting {pushed}"), err))?;
        let prefix = format!("{repository}@");
        let reference =
            image
                .repo_digests
                .unwrap_or_default()
                .into_iter()
                .find(|digest| digest.starts_with(&prefix))
                .ok_or_else(|| Error::internal_msg(format!("the engine knows no digest of {pushed} after its push")))?;
        log.line(&format!("-----> Pushed {reference} in {:.1}s", started.elapsed().as_secs_f64()));
        tracing::info!(project = %request.project, version = request.version, image = %reference, "pushed image");
        Ok(reference)
    }

    /// Frees a pushed build: its manifest in the registry, then its local tags. When
    /// another build of the project is the very same image (a rebuild of an unchanged
    /// tree), its manifest is that build's too: deleting it by digest would delete both,
    /// so the registry keeps it and only what is known to be this build's goes.
    async fn remove_pushed(&self, registry: &ImageRegistry, artifact: &str, project: &str, digest: &str) -> Result<()> {
        let docker = self.engine.client().await?;
        let repository = registry.repository(project);
        let tags = match docker.inspect_image(artifact).await {
            Ok(image) => image.repo_tags.unwrap_or_default(),
            Err(err) if status_of(&err) == Some(404) => Vec::new(),
            Err(err) => return Err(engine_error(format!("inspecting {artifact}"), err)),
        };
        let pushed: Vec<&String> = tags.iter().filter(|t| t.starts_with(&format!("{repository}:"))).collect();
        if pushed.len() > 1 {
            tracing::info!(image = %artifact, tags = ?pushed, "kept a pruned build's manifest: other builds are the same image");
            return Ok(());
        }
        // The engine's own view of the registry: it pushed over plain HTTP to one it was
        // told is insecure, and so must the delete.
        let engine = docker.info().await.ok().and_then(|info| info.registry_config);
        let plain_http = crate::registry::plain_http(registry, engine.as_ref());
        crate::registry::delete_manifest(registry, plain_http, project, digest).await?;
        // This build's tags: the pushed `vN` and the local `paastech/NAME:vN` of the same N.
        let mut local = Vec::new();
        if let Some(version) = pushed.first().and_then(|t| t.rsplit(':').next()) {
            local.push(format!("{repository}:{version}"));
            local.push(format!("paastech/{project}:{version}"));
        }
        local.push(artifact.to_owned());
        for reference in local {
            match docker.remove_image(&reference, Some(RemoveImageOptionsBuilder::default().build()), None).await {
                Ok(_) => {}
                // Gone already, or still used by a container: the disk is freed later.
                Err(err) if matches!(status_of(&err), Some(404 | 409)) => {}
                Err(err) => return Err(engine_error(format!("removing image {reference}"), err)),
            }
        }
        Ok(())
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
        let reference = match &self.config.registry {
            Some(registry) => match self.push(docker, registry, request, &tag, log).await {
                Ok(reference) => reference,
                Err(err) => {
                    // The build is refused: its image has no use left here.
                    let _ = self.remove(&tag).await;
                    return Err(err);
                }
            },
            None => tag,
        };
        Ok(Artifact { reference, processes: plan.processes })
    }

    async fn remove(&self, artifact: &str) -> Result<()> {
        if let Some(registry) = &self.config.registry
            && let Some((project, digest)) = crate::registry::parse_reference(registry, artifact)
        {
            return self.remove_pushed(registry, artifact, project, digest).await;
        }
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
