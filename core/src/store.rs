//! What PaaSTech persists, as one trait. The only implementation speaking SQL lives in
//! `paastech-store`; tests of pure logic may use an in-memory one.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::addons::{Addon, AddonName};
use crate::audit::{AuditEvent, AuditRecord, AuditScope};

use crate::cron::{CronJob, CronRun};
use crate::deployment::{Deployment, DeploymentStatus, NewDeployment};
use crate::domain::{
    ApiToken, Build, BuildStatus, EnvVars, Project, ProjectName, SshKey, Timestamp, TotpEnrolment, User,
};
use crate::drivers::Limits;
use crate::error::Result;
use crate::hostname::{Domain, Hostname};
use crate::https::HttpsPolicy;
use crate::lifecycle::Stopped;
use crate::mail::EmailPurpose;
use crate::roles::{Collaborator, Role};
use crate::sleep::SleepState;
use crate::webhooks::{Webhook, WebhookAttempt, WebhookEvent};

/// A change to a project's env: `Some` sets, `None` unsets.
pub type EnvChanges = BTreeMap<String, Option<String>>;

#[async_trait]
pub trait Store: Send + Sync {
    /// Answers only if the database answers a query.
    async fn ping(&self) -> Result<()>;

    // Users.
    /// Creates a user; the first user of the platform becomes an admin (decided atomically).
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User>;
    async fn user(&self, id: i64) -> Result<User>;
    /// The user with this email and their password hash.
    async fn user_by_email(&self, email: &str) -> Result<(User, String)>;
    async fn set_email_verified(&self, user_id: i64, verified: bool) -> Result<()>;
    async fn set_password(&self, user_id: i64, password_hash: &str) -> Result<()>;
    /// Keeps `token_hash` as the user's one usable token for `purpose` (earlier unused ones
    /// of the same purpose are dropped), usable until `expires_at`.
    async fn create_email_token(
        &self,
        user_id: i64,
        purpose: EmailPurpose,
        token_hash: &str,
        expires_at: Timestamp,
    ) -> Result<()>;
    /// Uses a token once: its user, when it exists for `purpose`, is unused and has not
    /// expired at `now`; otherwise `NotFound`. A token is never usable twice.
    async fn use_email_token(&self, purpose: EmailPurpose, token_hash: &str, now: Timestamp) -> Result<User>;
    /// Deletes the user's tokens with one of `names` (their sessions); how many.
    async fn delete_tokens_named(&self, user_id: i64, names: &[&str]) -> Result<usize>;
    async fn users(&self) -> Result<Vec<User>>;
    /// Disables or enables an account. Disabling also deletes all its tokens (API tokens
    /// and web sessions), so whatever it was signed in with stops at once.
    async fn set_user_disabled(&self, user_id: i64, disabled: bool) -> Result<User>;
    // Two-factor login (TOTP). The secret is sealed at rest like config vars.
    /// The user's TOTP enrolment, pending or enabled, if any.
    async fn totp(&self, user_id: i64) -> Result<Option<TotpEnrolment>>;
    /// Starts an enrolment with a new `secret` (replacing a pending one); `Conflict` when
    /// the user has 2FA enabled already.
    async fn start_totp(&self, user_id: i64, secret: &[u8]) -> Result<()>;
    /// Enables the pending enrolment: `step` is the step of the code that confirmed it
    /// (used, so it cannot log in again), and `recovery_hashes` replace the user's
    /// recovery codes. `NotFound` without a pending enrolment.
    async fn enable_totp(&self, user_id: i64, step: i64, recovery_hashes: &[String]) -> Result<()>;
    /// Records `step` as used: false when it, or a later step, was used already (a
    /// replay), decided in one statement so two uses racing cannot both pass.
    async fn use_totp_step(&self, user_id: i64, step: i64) -> Result<bool>;
    /// Uses one recovery code by its hash: false when the user has no such unused code.
    async fn use_recovery_code(&self, user_id: i64, code_hash: &str) -> Result<bool>;
    /// Removes the user's enrolment and recovery codes; false when there was none.
    async fn delete_totp(&self, user_id: i64) -> Result<bool>;
    /// Deletes an account with its tokens, SSH keys and collaborator rows; `Conflict`
    /// while it still owns a project (the caller transfers or deletes them first).
    async fn delete_user(&self, user_id: i64) -> Result<()>;

    // API tokens, stored as hashes only.
    async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiToken>;
    /// The live token with this hash and its user; records the use (to the minute).
    async fn use_token(&self, token_hash: &str) -> Result<(ApiToken, User)>;
    async fn tokens(&self, user_id: i64) -> Result<Vec<ApiToken>>;
    async fn delete_token(&self, user_id: i64, token_id: i64) -> Result<()>;

    // SSH keys.
    async fn add_ssh_key(&self, user_id: i64, name: &str, fingerprint: &str, public_key: &str) -> Result<SshKey>;
    async fn ssh_keys(&self, user_id: i64) -> Result<Vec<SshKey>>;
    async fn delete_ssh_key(&self, user_id: i64, key_id: i64) -> Result<()>;
    async fn user_by_ssh_fingerprint(&self, fingerprint: &str) -> Result<(SshKey, User)>;

    // Projects.
    async fn create_project(&self, owner_id: i64, name: &ProjectName) -> Result<Project>;
    async fn project(&self, name: &ProjectName) -> Result<Project>;
    /// Every project of one owner, or of everyone with `None`, by name.
    async fn projects(&self, owner_id: Option<i64>) -> Result<Vec<Project>>;
    /// Deletes the project and all that belongs to it.
    async fn delete_project(&self, project_id: i64) -> Result<()>;
    /// A project by its id.
    async fn project_by_id(&self, id: i64) -> Result<Project>;
    /// Makes `name` the preview app of `branch` of `parent`: a project of the same owner,
    /// with previews off. A name that is taken is a `Conflict`.
    async fn create_preview(&self, parent: &Project, name: &ProjectName, branch: &str) -> Result<Project>;
    /// The preview apps of a project, by name.
    async fn previews(&self, parent_id: i64) -> Result<Vec<Project>>;
    /// Turns a project's previews on or off (what is made of them is the orchestrator's).
    async fn set_previews_enabled(&self, project_id: i64, enabled: bool) -> Result<()>;

    // Members other than the owner (`Project::owner_id`, whose role is always owner).
    /// The user's role from their row on the project, if they have one.
    async fn collaborator_role(&self, project_id: i64, user_id: i64) -> Result<Option<Role>>;
    /// The project's collaborators, oldest first.
    async fn collaborators(&self, project_id: i64) -> Result<Vec<Collaborator>>;
    /// Gives the user a row on the project with this role, or changes the role of their
    /// row; `NotFound` for a missing project or user.
    async fn set_collaborator(&self, project_id: i64, user_id: i64, role: Role) -> Result<Collaborator>;
    /// Removes the user's row; `NotFound` unless they have one.
    async fn remove_collaborator(&self, project_id: i64, user_id: i64) -> Result<()>;
    /// The projects the user has a row on, with their role, by name.
    async fn collaborations(&self, user_id: i64) -> Result<Vec<(Project, Role)>>;
    /// In one transaction: `new_owner_id` becomes the owner of the project and of its
    /// previews, their own row goes, and the previous owner keeps a row as an owner.
    async fn transfer_project(&self, project_id: i64, new_owner_id: i64) -> Result<Project>;

    // Config.
    async fn env(&self, project_id: i64) -> Result<EnvVars>;
    /// Applies the changes in one transaction and returns the resulting env.
    async fn update_env(&self, project_id: i64, changes: &EnvChanges) -> Result<EnvVars>;
    async fn scale(&self, project_id: i64) -> Result<BTreeMap<String, u32>>;
    async fn set_scale(&self, project_id: i64, scale: &BTreeMap<String, u32>) -> Result<()>;
    /// The project's own instance limits; `None` fields fall back to the runtime's defaults.
    async fn limits(&self, project_id: i64) -> Result<Limits>;
    async fn set_limits(&self, project_id: i64, limits: &Limits) -> Result<()>;
    /// The project's HTTPS policy; the default one until it is set.
    async fn https_policy(&self, project_id: i64) -> Result<HttpsPolicy>;
    async fn set_https_policy(&self, project_id: i64, policy: &HttpsPolicy) -> Result<()>;
    /// What `paastech stop` left stopped of the project; nothing until it is set.
    async fn stopped(&self, project_id: i64) -> Result<Stopped>;
    /// Replaces what is stopped of the project; `NotFound` for a missing project.
    async fn set_stopped(&self, project_id: i64, stopped: &Stopped) -> Result<()>;
    /// The project's sleep settings and whether it sleeps now; the default (off, awake)
    /// until they are set.
    async fn sleep(&self, project_id: i64) -> Result<SleepState>;
    /// Replaces the project's sleep settings and state; `NotFound` for a missing project.
    async fn set_sleep(&self, project_id: i64, sleep: &SleepState) -> Result<()>;

    // Custom domains.
    /// Gives the project a custom domain; `Conflict` when any project has it already.
    async fn add_domain(&self, project_id: i64, name: &Hostname) -> Result<Domain>;
    /// The project's custom domains, by name.
    async fn domains(&self, project_id: i64) -> Result<Vec<Domain>>;
    /// The domain with this name, whichever project has it.
    async fn domain(&self, name: &Hostname) -> Result<Domain>;
    /// Takes a custom domain from the project; `NotFound` unless the project has it.
    async fn delete_domain(&self, project_id: i64, name: &Hostname) -> Result<()>;

    // Add-ons (their credentials are config vars, stored with the env).
    /// Records an add-on of the project; `Conflict` when the project has one of that name.
    async fn add_addon(&self, project_id: i64, name: &AddonName, kind: &str) -> Result<Addon>;
    /// The project's add-ons, by name.
    async fn addons(&self, project_id: i64) -> Result<Vec<Addon>>;
    /// The project's add-on of that name; `NotFound` if it has none.
    async fn addon(&self, project_id: i64, name: &AddonName) -> Result<Addon>;
    /// Forgets the project's add-on; `NotFound` if it has none of that name.
    async fn delete_addon(&self, project_id: i64, name: &AddonName) -> Result<()>;

    // Deploy webhooks.
    /// Records a webhook of the project with its secret (sealed at rest like config vars).
    async fn add_webhook(&self, project_id: i64, url: &str, events: &[WebhookEvent], secret: &str) -> Result<Webhook>;
    /// The project's webhooks, oldest first.
    async fn webhooks(&self, project_id: i64) -> Result<Vec<Webhook>>;
    /// The project's webhooks with their secrets, opened: for the dispatcher only.
    async fn webhooks_with_secrets(&self, project_id: i64) -> Result<Vec<(Webhook, String)>>;
    /// Removes the project's webhook and its attempts; `NotFound` unless the project has it.
    async fn delete_webhook(&self, project_id: i64, webhook_id: i64) -> Result<()>;
    /// Keeps one delivery attempt, and only the newest [`crate::webhooks::KEPT_ATTEMPTS`]
    /// of its webhook. A webhook removed meanwhile is not an error: nothing is kept.
    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> Result<()>;
    /// The kept attempts of the project's webhook, newest first; `NotFound` unless the
    /// project has it.
    async fn webhook_attempts(&self, project_id: i64, webhook_id: i64) -> Result<Vec<WebhookAttempt>>;

    // Builds.
    async fn create_build(&self, project_id: i64, commit: &str) -> Result<Build>;
    async fn finish_build(
        &self,
        build_id: i64,
        status: BuildStatus,
        artifact: Option<&str>,
        processes: &BTreeMap<String, String>,
        log: &str,
    ) -> Result<Build>;
    async fn build(&self, build_id: i64) -> Result<Build>;
    /// Forgets a build's artifact once it has been removed to save space; its record and
    /// log stay.
    async fn clear_build_artifact(&self, build_id: i64) -> Result<()>;

    // Scheduled jobs (`app.json`'s `cron`).
    /// Keeps the jobs a build's `app.json` declared, replacing any it had: a rollback to
    /// the build runs its jobs.
    async fn set_build_cron(&self, build_id: i64, jobs: &[CronJob]) -> Result<()>;
    /// The jobs of a build, in `app.json` order; none when it declared none.
    async fn build_cron(&self, build_id: i64) -> Result<Vec<CronJob>>;
    /// Keeps one run (or skipped time) of a job, and only the newest
    /// [`crate::cron::KEPT_RUNS`] of that job of the project. A project deleted meanwhile
    /// is not an error: nothing is kept.
    async fn record_cron_run(&self, run: &CronRun) -> Result<()>;
    /// The project's kept runs, newest first.
    async fn cron_runs(&self, project_id: i64) -> Result<Vec<CronRun>>;

    // Deployments.
    /// Records a deployment with the next version number of its project.
    async fn create_deployment(&self, new: &NewDeployment) -> Result<Deployment>;
    /// Moves a deployment along its state machine; refuses illegal steps.
    async fn set_deployment_status(
        &self,
        deployment_id: i64,
        status: DeploymentStatus,
        failure: Option<&str>,
    ) -> Result<Deployment>;
    /// Newest first; at most `limit`.
    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>>;
    async fn deployment(&self, project_id: i64, version: i64) -> Result<Deployment>;
    /// The live deployment of every project, to start again after a server restart.
    async fn live_deployments(&self) -> Result<Vec<(Project, Deployment)>>;
    /// The project's live deployment: at most one, kept so by the store.
    async fn live_deployment(&self, project_id: i64) -> Result<Option<Deployment>>;
    /// In one transaction: the healthy deployment becomes live, the one it replaces is
    /// superseded, and `env` is applied to the project's env (the config change, or the
    /// restored config of a rollback, that this deployment carries). All or nothing.
    async fn make_live(&self, deployment_id: i64, env: &EnvChanges) -> Result<Deployment>;
    /// Marks every deployment still on its way (queued to healthy) failed with `reason`, and
    /// every build still running failed: what a server that stopped mid-way left. Returns
    /// the deployments it marked. Called at start, before any new work is taken.
    async fn interrupt_unfinished(&self, reason: &str) -> Result<Vec<Deployment>>;

    // The audit log.
    /// Appends one record to the audit log.
    async fn record_audit(&self, record: &AuditRecord) -> Result<()>;
    /// The records `scope` lets its reader see, newest first: at most `limit`, and only
    /// those older than the record `before` (an id) when given.
    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: i64) -> Result<Vec<AuditEvent>>;
    /// Deletes the records made before `cutoff`; returns how many.
    async fn prune_audit(&self, cutoff: Timestamp) -> Result<u64>;
}
