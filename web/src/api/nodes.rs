//! `GET /nodes`: the machines the runtime runs instances on, for admins.

use axum::Json;
use axum::extract::State;
use paastech_core::Error;
use paastech_core::drivers::{Instance, InstanceState, Node, NodeAvailability, NodeRole, NodeState};
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::NeedsToken;
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// What a machine is in the cluster: `local` is the one machine of a runtime without one
/// (processes, one Docker or Podman engine).
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum NodeRoleView {
    Local,
    Manager,
    Worker,
}

/// Whether the machine is up, as the runtime last saw it (`down`: its instances are being
/// started elsewhere).
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum NodeStateView {
    Ready,
    Down,
    Disconnected,
    Unknown,
}

/// Whether the machine takes new instances: `pause` keeps what it runs, `drain` moves its
/// instances off it.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum NodeAvailabilityView {
    Active,
    Pause,
    Drain,
}

#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStateView {
    Starting,
    Running,
    Restarting,
    Crashed,
    Stopped,
}

/// One instance on a node.
#[derive(Serialize, ToSchema)]
pub struct NodeInstanceView {
    /// The runtime's own id of the instance.
    pub id: String,
    pub project: String,
    pub process_type: String,
    /// 1-based, as in its name.
    pub index: u32,
    /// `web.1`, `worker.2`, …
    pub name: String,
    /// The deployment version it runs.
    pub version: i64,
    pub state: InstanceStateView,
    /// Where the ingress reaches it (`IP:PORT`), for a `web` instance.
    pub address: Option<String>,
}

/// A machine instances run on, and the instances on it now.
#[derive(Serialize, ToSchema)]
pub struct NodeView {
    /// The runtime's own id of the machine (`local` for the one machine of a runtime
    /// without a cluster).
    pub id: String,
    pub hostname: String,
    /// The address its instances are reached at, when the runtime knows it.
    pub address: Option<String>,
    pub role: NodeRoleView,
    pub state: NodeStateView,
    pub availability: NodeAvailabilityView,
    pub instances: Vec<NodeInstanceView>,
}

impl From<Node> for NodeView {
    fn from(node: Node) -> Self {
        NodeView {
            id: node.id,
            hostname: node.hostname,
            address: node.address.map(|a| a.to_string()),
            role: match node.role {
                NodeRole::Local => NodeRoleView::Local,
                NodeRole::Manager => NodeRoleView::Manager,
                NodeRole::Worker => NodeRoleView::Worker,
            },
            state: match node.state {
                NodeState::Ready => NodeStateView::Ready,
                NodeState::Down => NodeStateView::Down,
                NodeState::Disconnected => NodeStateView::Disconnected,
                NodeState::Unknown => NodeStateView::Unknown,
            },
            availability: match node.availability {
                NodeAvailability::Active => NodeAvailabilityView::Active,
                NodeAvailability::Pause => NodeAvailabilityView::Pause,
                NodeAvailability::Drain => NodeAvailabilityView::Drain,
            },
            instances: node.instances.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Instance> for NodeInstanceView {
    fn from(instance: Instance) -> Self {
        NodeInstanceView {
            name: format!("{}.{}", instance.process_type, instance.index + 1),
            id: instance.id,
            project: instance.project.to_string(),
            process_type: instance.process_type,
            index: instance.index + 1,
            version: instance.version,
            state: match instance.state {
                InstanceState::Starting => InstanceStateView::Starting,
                InstanceState::Running => InstanceStateView::Running,
                InstanceState::Restarting => InstanceStateView::Restarting,
                InstanceState::Crashed => InstanceStateView::Crashed,
                InstanceState::Stopped => InstanceStateView::Stopped,
            },
            address: instance.addr.map(|a| a.to_string()),
        }
    }
}

/// The machines the runtime runs instances on, with every project's instances on each.
/// Admins only.
#[utoipa::path(get, path = "/nodes", tag = "platform", security(("bearer" = [])),
    responses((status = 200, body = Vec<NodeView>), NeedsToken, ErrorStatus<403>, ErrorStatus<503>))]
pub async fn list(State(state): State<AppState>, CurrentUser(user): CurrentUser) -> ApiResult<Json<Vec<NodeView>>> {
    if !user.is_admin {
        return Err(Error::Forbidden("only admins may list nodes".into()).into());
    }
    let nodes = state.orchestrator.nodes().await?;
    Ok(Json(nodes.into_iter().map(Into::into).collect()))
}
