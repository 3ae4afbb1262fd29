//! Runtime and image builder on Podman, through its libpod API (Podman 4.3).
//!
//! [`PodmanBuilder`] builds the pushed commit's Dockerfile (or one generated from
//! detection on a configured base image) into `paastech/NAME:vVERSION`, streaming the
//! build output. [`PodmanRuntime`] runs each instance as a locked-down container labelled
//! `paastech.project`, `paastech.deployment`, `paastech.process`, publishing its `PORT` on
//! a random loopback port for the ingress, and finds its containers again by those labels
//! after a server restart.
//!
//! This crate is the only one that names podman-api types; it speaks only
//! `paastech_core` types outward.

pub mod builder;
pub mod runtime;

pub mod options;

mod interactive;
mod libpod;
mod lines;
mod registry;

pub use builder::{PodmanBuilder, PodmanBuilderConfig};
pub use options::{PodmanBuildOptions, PodmanRuntimeOptions};
pub use runtime::{DEFAULT_SOCKET, PodmanRuntime, PodmanRuntimeConfig, Ulimit, default_ulimits};
