//! Writing the audit log from requests. Every change a route or a form makes is recorded
//! by its handler once it is done, with the caller, the project and a detail in words;
//! the address comes from here: [`client_address`], a layer over every route, keeps the
//! request's client address (as [`ClientIp`] reads it) for the handler's task, so a record
//! made anywhere while the request is served carries it without every handler and form
//! helper passing it along.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::Response;
use paastech_core::{AuditAction, AuditRecord, User};

use crate::AppState;
use crate::auth::ClientIp;

tokio::task_local! {
    static CLIENT_ADDRESS: Option<IpAddr>;
}

/// The layer that keeps the client's address for the records made while serving.
pub(crate) async fn client_address(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(ClientIp(ip)) = ClientIp::from_request_parts(&mut parts, &()).await;
    let address = (!ip.is_unspecified()).then_some(ip);
    CLIENT_ADDRESS.scope(address, next.run(Request::from_parts(parts, body))).await
}

/// The address of the request being served, if it is known.
fn current_address() -> Option<IpAddr> {
    CLIENT_ADDRESS.try_with(|address| *address).ok().flatten()
}

/// A record of `action` by `user`, from the request's address.
pub(crate) fn by(user: &User, action: AuditAction) -> AuditRecord {
    AuditRecord::new(action, Some(user), current_address())
}

/// A record of `action` by nobody known (a login attempt on no account).
pub(crate) fn anonymous(action: AuditAction) -> AuditRecord {
    AuditRecord::new(action, None, current_address())
}

impl AppState {
    /// Appends `record` to the audit log (a failure to write it is logged, not returned).
    pub(crate) async fn audit(&self, record: AuditRecord) {
        self.orchestrator.record(record).await;
    }
}
