//! Runtime and builder for local processes, no containers (like Piku).
//!
//! [`ProcessBuilder`] builds a release directory in place (a Python venv, `npm ci`,
//! `cargo build --release`, `go build`, or nothing for static sites) and reads the process
//! types from the Procfile or from detection (`paastech_core::app`). [`ProcessRuntime`] runs each instance as
//! `sh -c COMMAND` in its own process group with a clean environment, restarts it with
//! backoff when it exits, and kills the whole group on stop.
//!
//! This crate is the only one that knows how apps are built and run without containers;
//! it speaks only `paastech_core` types outward.

pub mod builder;
pub mod runtime;

pub mod options;

mod cgroup;
mod group;
mod interactive;
mod ledger;
mod lines;
mod toolchains;
mod users;

pub use builder::{ProcessBuilder, ProcessBuilderConfig};
pub use options::{ProcessBuildOptions, ProcessRuntimeOptions};
pub use runtime::{ProcessRuntime, ProcessRuntimeConfig, RestartPolicy};
pub use users::{AppUsers, DEFAULT_FIRST_UID, DEFAULT_UID_COUNT};
