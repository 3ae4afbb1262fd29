//! Runtime on Docker Swarm, through a manager's API socket (bollard).
//!
//! [`SwarmRuntime`] runs **one swarm service per instance** (replicated, one replica),
//! named and labelled like the Docker driver's containers (`paastech.namespace`,
//! `paastech.project`, `paastech.deployment`, `paastech.process`, `paastech.index`).
//! Not one service per process type with replicas = scale: the platform's instances have
//! stable identities (an index and an id) that the orchestrator stops one at a time (a
//! scale down, the drain of an old version), while swarm chooses by itself which task to
//! remove when replicas go down. An instance's id is its service's id, which stays the
//! same while swarm restarts its task or moves it to another node.
//!
//! A `web` instance publishes the app's fixed container port in host mode on a port the
//! engine chooses (endpoint mode `dnsrr`: no routing mesh or virtual IP, which need IPVS),
//! so its address is its running task's node address and that task's published port. The
//! address moves when swarm restarts or reschedules the task
//! ([`Runtime::instance_addresses_move`](paastech_core::drivers::Runtime::instance_addresses_move)).
//!
//! Images come from the `[registry]`: nodes pull the digest reference the builder pushed
//! (the Docker builder on the manager's engine, [`SwarmBuildOptions`]). A swarm without a
//! registry cannot run anything built on one machine, so the options refuse it.
//!
//! This crate names bollard types (through the Docker driver's engine client); it speaks
//! `paastech_core` types outward.

pub mod options;
pub mod runtime;

pub use options::{SwarmBuildOptions, SwarmRuntimeOptions};
pub use runtime::{SwarmRuntime, SwarmRuntimeConfig};
