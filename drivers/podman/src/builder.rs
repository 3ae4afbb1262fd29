//! `PodmanBuilder`: the pushed commit's Dockerfile (or a generated one) built by the engine
//! into `localhost/paastech/NAME:vVERSION`, its output streamed to the push.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::BodyExt;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder, LogSink};
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::libpod::Engine;
use crate::lines::LineBuf;
use crate::runtime::{DEFAULT_SOCKET, LABEL_DEPLOYMENT, LABEL_PROJECT};
use paastech_core::app::container::{self as context, GENERATED_DOCKERFILE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanBuilderConfig {
    /// The engine's API socket.
    pub socket: PathBuf,
    /// The image a Dockerfile is generated `FROM` for apps without one. `None`: such apps
    /// are refused with a message saying a Dockerfile is needed.
    pub base_image: Option<String>,
    /// The longest a build may take.
    pub timeout: Duration,
    /// Where each build is pushed; the artifact is then its digest reference there.
    pub registry: Option<ImageRegistry>,
}

impl Default for PodmanBuilderConfig {
    fn default() -> Self {
        PodmanBuilderConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            base_image: None,
            timeout: Duration::from_secs(15 * 60),
            registry: None,
        }
    }
}

pub struct PodmanBuilder {
    config: PodmanBuilderConfig,
    engine: Engine,
}

/// The image of a project's version. Fully qualified (`localhost/`), so that neither the
/// build nor a container start ever asks a registry for it.
pub fn image_tag(project: &str, version: i64) -> String {
    format!("localhost/paastech/{project}:v{version}")
}

impl PodmanBuilder {
    pub fn new(config: PodmanBuilderConfig) -> Self {
        let engine = Engine::new(&config.socket);
        PodmanBuilder { config, engine }
    }

    /// Checks that the engine answers, with an error saying how to start it if not.
    /// Tags the built image `<registry>/paastech/NAME:vN`, pushes it, and answers the
    /// digest reference the registry gives it.
    async fn push(
        &self,
        registry: &ImageRegistry,
        request: &BuildRequest,
        tag: &str,
        log: &dyn LogSink,
    ) -> Result<String> {
        let started = Instant::now();
        let project = request.project.as_str();
        let repository = registry.repository(project);
        let version = format!("v{}", request.version);
        let pushed = format!("{repository}:{version}");
        let path = format!("images/{}/tag?repo={}&tag={version}", query_value(tag), query_value(&repository));
        let (status, _) = self.engine.post_collect("tagging an image", &path, None).await?;
        if !status.is_success() {
            return Err(Error::internal_msg(format!("tagging {pushed}: podman answered {status}")));
        }
        log.line(&format!("-----> Pushing {pushed} to the registry {}", registry.address));
        let outcome =
            tokio::time::timeout(self.config.timeout, crate::registry::push(&self.engine, registry, &pushed)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "pushing {pushed} to the registry {} failed: it took longer than {}s",
                registry.address,
                self.config.timeout.as_secs()
            ))),
        };
        let result = match result {
            Ok(()) => crate::registry::digest_of(registry, project, &version).await,
            Err(err) => Err(err),
        };
        let digest = match result {
            Ok(digest) => digest,
            Err(err) => {
                let _ = self.engine.podman.images().get(&pushed).delete().await;
                return Err(err);
            }
        };
        let reference = format!("{repository}@{digest}");
        log.line(&format!("-----> Pushed {reference} in {:.1}s", started.elapsed().as_secs_f64()));
        tracing::info!(project = %request.project, version = request.version, image = %reference, "pushed image");
        Ok(reference)
    }

    /// Frees a pushed build: its manifest in the registry, then its local images. When
    /// another build of the project is the same local image (a rebuild of an unchanged
    /// tree), the registry may hold one manifest for both: it stays.
    async fn remove_pushed(&self, registry: &ImageRegistry, artifact: &str, project: &str, digest: &str) -> Result<()> {
        let repository = registry.repository(project);
        // Podman tags the pulled digest image apart from the built one: the build's own
        // local tags are `<repository>:vN` and `localhost/paastech/NAME:vN`.
        let version = self.pushed_version(&repository, digest).await;
        let tags = match &version {
            Some(version) => match self.engine.podman.images().get(format!("{repository}:{version}")).inspect().await {
                Ok(image) => image.repo_tags.unwrap_or_default(),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        let shared = tags.iter().filter(|t| t.starts_with(&format!("{repository}:"))).count() > 1;
        if shared {
            tracing::info!(image = %artifact, tags = ?tags, "kept a pruned build's manifest: other builds are the same image");
            return Ok(());
        }
        crate::registry::delete_manifest(registry, project, digest).await?;
        let mut local = vec![artifact.to_owned()];
        if let Some(version) = version {
            local.push(format!("{repository}:{version}"));
            local.push(format!("localhost/paastech/{project}:{version}"));
        }
        for reference in local {
            if let Err(err) = self.engine.podman.images().get(&reference).remove().await {
                match self.engine.error(&format!("removing image {reference}"), err) {
                    // Gone already, or still used by a container: the disk is freed later.
                    Error::NotFound(_) | Error::Conflict(_) | Error::Internal { .. } => {}
                    other => return Err(other),
                }
            }
        }
        Ok(())
    }

    /// The `vN` tag the registry gives `digest` in `repository`, if any.
    async fn pushed_version(&self, repository: &str, digest: &str) -> Option<String> {
        let images = self.engine.podman.images().list(&Default::default()).await.ok()?;
        images.into_iter().find_map(|image| {
            let digests = image.repo_digests.unwrap_or_default();
            digests.iter().any(|d| d == &format!("{repository}@{digest}")).then(|| {
                image
                    .repo_tags
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|t| t.strip_prefix(&format!("{repository}:")).map(str::to_owned))
            })?
        })
    }

    pub async fn ping(&self) -> Result<()> {
        self.engine.ping().await
    }
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved bytes).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The libpod build request's path and query. libpod 4.3 takes build arguments only in
/// the query string (which its service may log), so only the ones the Dockerfile declares
/// are there (the plan's); a build that declares none sends no `buildargs` at all.
fn build_path(plan: &context::BuildPlan, tag: &str, labels: &Value) -> String {
    let mut path = format!(
        "build?dockerfile={}&t={}&rm=true&forcerm=true&labels={}",
        query_value(plan.dockerfile),
        query_value(tag),
        query_value(&labels.to_string()),
    );
    if !plan.build_args.is_empty() {
        path.push_str(&format!("&buildargs={}", query_value(&json!(plan.build_args).to_string())));
    }
    path
}

/// One line of libpod's build answer: `{"stream": "..."}` for output, `{"error": "..."}`
/// when the build fails, other keys (`aux`, the image id) ignored.
enum BuildEvent {
    Output(String),
    Failed(String),
    Other,
}

fn build_event(line: &str) -> BuildEvent {
    match serde_json::from_str::<Value>(line) {
        Ok(value) => {
            if let Some(error) = value.get("error").and_then(Value::as_str) {
                BuildEvent::Failed(error.trim().to_owned())
            } else if let Some(text) = value.get("stream").and_then(Value::as_str) {
                BuildEvent::Output(text.to_owned())
            } else {
                BuildEvent::Other
            }
        }
        // Not JSON: pass it on as output rather than lose it.
        Err(_) => BuildEvent::Output(format!("{line}\n")),
    }
}

#[async_trait::async_trait]
impl ImageBuilder for PodmanBuilder {
    fn name(&self) -> &'static str {
        "podman"
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
        // The context goes to a temp file, streamed from there: a big repository is not
        // held in memory, and packing it does not block the async threads.
        let extra = plan.generated.as_ref().map(|g| g.dockerfile.clone().into_bytes());
        let tar = tokio::task::spawn_blocking(move || -> std::io::Result<(tempfile::NamedTempFile, u64)> {
            let extra: Vec<(&str, &[u8])> =
                extra.as_deref().map(|d| vec![(GENERATED_DOCKERFILE, d)]).unwrap_or_default();
            let file = tempfile::NamedTempFile::new()?;
            let mut writer = context::tar_context(std::io::BufWriter::new(file), &source, &extra)?;
            writer.flush()?;
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            let len = file.as_file().metadata()?.len();
            Ok((file, len))
        })
        .await
        .map_err(|e| Error::internal("packing the build context", e))?
        .map_err(|e| Error::internal("packing the build context", e))?;
        let (tar, tar_len) = tar;

        let tag = image_tag(request.project.as_str(), request.version);
        let labels = json!({
            LABEL_PROJECT: request.project.to_string(),
            LABEL_DEPLOYMENT: request.version.to_string(),
        });
        let path = build_path(&plan, &tag, &labels);
        log.line(&format!("-----> Building image {tag} ({} KiB of context)", tar_len / 1024));
        let outcome = tokio::time::timeout(self.config.timeout, async {
            let mut body = self.engine.post_tar("building the image", &path, tar.path()).await?;
            let (mut json_lines, mut output) = (LineBuf::default(), LineBuf::default());
            let mut failure: Option<String> = None;
            let mut handle = |line: &str| match build_event(line) {
                BuildEvent::Output(text) => output.push(text.as_bytes(), |l| {
                    if !l.trim().is_empty() {
                        log.line(l.trim_end());
                    }
                }),
                BuildEvent::Failed(message) => failure = Some(message),
                BuildEvent::Other => {}
            };
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Error::internal("reading the build output", e))?;
                if let Some(data) = frame.data_ref() {
                    json_lines.push(data, &mut handle);
                }
            }
            json_lines.finish(&mut handle);
            output.finish(|l| {
                if !l.trim().is_empty() {
                    log.line(l.trim_end());
                }
            });
            match failure {
                Some(message) => Err(Error::Invalid(message)),
                None => Ok(()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(Error::Invalid(message))) => {
                if let Some((tool, hint)) = plan.generated.as_ref().and_then(|g| g.needs.as_ref())
                    && message.contains(&format!("command -v {tool}"))
                {
                    return Err(Error::Invalid(hint.clone()));
                }
                return Err(Error::Invalid(format!("podman build failed: {message}")));
            }
            Ok(Err(err)) => return Err(err),
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
            Some(registry) => match self.push(registry, request, &tag, log).await {
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
        if !artifact.starts_with("localhost/paastech/") {
            return Err(Error::Invalid(format!("{artifact:?} is not an image this builder made")));
        }
        match self.engine.podman.images().get(artifact).delete().await {
            Ok(()) => Ok(()),
            Err(err) => match self.engine.error(&format!("removing image {artifact}"), err) {
                Error::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_query_values() {
        assert_eq!(query_value("localhost/paastech/a:v1"), "localhost%2Fpaastech%2Fa%3Av1");
        assert_eq!(query_value(r#"{"K":"a b&c"}"#), "%7B%22K%22%3A%22a%20b%26c%22%7D");
        assert_eq!(query_value("é"), "%C3%A9");
    }

    #[test]
    fn only_declared_build_args_travel_in_the_url() {
        let env = [("SECRET", "s3cr3t-value"), ("NPM_TOKEN", "t0k3n-value")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let labels = json!({"paastech.project": "demo"});
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("index.html"), "hi").expect("file");
        let generated = context::plan(dir.path(), Some("base"), &env).expect("a generated Dockerfile");
        let path = build_path(&generated, "localhost/paastech/demo:v1", &labels);
        assert!(!path.contains("buildargs") && !path.contains("value"), "no var for a generated Dockerfile: {path}");

        std::fs::write(dir.path().join("Dockerfile"), "FROM base\nARG NPM_TOKEN\nRUN make\n").expect("Dockerfile");
        let own = context::plan(dir.path(), None, &env).expect("the repository's Dockerfile");
        let path = build_path(&own, "localhost/paastech/demo:v1", &labels);
        assert!(path.contains("&buildargs=%7B%22NPM_TOKEN%22%3A%22t0k3n-value%22%7D"), "the declared one: {path}");
        assert!(!path.contains("SECRET") && !path.contains("s3cr3t"), "not the undeclared one: {path}");
    }

    #[test]
    fn reads_build_events() {
        assert!(matches!(build_event(r#"{"stream":"STEP 1/2\n"}"#), BuildEvent::Output(t) if t == "STEP 1/2\n"));
        assert!(matches!(build_event(r#"{"error":"boom\n","errorDetail":{}}"#), BuildEvent::Failed(m) if m == "boom"));
        assert!(matches!(build_event(r#"{"aux":{"ID":"sha256:1"}}"#), BuildEvent::Other));
        assert!(matches!(build_event("plain"), BuildEvent::Output(t) if t == "plain\n"));
    }
}
