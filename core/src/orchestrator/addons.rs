//! Add-ons as project changes: creating one provisions it and sets its config vars as an
//! env change does (a new deployment); destroying one unsets them (a new deployment), then
//! deprovisions. Each step that fails undoes the ones before it, so nothing is left half
//! made: no database without a record, no record without config, config as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{NullSink, Orchestrator};
use crate::addons::{Addon, AddonKind, AddonName, BackupReader, BackupWriter};
use crate::deployment::Deployment;
use crate::domain::{EnvVars, Project};
use crate::error::{Error, Result};
use crate::store::EnvChanges;

impl Orchestrator {
    /// Makes these add-on kinds available (`[addons.KIND]`), by their kind names.
    pub fn with_addon_kinds(mut self, kinds: impl IntoIterator<Item = Arc<dyn AddonKind>>) -> Self {
        self.addon_kinds = kinds.into_iter().map(|kind| (kind.kind().to_owned(), kind)).collect();
        self
    }

    /// The configured add-on kinds, by name.
    pub fn addon_kind_names(&self) -> Vec<&str> {
        self.addon_kinds.keys().map(String::as_str).collect()
    }

    fn addon_kind(&self, kind: &str) -> Result<&Arc<dyn AddonKind>> {
        self.addon_kinds.get(kind).ok_or_else(|| {
            if self.addon_kinds.is_empty() {
                Error::Invalid(format!(
                    "unknown add-on kind {kind:?}: this server has no add-on kinds configured ([addons.KIND] in its config)"
                ))
            } else {
                Error::Invalid(format!(
                    "unknown add-on kind {kind:?}: the kinds configured are {}",
                    self.addon_kind_names().join(", ")
                ))
            }
        })
    }

    /// The project's add-ons, by name.
    pub async fn addons(&self, project: &Project) -> Result<Vec<Addon>> {
        self.store.addons(project.id).await
    }

    /// One add-on and its config vars (its credentials).
    pub async fn addon_info(&self, project: &Project, name: &AddonName) -> Result<(Addon, EnvVars)> {
        let addon = self.store.addon(project.id, name).await?;
        let vars = self.addon_vars(project, &addon).await?;
        Ok((addon, vars))
    }

    async fn addon_vars(&self, project: &Project, addon: &Addon) -> Result<EnvVars> {
        let kind = self.addon_kind(&addon.kind)?;
        let env = self.store.env(project.id).await?;
        Ok(kind
            .config_keys()
            .iter()
            .filter_map(|key| env.get(*key).map(|value| ((*key).to_owned(), value.clone())))
            .collect())
    }

    /// Provisions an add-on of `kind` named `name` (default: the kind's name) and sets its
    /// config vars, which makes a new deployment when the project has a build. If any step
    /// fails, those before it are undone.
    pub async fn create_addon(
        self: &Arc<Self>,
        project: &Project,
        kind: &str,
        name: Option<&str>,
    ) -> Result<(Addon, Option<Deployment>)> {
        let kind = Arc::clone(self.addon_kind(kind)?);
        let name = AddonName::parse(name.unwrap_or(kind.kind()))?;
        let project = project.clone();
        self.detached(move |this| async move { this.create_addon_now(&project, kind, &name).await }).await
    }

    async fn create_addon_now(
        &self,
        project: &Project,
        kind: Arc<dyn AddonKind>,
        name: &AddonName,
    ) -> Result<(Addon, Option<Deployment>)> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        match self.store.addon(project.id, name).await {
            Ok(_) => return Err(Error::Conflict(format!("{} already has an add-on named {name}", project.name))),
            Err(Error::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
        // Two add-ons setting one var would overwrite each other's credentials.
        let env = self.store.env(project.id).await?;
        if let Some(key) = kind.config_keys().iter().find(|key| env.contains_key(**key)) {
            return Err(Error::Conflict(format!(
                "{key} is already set in {}'s config (by another add-on or by hand): unset it first",
                project.name
            )));
        }

        let vars = kind.provision(&project.name, name).await?;
        let undo_provision = || async {
            if let Err(err) = kind.deprovision(&project.name, name).await {
                tracing::error!(project = %project.name, addon = %name, error = %err,
                    "a failed add-on could not be deprovisioned: remove it by hand");
            }
        };
        let addon = match self.store.add_addon(project.id, name, kind.kind()).await {
            Ok(addon) => addon,
            Err(err) => {
                undo_provision().await;
                return Err(err);
            }
        };
        let changes: EnvChanges = vars.into_iter().map(|(key, value)| (key, Some(value))).collect();
        match self.update_env_locked(project, &changes).await {
            Ok((_, deployment)) => {
                tracing::info!(project = %project.name, addon = %name, kind = kind.kind(), "add-on created");
                Ok((addon, deployment))
            }
            Err(err) => {
                // The env change saves nothing unless its deployment goes live.
                if let Err(undo) = self.store.delete_addon(project.id, name).await {
                    tracing::error!(project = %project.name, addon = %name, error = %undo, "cannot forget a failed add-on");
                }
                undo_provision().await;
                Err(err)
            }
        }
    }

    /// Unsets the add-on's config vars (a new deployment when the project has a build),
    /// then deprovisions it: its data is gone.
    pub async fn destroy_addon(self: &Arc<Self>, project: &Project, name: &AddonName) -> Result<Option<Deployment>> {
        let (project, name) = (project.clone(), name.clone());
        self.detached(move |this| async move { this.destroy_addon_now(&project, &name).await }).await
    }

    async fn destroy_addon_now(&self, project: &Project, name: &AddonName) -> Result<Option<Deployment>> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        let addon = self.store.addon(project.id, name).await?;
        let kind = Arc::clone(self.addon_kind(&addon.kind)?);
        // Only the vars still set: a destroy that failed after this step can be retried.
        let vars = self.addon_vars(project, &addon).await?;
        let deployment = if vars.is_empty() {
            None
        } else {
            let changes: EnvChanges = vars.into_keys().map(|key| (key, None)).collect();
            self.update_env_locked(project, &changes).await?.1
        };
        kind.deprovision(&project.name, name).await?;
        self.store.delete_addon(project.id, name).await?;
        tracing::info!(project = %project.name, addon = %name, "add-on destroyed");
        Ok(deployment)
    }

    /// Streams a backup of the add-on's data to `out`.
    pub async fn backup_addon(&self, project: &Project, name: &AddonName, out: BackupWriter<'_>) -> Result<()> {
        let addon = self.store.addon(project.id, name).await?;
        let kind = self.addon_kind(&addon.kind)?;
        let vars = self.addon_vars(project, &addon).await?;
        kind.backup(&project.name, name, &vars, out).await
    }

    /// Replaces the add-on's data with a backup read from `input`.
    pub async fn restore_addon(&self, project: &Project, name: &AddonName, input: BackupReader<'_>) -> Result<()> {
        let addon = self.store.addon(project.id, name).await?;
        let kind = self.addon_kind(&addon.kind)?;
        let vars = self.addon_vars(project, &addon).await?;
        kind.restore(&project.name, name, &vars, input).await
    }

    /// Deprovisions every add-on of a project being deleted (its records go with it). An
    /// add-on whose kind is no longer configured cannot be reached: it is only logged.
    pub(super) async fn deprovision_all(&self, project: &Project) -> Result<()> {
        let mut failed = BTreeMap::new();
        for addon in self.store.addons(project.id).await? {
            let Some(kind) = self.addon_kinds.get(&addon.kind) else {
                tracing::warn!(project = %project.name, addon = %addon.name, kind = %addon.kind,
                    "the add-on's kind is not configured: its data is left where it is");
                continue;
            };
            match kind.deprovision(&project.name, &addon.name).await {
                Ok(()) => self.store.delete_addon(project.id, &addon.name).await?,
                Err(err) => {
                    failed.insert(addon.name.to_string(), err.to_string());
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            let list: Vec<String> = failed.into_iter().map(|(name, err)| format!("{name}: {err}")).collect();
            Err(Error::Unavailable(format!(
                "cannot destroy the add-ons of {} (the project is kept): {}",
                project.name,
                list.join("; ")
            )))
        }
    }
}
