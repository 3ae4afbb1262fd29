//! Rows as stored, and their conversion to the domain types of `paastech-core`. A row that
//! does not convert (an unknown status, broken JSON) is an internal error: only this crate
//! writes these tables.

use std::collections::BTreeMap;

use diesel::prelude::*;
use paastech_core::{
    Addon, AddonName, ApiToken, Build, BuildStatus, Deployment, DeploymentStatus, Domain, EnvVars, Error, Hostname,
    PreviewOf, Project, ProjectName, SshKey, Timestamp, User, Webhook, WebhookAttempt, WebhookEvent,
};
use paastech_core::{AuditEvent, Collaborator, Role};
use paastech_core::{CronJob, CronOutcome, CronRun};

use crate::secrets::Keyring;

use crate::schema::{
    addons, api_tokens, audit_events, builds, collaborators, cron_runs, deployments, domains, projects, ssh_keys,
    users, webhook_attempts, webhooks,
};

#[derive(Queryable, Selectable)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: i64,
    pub disabled: bool,
    pub email_verified: bool,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        User {
            id: row.id,
            email: row.email,
            is_admin: row.is_admin,
            disabled: row.disabled,
            created_at: Timestamp(row.created_at),
            email_verified: row.email_verified,
        }
    }
}

/// A collaborator's row; the role is checked on the way out (the table's CHECK keeps it
/// one of the three anyway).
pub(crate) fn collaborator(
    project_id: i64,
    user_id: i64,
    email: String,
    role: &str,
    created_at: i64,
) -> Result<Collaborator, Error> {
    let role = Role::parse(role).map_err(|_| Error::internal_msg(format!("unknown role {role:?} in store")))?;
    Ok(Collaborator { project_id, user_id, email, role, created_at: Timestamp(created_at) })
}

#[derive(Insertable)]
#[diesel(table_name = collaborators)]
pub(crate) struct NewCollaboratorRow<'a> {
    pub project_id: i64,
    pub user_id: i64,
    pub role: &'a str,
    pub created_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
pub(crate) struct NewUserRow<'a> {
    pub email: &'a str,
    pub password_hash: &'a str,
    pub is_admin: bool,
    pub created_at: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = api_tokens)]
pub(crate) struct TokenRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl From<TokenRow> for ApiToken {
    fn from(row: TokenRow) -> Self {
        ApiToken {
            id: row.id,
            user_id: row.user_id,
            name: row.name,
            created_at: Timestamp(row.created_at),
            last_used_at: row.last_used_at.map(Timestamp),
            expires_at: row.expires_at.map(Timestamp),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = api_tokens)]
pub(crate) struct NewTokenRow<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub token_hash: &'a str,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = ssh_keys)]
pub(crate) struct SshKeyRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: i64,
}

impl From<SshKeyRow> for SshKey {
    fn from(row: SshKeyRow) -> Self {
        SshKey {
            id: row.id,
            user_id: row.user_id,
            name: row.name,
            fingerprint: row.fingerprint,
            public_key: row.public_key,
            created_at: Timestamp(row.created_at),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = ssh_keys)]
pub(crate) struct NewSshKeyRow<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub fingerprint: &'a str,
    pub public_key: &'a str,
    pub created_at: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = projects)]
pub(crate) struct ProjectRow {
    pub id: i64,
    pub owner_id: i64,
    pub name: String,
    pub created_at: i64,
    pub previews_enabled: bool,
    pub preview_of: Option<i64>,
    pub preview_branch: Option<String>,
}

impl TryFrom<ProjectRow> for Project {
    type Error = Error;

    fn try_from(row: ProjectRow) -> Result<Self, Error> {
        let name = ProjectName::parse(&row.name)
            .map_err(|_| Error::internal_msg(format!("invalid project name {:?} in store", row.name)))?;
        let preview = match (row.preview_of, row.preview_branch) {
            (Some(parent_id), Some(branch)) => Some(PreviewOf { parent_id, branch }),
            (None, None) => None,
            _ => return Err(Error::internal_msg(format!("project {name} is half a preview in store"))),
        };
        Ok(Project {
            id: row.id,
            name,
            owner_id: row.owner_id,
            created_at: Timestamp(row.created_at),
            previews_enabled: row.previews_enabled,
            preview,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = projects)]
pub(crate) struct NewProjectRow<'a> {
    pub owner_id: i64,
    pub name: &'a str,
    pub created_at: i64,
    pub preview_of: Option<i64>,
    pub preview_branch: Option<&'a str>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = domains)]
pub(crate) struct DomainRow {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub created_at: i64,
}

impl TryFrom<DomainRow> for Domain {
    type Error = Error;

    fn try_from(row: DomainRow) -> Result<Self, Error> {
        let name = Hostname::parse(&row.name)
            .map_err(|_| Error::internal_msg(format!("invalid domain {:?} in store", row.name)))?;
        Ok(Domain { id: row.id, project_id: row.project_id, name, created_at: Timestamp(row.created_at) })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = addons)]
pub(crate) struct AddonRow {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub kind: String,
    pub created_at: i64,
}

impl TryFrom<AddonRow> for Addon {
    type Error = Error;

    fn try_from(row: AddonRow) -> Result<Self, Error> {
        let name = AddonName::parse(&row.name)
            .map_err(|_| Error::internal_msg(format!("invalid add-on name {:?} in store", row.name)))?;
        Ok(Addon {
            id: row.id,
            project_id: row.project_id,
            name,
            kind: row.kind,
            created_at: Timestamp(row.created_at),
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = builds)]
pub(crate) struct BuildRow {
    pub id: i64,
    pub project_id: i64,
    pub commit: String,
    pub status: String,
    pub artifact: Option<String>,
    pub processes: String,
    pub log: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl TryFrom<BuildRow> for Build {
    type Error = Error;

    fn try_from(row: BuildRow) -> Result<Self, Error> {
        Ok(Build {
            id: row.id,
            project_id: row.project_id,
            commit: row.commit,
            status: BuildStatus::parse(&row.status)?,
            artifact: row.artifact,
            processes: from_json(&row.processes, "build processes")?,
            log: row.log,
            created_at: Timestamp(row.created_at),
            finished_at: row.finished_at.map(Timestamp),
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = builds)]
pub(crate) struct NewBuildRow<'a> {
    pub project_id: i64,
    pub commit: &'a str,
    pub status: &'a str,
    pub processes: &'a str,
    pub log: &'a str,
    pub created_at: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = deployments)]
pub(crate) struct DeploymentRow {
    pub id: i64,
    pub project_id: i64,
    pub version: i64,
    pub status: String,
    pub build_id: Option<i64>,
    pub commit: Option<String>,
    pub config: String,
    pub scale: String,
    pub cause: String,
    pub failure: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub config_key_id: Option<String>,
}

impl DeploymentRow {
    /// The deployment, its config snapshot opened with `keyring` (`project` is its
    /// project's name, part of what each value was sealed for).
    pub(crate) fn open(self, project: &str, keyring: &Keyring) -> Result<Deployment, Error> {
        Ok(Deployment {
            id: self.id,
            project_id: self.project_id,
            version: self.version,
            status: DeploymentStatus::parse(&self.status)?,
            build_id: self.build_id,
            config: open_config(&self.config, self.config_key_id.as_deref(), project, keyring)?,
            commit: self.commit,
            scale: from_json::<BTreeMap<String, u32>>(&self.scale, "deployment scale")?,
            cause: self.cause,
            failure: self.failure,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

/// A config snapshot as stored: a JSON object of values sealed with `key_id`, or of plain
/// values when `key_id` is NULL (written before values were sealed, until the store seals
/// them at open).
pub(crate) fn open_config(
    json: &str,
    key_id: Option<&str>,
    project: &str,
    keyring: &Keyring,
) -> Result<EnvVars, Error> {
    let stored: EnvVars = from_json(json, "deployment config")?;
    match key_id {
        None => Ok(stored),
        Some(key_id) => stored
            .into_iter()
            .map(|(var, sealed)| Ok((var.clone(), keyring.open(key_id, project, &var, &sealed)?)))
            .collect(),
    }
}

/// A config snapshot sealed with the keyring's first key, as JSON.
pub(crate) fn seal_config(config: &EnvVars, project: &str, keyring: &Keyring) -> Result<String, Error> {
    let sealed = config
        .iter()
        .map(|(var, value)| Ok((var.clone(), keyring.seal(project, var, value)?)))
        .collect::<Result<EnvVars, Error>>()?;
    to_json(&sealed, "deployment config")
}

#[derive(Insertable)]
#[diesel(table_name = deployments)]
pub(crate) struct NewDeploymentRow<'a> {
    pub project_id: i64,
    pub version: i64,
    pub status: &'a str,
    pub build_id: Option<i64>,
    pub commit: Option<&'a str>,
    pub config: &'a str,
    pub scale: &'a str,
    pub cause: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
    pub config_key_id: Option<&'a str>,
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("cannot encode {what}"), e))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("corrupt {what} in store"), e))
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhooks)]
pub(crate) struct WebhookRow {
    pub id: i64,
    pub project_id: i64,
    pub url: String,
    pub events: String,
    pub created_at: i64,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = Error;

    fn try_from(row: WebhookRow) -> Result<Self, Error> {
        let names: Vec<&str> = row.events.split(',').filter(|n| !n.is_empty()).collect();
        let events = WebhookEvent::parse_list(&names)
            .map_err(|e| Error::internal_msg(format!("invalid webhook events {:?} in store: {e}", row.events)))?;
        Ok(Webhook {
            id: row.id,
            project_id: row.project_id,
            url: row.url,
            events,
            created_at: Timestamp(row.created_at),
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhook_attempts)]
pub(crate) struct WebhookAttemptRow {
    pub webhook_id: i64,
    pub delivery: String,
    pub event: String,
    pub attempt: i64,
    pub at: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

impl TryFrom<WebhookAttemptRow> for WebhookAttempt {
    type Error = Error;

    fn try_from(row: WebhookAttemptRow) -> Result<Self, Error> {
        let event = WebhookEvent::parse(&row.event)
            .map_err(|_| Error::internal_msg(format!("invalid webhook event {:?} in store", row.event)))?;
        Ok(WebhookAttempt {
            webhook_id: row.webhook_id,
            delivery: row.delivery,
            event,
            attempt: u32::try_from(row.attempt).unwrap_or(u32::MAX),
            at: Timestamp(row.at),
            status_code: row.status_code.and_then(|c| u16::try_from(c).ok()),
            error: row.error,
            duration_ms: u64::try_from(row.duration_ms).unwrap_or(0),
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = cron_runs)]
pub(crate) struct CronRunRow {
    pub project_id: i64,
    pub job: i64,
    pub command: String,
    pub schedule: String,
    pub version: i64,
    pub scheduled_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

impl TryFrom<CronRunRow> for CronRun {
    type Error = Error;

    fn try_from(row: CronRunRow) -> Result<Self, Error> {
        Ok(CronRun {
            project_id: row.project_id,
            job: u32::try_from(row.job)
                .map_err(|_| Error::internal_msg(format!("invalid cron job {} in store", row.job)))?,
            command: row.command,
            schedule: row.schedule,
            version: row.version,
            scheduled_at: Timestamp(row.scheduled_at),
            started_at: row.started_at.map(Timestamp),
            finished_at: row.finished_at.map(Timestamp),
            outcome: CronOutcome::parse(&row.outcome)?,
            exit_code: row.exit_code.and_then(|c| i32::try_from(c).ok()),
            error: row.error,
        })
    }
}

pub(crate) fn cron_jobs_to_json(jobs: &[CronJob]) -> Result<String, Error> {
    to_json(&jobs, "cron jobs")
}

pub(crate) fn cron_jobs_from_json(text: &str) -> Result<Vec<CronJob>, Error> {
    from_json(text, "cron jobs")
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub(crate) struct AuditEventRow {
    pub id: i64,
    pub at: i64,
    pub actor_id: Option<i64>,
    pub actor: Option<String>,
    pub address: Option<String>,
    pub project_id: Option<i64>,
    pub project: Option<String>,
    pub action: String,
    pub detail: String,
}

impl From<AuditEventRow> for AuditEvent {
    fn from(row: AuditEventRow) -> AuditEvent {
        AuditEvent {
            id: row.id,
            at: Timestamp(row.at),
            actor_id: row.actor_id,
            actor: row.actor,
            address: row.address,
            project_id: row.project_id,
            project: row.project,
            action: row.action,
            detail: row.detail,
        }
    }
}
