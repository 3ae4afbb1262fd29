//! Runtime and builder for local processes, no containers (like Piku).
//!
//! [`ProcessBuilder`] builds a release directory in place (a Python venv, `npm ci`,
//! `cargo build --release`, `go build`, or nothing for static sites) and reads the process
//! types from the Procfile or from detection. [`ProcessRuntime`] runs each instance as
//! `sh -c COMMAND` in its own process group with a clean environment, restarts it with
//! backoff when it exits, and kills the whole group on stop.
//!
//! This crate is the only one that knows how apps are built and run without containers;
//! it speaks only `paastech_core` types outward.

pub mod builder;
pub mod detect;
pub mod procfile;
pub mod runtime;
pub mod shell;

mod group;
mod lines;

pub use builder::{ProcessBuilder, ProcessBuilderConfig};
pub use detect::{Detected, Language, detect};
pub use runtime::{ProcessRuntime, ProcessRuntimeConfig, RestartPolicy};
pub use shell::shell_quote;
