//! Runtime and image builder on a Docker engine, through its API socket (bollard).
//!
//! [`DockerBuilder`] builds the pushed commit's `Dockerfile` (or one generated from
//! detection and a configured base image) into `paastech/NAME:vVERSION`, streaming the
//! engine's build output to the push. [`DockerRuntime`] runs each instance as a container
//! labelled `paastech.project`, `paastech.deployment`, `paastech.process` and
//! `paastech.index`, published on a loopback port for the ingress, never privileged, with
//! `no-new-privileges`, every capability dropped but a few, and memory, CPU and pids limits.
//! The engine restarts crashed containers; [`DockerRuntime::list`](paastech_core::drivers::Runtime::list)
//! finds containers by their labels, so a server restarted finds what it started before.
//!
//! This crate is the only one that names bollard types; it speaks `paastech_core` types
//! outward. Podman's Docker-compatible socket speaks the same API, so the same code serves
//! it when configured with that socket.

pub mod builder;
pub mod runtime;

pub mod options;

pub mod engine;
mod interactive;
pub mod registry;
pub mod stats;

pub use builder::{DockerBuilder, DockerBuilderConfig};
pub use engine::{DEFAULT_DOCKER_SOCKET, EngineConfig};
pub use options::{DockerBuildOptions, DockerRuntimeOptions};
pub use runtime::{DockerRuntime, DockerRuntimeConfig};

/// Labels every container of the platform carries; `list` and reconcile find them by these.
pub mod labels {
    /// The server (data directory) a container belongs to.
    pub const NAMESPACE: &str = "paastech.namespace";
    pub const PROJECT: &str = "paastech.project";
    pub const DEPLOYMENT: &str = "paastech.deployment";
    pub const PROCESS: &str = "paastech.process";
    pub const INDEX: &str = "paastech.index";
}
