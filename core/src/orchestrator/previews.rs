//! Preview apps as the orchestrator makes them. A preview is a project of its own (its
//! deployments, instances, routes, logs and certificate are those of any project), marked
//! as the preview of a branch of its parent (`Project::preview`): it has no repository (its
//! builds export the parent's), its config is the parent's at each push minus the parent's
//! add-on credentials, plus `PAASTECH_PREVIEW=1`, and it goes with its branch, with previews
//! turned off, or with its parent.

use std::sync::Arc;

use super::{DEPLOY_BRANCHES, NullSink, Orchestrator};
use crate::domain::{EnvVars, Project, ProjectName};
use crate::drivers::{LogSink, Pusher, RefUpdate};
use crate::error::{Error, Result};
use crate::previews::{PREVIEW_ENV, branch_of, preview_name};
use crate::store::EnvChanges;

impl Orchestrator {
    /// The project's preview apps, by name.
    pub async fn previews(&self, project: &Project) -> Result<Vec<Project>> {
        self.store.previews(project.id).await
    }

    /// Turns previews of `project` on or off; turning them off removes every preview it has.
    /// A preview cannot have previews of its own.
    pub async fn set_previews(self: &Arc<Self>, project: &Project, enabled: bool) -> Result<Project> {
        if project.preview.is_some() {
            return Err(Error::Invalid(format!(
                "{} is a preview app: previews are turned on or off for the project it previews",
                project.name
            )));
        }
        let project = project.clone();
        self.detached(move |this| async move {
            let _guard = this.exclusive(&project.name, &NullSink).await;
            this.store.set_previews_enabled(project.id, enabled).await?;
            if !enabled {
                for preview in this.store.previews(project.id).await? {
                    this.remove_project(&preview).await?;
                    tracing::info!(project = %project.name, preview = %preview.name, "preview removed: previews turned off");
                }
            }
            tracing::info!(project = %project.name, enabled, "previews turned {}", if enabled { "on" } else { "off" });
            this.store.project_by_id(project.id).await
        })
        .await
    }

    /// The project whose repository `project`'s builds come from: its own, or for a
    /// preview its parent's.
    pub(super) async fn source_repo(&self, project: &Project) -> Result<ProjectName> {
        match &project.preview {
            None => Ok(project.name.clone()),
            Some(of) => Ok(self.store.project_by_id(of.parent_id).await?.name),
        }
    }

    /// What a push does to the project's previews: a deleted branch removes its preview;
    /// with previews on, a pushed branch other than the deployed one deploys its preview.
    /// `with_deploy` says whether the same push deployed the project itself: then a
    /// preview that fails is reported without refusing the push (its refs must land with
    /// the deployment they made); alone, a failing preview refuses it, as a failing
    /// deployment does.
    pub(super) async fn push_previews(
        &self,
        pusher: Pusher,
        project: &Project,
        updates: &[RefUpdate],
        log: &Arc<dyn LogSink>,
        with_deploy: bool,
    ) -> Result<()> {
        for update in updates.iter().filter(|u| !DEPLOY_BRANCHES.contains(&u.refname.as_str())) {
            let Some(branch) = branch_of(&update.refname) else {
                log.line(&format!("-----> {} stored; only main (or master) deploys", update.refname));
                continue;
            };
            let done = if update.is_delete() {
                self.remove_preview_of(project, branch, log.as_ref()).await
            } else if project.previews_enabled {
                self.deploy_preview(pusher, project, branch, &update.new, log).await
            } else {
                log.line(&format!(
                    "-----> {} stored; only main (or master) deploys (previews are off: `paastech previews on` deploys branches as preview apps)",
                    update.refname
                ));
                Ok(())
            };
            match done {
                Ok(()) => {}
                Err(err) if with_deploy => log.line(&format!("-----> Preview of {branch} failed: {err}")),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn remove_preview_of(&self, project: &Project, branch: &str, log: &dyn LogSink) -> Result<()> {
        let previews = self.store.previews(project.id).await?;
        let Some(preview) = previews.iter().find(|p| p.preview.as_ref().is_some_and(|of| of.branch == branch)) else {
            log.line(&format!("-----> Branch {branch} deleted"));
            return Ok(());
        };
        self.remove_project(preview).await?;
        tracing::info!(project = %project.name, preview = %preview.name, branch, "preview removed: branch deleted");
        log.line(&format!("-----> Branch {branch} deleted; its preview {} removed", preview.name));
        Ok(())
    }

    /// Deploys `commit` of `branch` as the branch's preview, making the preview first if it
    /// has none. A preview made here whose first deployment fails is removed again: the
    /// push is refused and nothing of it is left.
    async fn deploy_preview(
        &self,
        pusher: Pusher,
        project: &Project,
        branch: &str,
        commit: &str,
        log: &Arc<dyn LogSink>,
    ) -> Result<()> {
        let name = preview_name(&project.name, branch)?;
        let previews = self.store.previews(project.id).await?;
        let existing = previews.iter().find(|p| p.preview.as_ref().is_some_and(|of| of.branch == branch));
        let (preview, made) = match existing {
            Some(preview) => (preview.clone(), false),
            None => {
                if let Some(other) = previews.iter().find(|p| p.name == name) {
                    let other_branch = other.preview.as_ref().map_or("", |of| of.branch.as_str());
                    return Err(Error::Conflict(format!(
                        "branches {other_branch:?} and {branch:?} both make the preview app {name}: rename one, or delete {other_branch:?} first"
                    )));
                }
                let max = self.config.max_previews;
                if previews.len() >= max {
                    return Err(Error::Conflict(format!(
                        "no preview of {branch}: {} has {} preview apps, the most it may run at once; delete a previewed branch (git push paastech :BRANCH) first",
                        project.name,
                        previews.len()
                    )));
                }
                let preview = match self.store.create_preview(project, &name, branch).await {
                    Err(Error::Conflict(_)) => {
                        return Err(Error::Conflict(format!(
                            "no preview of {branch}: its app name {name} is taken by another project"
                        )));
                    }
                    other => other?,
                };
                // Routed (answering "no live deployment" until it has one) and given a
                // certificate, as a project made by hand is.
                self.traffic.switch(&preview.name, Vec::new(), std::time::Duration::ZERO).await;
                self.want_certificates(&preview, &[]);
                tracing::info!(project = %project.name, preview = %preview.name, branch, "preview made");
                (preview, true)
            }
        };
        log.line(&format!("-----> Deploying branch {branch} as the preview app {}", preview.name));
        let deployed = async {
            self.sync_preview_config(project, &preview).await?;
            self.deploy_commit(&preview, commit, Arc::clone(log)).await
        }
        .await;
        self.record_push(pusher, &preview, commit, &deployed).await;
        match deployed {
            Ok(deployment) => {
                let url = self.config.app_url.replace("{name}", preview.name.as_str());
                log.line(&format!("-----> Deployed preview {} v{}: {url}", preview.name, deployment.version));
                Ok(())
            }
            Err(err) => {
                if made && let Err(cleanup) = self.remove_project(&preview).await {
                    tracing::error!(preview = %preview.name, error = %cleanup, "cannot remove a preview whose first deployment failed");
                }
                Err(err)
            }
        }
    }

    /// Gives the preview the parent's config as it is now, without the parent's add-on
    /// credentials (a preview must not write to the project's own databases) and with
    /// `PAASTECH_PREVIEW=1`; its limits are the parent's too.
    async fn sync_preview_config(&self, project: &Project, preview: &Project) -> Result<()> {
        let mut wanted: EnvVars = self.store.env(project.id).await?;
        for addon in self.store.addons(project.id).await? {
            if let Some(kind) = self.addon_kinds.get(&addon.kind) {
                for key in kind.config_keys() {
                    wanted.remove(*key);
                }
            }
        }
        wanted.insert(PREVIEW_ENV.into(), "1".into());
        let current = self.store.env(preview.id).await?;
        let mut changes: EnvChanges =
            current.keys().filter(|k| !wanted.contains_key(*k)).map(|k| (k.clone(), None)).collect();
        for (key, value) in wanted {
            if current.get(&key) != Some(&value) {
                changes.insert(key, Some(value));
            }
        }
        if !changes.is_empty() {
            self.store.update_env(preview.id, &changes).await?;
        }
        let limits = self.store.limits(project.id).await?;
        self.store.set_limits(preview.id, &limits).await
    }
}
