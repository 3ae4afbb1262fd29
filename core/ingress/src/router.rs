//! The ingress as the orchestrator sees it: core's `TrafficRouter`.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use paastech_core::drivers::TrafficRouter;
use paastech_core::{Hostname, HttpsPolicy, ProjectName};

use crate::{RouteTable, drain, health_check};

/// Health checks over HTTP and atomic switches of a shared [`RouteTable`].
pub struct IngressRouter {
    table: RouteTable,
    health_path: String,
    /// The static file server's argv without its directory (see `serve_static_sites`).
    static_server: Option<Vec<String>>,
}

impl IngressRouter {
    /// `health_path` is what a new instance must answer (any status below 500).
    pub fn new(table: RouteTable, health_path: impl Into<String>) -> Self {
        IngressRouter { table, health_path: health_path.into(), static_server: None }
    }

    /// Backends that are `static_server… DIR` (the process builder's static file server,
    /// found by its listening socket) are answered by the ingress from DIR's files,
    /// without the hop to that process: same answers, a fraction of the cost.
    pub fn serve_static_sites(mut self, static_server: Vec<String>) -> Self {
        self.static_server = Some(static_server);
        self
    }
}

#[async_trait]
impl TrafficRouter for IngressRouter {
    async fn wait_healthy(&self, addr: SocketAddr, timeout: Duration) -> paastech_core::Result<()> {
        health_check(addr, &self.health_path, timeout).await.map_err(Into::into)
    }

    async fn switch(&self, project: &ProjectName, backends: Vec<SocketAddr>, drain_for: Duration) {
        let sites = match &self.static_server {
            Some(prefix) => crate::static_serve::discover(prefix.clone(), backends.clone()).await,
            None => Default::default(),
        };
        let replaced = self.table.set_backends(project.as_str(), backends);
        for backend in self.table.backends(project.as_str()).unwrap_or_default() {
            if let Some(site) = sites.get(&backend.addr()) {
                backend.serve_from(site.clone());
            }
        }
        if !replaced.is_empty() && !drain(&replaced, drain_for).await {
            tracing::warn!(project = %project, "requests to replaced instances still running after the drain timeout");
        }
    }

    fn remove(&self, project: &ProjectName) {
        self.table.remove(project.as_str());
    }

    fn set_domains(&self, project: &ProjectName, domains: &[Hostname]) {
        let names: Vec<&str> = domains.iter().map(Hostname::as_str).collect();
        self.table.set_domains(project.as_str(), &names);
    }

    fn set_https(&self, project: &ProjectName, policy: HttpsPolicy) {
        self.table.set_https(project.as_str(), policy);
    }

    fn set_stopped(&self, project: &ProjectName, stopped: bool) {
        self.table.set_stopped(project.as_str(), stopped);
    }

    fn idle_for(&self, project: &ProjectName) -> Option<Duration> {
        self.table.idle_for(project.as_str())
    }

    fn set_asleep(&self, project: &ProjectName, asleep: bool) {
        self.table.set_asleep(project.as_str(), asleep);
    }
}
