//! The container registry (`[registry]`) as the Podman driver uses it: libpod pushes and
//! pulls (TLS checked except on loopback, as Docker does); the digest of a push and the
//! deletes of pruned builds go to distribution's HTTP API, which libpod does not speak.
//! Podman rewrites an image's manifest when it pushes it, so the digest that names the
//! pushed bytes is the registry's (`Docker-Content-Digest`), not the local image's.

use std::time::Duration;

use base64::Engine as _;
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};
use serde_json::Value;

use crate::libpod::Engine;

/// `X-Registry-Auth` for `registry`'s credentials, if it has any.
fn auth_header(registry: &ImageRegistry) -> Option<String> {
    let username = registry.username.as_ref()?;
    let auth = serde_json::json!({
        "username": username,
        "password": registry.password.clone().unwrap_or_default(),
        "serveraddress": registry.address,
    });
    Some(base64::engine::general_purpose::URL_SAFE.encode(auth.to_string()))
}

/// The (project, digest) of `reference` = `<registry>/paastech/NAME@sha256:…`.
pub(crate) fn parse_reference<'a>(registry: &ImageRegistry, reference: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = reference.strip_prefix(registry.address.as_str())?.strip_prefix("/paastech/")?;
    let (project, digest) = rest.split_once('@')?;
    (digest.starts_with("sha256:") && !project.is_empty()).then_some((project, digest))
}

/// The `error` of a libpod stream of JSON lines, if one says so.
fn stream_error(body: &[u8]) -> Option<String> {
    String::from_utf8_lossy(body).lines().find_map(|line| {
        let value: Value = serde_json::from_str(line).ok()?;
        value.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()).map(str::to_owned)
    })
}

fn query(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Pushes `image` (`<repository>:vN`) to `registry`.
pub(crate) async fn push(engine: &Engine, registry: &ImageRegistry, image: &str) -> Result<()> {
    let path = format!("images/{}/push?tlsVerify={}", query(image), !registry.is_loopback());
    let failed =
        |why: String| Error::Unavailable(format!("pushing {image} to the registry {} failed: {why}", registry.address));
    let (status, body) = engine.post_collect("pushing an image", &path, auth_header(registry).as_deref()).await?;
    if let Some(error) = stream_error(&body) {
        return Err(failed(error));
    }
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        return Err(failed(format!("podman answered {status}: {message}")));
    }
    Ok(())
}

/// Pulls `image` from `registry` unless the engine has it.
pub(crate) async fn ensure_image(engine: &Engine, registry: &ImageRegistry, image: &str) -> Result<()> {
    if engine.podman.images().get(image).exists().await.unwrap_or(false) {
        return Ok(());
    }
    tracing::info!(image, "pulling an image from the registry");
    let path = format!("images/pull?reference={}&tlsVerify={}", query(image), !registry.is_loopback());
    let (status, body) = engine.post_collect("pulling an image", &path, auth_header(registry).as_deref()).await?;
    match stream_error(&body) {
        Some(error) => {
            Err(Error::Unavailable(format!("pulling {image} from the registry {} failed: {error}", registry.address)))
        }
        None if !status.is_success() => Err(Error::Unavailable(format!(
            "pulling {image} from the registry {} failed: podman answered {status}",
            registry.address
        ))),
        None => Ok(()),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn url(registry: &ImageRegistry, path: &str) -> String {
    let scheme = if registry.is_loopback() { "http" } else { "https" };
    format!("{scheme}://{}/v2/{path}", registry.address)
}

fn basic_auth(registry: &ImageRegistry) -> Option<String> {
    registry.username.as_ref().map(|user| {
        let pair = format!("{user}:{}", registry.password.as_deref().unwrap_or_default());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    })
}

/// Manifest kinds Podman pushes (schema 2 and OCI).
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The registry's digest of `paastech/<project>:<tag>`.
pub(crate) async fn digest_of(registry: &ImageRegistry, project: &str, tag: &str) -> Result<String> {
    let url = url(registry, &format!("paastech/{project}/manifests/{tag}"));
    let auth = basic_auth(registry);
    let address = registry.address.clone();
    let (status, digest) = tokio::task::spawn_blocking(move || {
        let mut request = agent().head(&url).header("Accept", MANIFEST_TYPES);
        if let Some(value) = &auth {
            request = request.header("Authorization", value);
        }
        request.call().map(|response| {
            let digest =
                response.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
            (response.status().as_u16(), digest)
        })
    })
    .await
    .map_err(|err| Error::internal("asking the registry for a digest", err))?
    .map_err(|err| Error::Unavailable(format!("the registry {address} cannot be reached: {err}")))?;
    match (status, digest) {
        (200, Some(digest)) if digest.starts_with("sha256:") => Ok(digest),
        (status, _) => Err(Error::Unavailable(format!(
            "the registry {address} gave no digest of paastech/{project}:{tag} after its push (status {status})"
        ))),
    }
}

/// Deletes a project's manifest by digest; one already gone is no error.
pub(crate) async fn delete_manifest(registry: &ImageRegistry, project: &str, digest: &str) -> Result<()> {
    let url = url(registry, &format!("paastech/{project}/manifests/{digest}"));
    let auth = basic_auth(registry);
    let address = registry.address.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut request = agent().delete(&url).header("Accept", MANIFEST_TYPES);
        if let Some(value) = &auth {
            request = request.header("Authorization", value);
        }
        request.call().map(|response| response.status().as_u16())
    })
    .await
    .map_err(|err| Error::internal("deleting a manifest", err))?
    .map_err(|err| Error::Unavailable(format!("the registry {address} cannot be reached: {err}")))?;
    match status {
        200..=299 | 404 => Ok(()),
        405 => Err(Error::Unavailable(format!(
            "the registry {address} refuses deletes: enable them in its config (storage: delete: enabled: true)"
        ))),
        other => {
            Err(Error::Unavailable(format!("the registry {address} answered {other} to deleting {project}@{digest}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_references_errors_and_credentials() {
        let registry = ImageRegistry { address: "127.0.0.1:5000".into(), username: None, password: None };
        assert_eq!(parse_reference(&registry, "127.0.0.1:5000/paastech/a@sha256:1"), Some(("a", "sha256:1")));
        assert_eq!(parse_reference(&registry, "localhost/paastech/a:v1"), None);
        assert_eq!(
            stream_error(b"{\"stream\":\"x\"}\n{\"error\":\"connection refused\"}\n").as_deref(),
            Some("connection refused")
        );
        assert_eq!(stream_error(b"{\"stream\":\"ok\"}\n"), None);
        assert!(auth_header(&registry).is_none());
        assert_eq!(query("127.0.0.1:5000/paastech/a:v1"), "127.0.0.1%3A5000%2Fpaastech%2Fa%3Av1");
    }
}
