//! The container registry (`[registry]`) as the Docker driver uses it: the engine pushes
//! and pulls (with the registry's credentials), and a pruned build's manifest is deleted
//! through distribution's HTTP API, which the engine does not speak. The Swarm driver
//! hands the same credentials to the manager, which passes them to the nodes.

use std::net::Ipv4Addr;
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::models::RegistryServiceConfig;
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};

/// The engine's credentials for `registry`; `None` when it needs none.
pub fn credentials(registry: &ImageRegistry) -> Option<DockerCredentials> {
    let username = registry.username.clone()?;
    Some(DockerCredentials {
        username: Some(username),
        password: registry.password.clone(),
        serveraddress: Some(registry.address.clone()),
        ..DockerCredentials::default()
    })
}

/// The digest of `reference` = `<repository>@sha256:…`, when it names one in `registry`:
/// (project, digest).
pub(crate) fn parse_reference<'a>(registry: &ImageRegistry, reference: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = reference.strip_prefix(registry.address.as_str())?.strip_prefix("/paastech/")?;
    let (project, digest) = rest.split_once('@')?;
    (digest.starts_with("sha256:") && !project.is_empty()).then_some((project, digest))
}

/// Whether the engine speaks plain HTTP to `registry`, as it does to one on loopback or
/// one it was told is insecure (`--insecure-registry HOST:PORT` or a CIDR holding its
/// address): the manifest deletes then do the same. A swarm's nodes often reach their
/// registry so, on a private network.
pub(crate) fn plain_http(registry: &ImageRegistry, engine: Option<&RegistryServiceConfig>) -> bool {
    if registry.is_loopback() {
        return true;
    }
    let Some(engine) = engine else { return false };
    let listed = engine.index_configs.as_ref().and_then(|configs| configs.get(&registry.address));
    if let Some(secure) = listed.and_then(|config| config.secure) {
        return !secure;
    }
    let host = registry.address.rsplit_once(':').map_or(registry.address.as_str(), |(host, _)| host);
    let Ok(ip) = host.parse::<Ipv4Addr>() else { return false };
    engine.insecure_registry_cidrs.iter().flatten().any(|cidr| {
        let Some((net, bits)) = cidr.split_once('/') else { return false };
        match (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) {
            (Ok(net), Ok(bits)) if bits <= 32 => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            _ => false,
        }
    })
}

/// Deletes a project's manifest by digest (`DELETE /v2/paastech/<project>/manifests/<digest>`),
/// which drops every tag pointing at it; the registry's garbage collection frees the
/// layers. One already gone is no error. Over plain HTTP when the engine pushed so.
pub(crate) async fn delete_manifest(
    registry: &ImageRegistry,
    plain_http: bool,
    project: &str,
    digest: &str,
) -> Result<()> {
    let scheme = if plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/paastech/{project}/manifests/{digest}", registry.address);
    let authorization = registry.username.as_ref().map(|user| {
        let pair = format!("{user}:{}", registry.password.as_deref().unwrap_or_default());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    });
    let address = registry.address.clone();
    let status = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.delete(&url).header("Accept", MANIFEST_TYPES);
        if let Some(value) = &authorization {
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
        401 | 403 => Err(Error::Unavailable(format!(
            "the registry {address} refused to delete {project}@{digest}: its credentials were not accepted ({status})"
        ))),
        other => {
            Err(Error::Unavailable(format!("the registry {address} answered {other} to deleting {project}@{digest}")))
        }
    }
}

/// Manifest kinds the engine pushes (schema 2 and OCI).
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_references_of_the_registry_are_parsed() {
        let registry = ImageRegistry { address: "127.0.0.1:5000".into(), username: None, password: None };
        assert_eq!(parse_reference(&registry, "127.0.0.1:5000/paastech/blog@sha256:abc"), Some(("blog", "sha256:abc")));
        assert_eq!(parse_reference(&registry, "127.0.0.1:5000/paastech/blog:v3"), None);
        assert_eq!(parse_reference(&registry, "paastech/blog:v3"), None);
        assert_eq!(parse_reference(&registry, "127.0.0.1:5001/paastech/blog@sha256:abc"), None);
        assert!(credentials(&registry).is_none());
    }

    #[test]
    fn deletes_speak_plain_http_where_the_engine_does() {
        let at = |address: &str| ImageRegistry { address: address.into(), username: None, password: None };
        let engine = RegistryServiceConfig {
            index_configs: Some(std::collections::HashMap::from([(
                "10.231.0.1:5000".to_owned(),
                bollard::models::IndexInfo { secure: Some(false), ..Default::default() },
            )])),
            insecure_registry_cidrs: Some(vec!["127.0.0.0/8".into(), "192.168.7.0/24".into()]),
            ..Default::default()
        };
        assert!(plain_http(&at("127.0.0.1:5000"), None), "loopback");
        assert!(plain_http(&at("10.231.0.1:5000"), Some(&engine)), "listed insecure");
        assert!(plain_http(&at("192.168.7.9:5000"), Some(&engine)), "in an insecure CIDR");
        assert!(!plain_http(&at("192.168.8.9:5000"), Some(&engine)), "outside it");
        assert!(!plain_http(&at("registry.example.com:5000"), Some(&engine)), "a name not listed");
        assert!(!plain_http(&at("10.231.0.1:5000"), None), "the engine unknown: HTTPS");
    }
}
