//! PaaSTech's core: the domain (users, projects, builds, deployments), the traits every
//! backend implements (`RepoStore`, `ImageBuilder`, `Runtime`, `Store`), and the driver
//! registry. This crate names no concrete backend and no transport: no SQL, no HTTP,
//! no SSH, no container engine. Drivers depend on it, never the other way round.

pub mod addons;
pub mod app;
pub mod audit;
pub mod certificates;
pub mod cron;
pub mod deployment;
pub mod domain;
pub mod drivers;
pub mod error;
pub mod hooks;
pub mod hostname;
pub mod https;
pub mod interactive;
pub mod lifecycle;
pub mod logs;
pub mod mail;
pub mod metrics;
pub mod orchestrator;
pub mod ports;
pub mod previews;
pub mod registry;
pub mod roles;
pub mod sleep;
pub mod stats;
pub mod store;
pub mod webhooks;

pub use addons::{Addon, AddonKind, AddonName};
pub use audit::{AuditAction, AuditEvent, AuditRecord, AuditScope};
pub use certificates::{CertificateState, CertificateStatus, Certificates};
pub use cron::{CronJob, CronOutcome, CronRun};
pub use deployment::{Deployment, DeploymentStatus, NewDeployment};
pub use domain::{
    ApiToken, Build, BuildStatus, EnvVars, Project, ProjectName, SshKey, Timestamp, TotpEnrolment, User,
    validate_email, validate_env_key,
};
pub use error::{Error, Result};
pub use hostname::{Domain, DomainRules, Hostname};
pub use https::{HttpsChange, HttpsPolicy};
pub use lifecycle::Stopped;
pub use previews::PreviewOf;
pub use roles::{Collaborator, GitVerb, Role};
pub use sleep::SleepState;
pub use store::Store;
pub use webhooks::{Webhook, WebhookAttempt, WebhookEvent};
