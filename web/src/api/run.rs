//! `GET /projects/{name}/run/interactive`: a one-off command on a terminal, over a
//! WebSocket (`paastech run -- sh` from a terminal). The command is checked and the
//! project's access decided before the upgrade, so a refusal is an ordinary API error.
//!
//! After the upgrade: binary frames carry the terminal's bytes both ways; text frames carry
//! control as small JSON objects: the client's `{"resize": {"rows": R, "cols": C}}`, and the
//! server's last message, `{"exit_code": N}` or `{"error": {"code", "message"}}`, after
//! which it closes. A client that closes or drops the connection hangs up: the command is
//! killed and removed.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use paastech_core::interactive::{TtyInput, TtySession, TtySize};
use paastech_core::orchestrator::PreparedInteractive;
use paastech_core::{AuditAction, Error, ProjectName};
use serde::Deserialize;
use tokio::time::Instant;

use super::extract::{NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use super::{PathParam, QueryParams};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// The largest message a client may send (a paste of this much is sent in pieces).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// The largest terminal accepted, either way.
const MAX_CELLS: u16 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InteractiveQuery {
    /// The program and its arguments as a JSON array of strings, run as they are (no
    /// shell): `["sh"]`, `["python", "manage.py", "shell"]`.
    #[param(example = "[\"sh\"]")]
    command: String,
    /// The terminal's height in rows, 1 to 1000 (default 24).
    #[param(nullable = false, example = 24)]
    rows: Option<u16>,
    /// The terminal's width in columns, 1 to 1000 (default 80).
    #[param(nullable = false, example = 80)]
    cols: Option<u16>,
    /// The user's terminal type, given to the command as `TERM` (letters, digits, `-_.+`).
    #[param(nullable = false, example = "xterm-256color")]
    term: Option<String>,
}

/// A control message from the client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: TtySize,
}

/// Runs a one-off command in the live deployment (its build, config, limits and one-hour
/// timeout, as `POST /projects/{name}/run`) on a terminal of its own, over a WebSocket:
/// what `paastech run -- sh` does from a terminal. Send `GET` with `Upgrade: websocket`;
/// then binary frames carry the terminal's bytes both ways, the client sends
/// `{"resize": {"rows", "cols"}}` as a text frame when its window changes, and the server's
/// last text frame is `{"exit_code": N}` or `{"error": {"code", "message"}}` (`code`
/// `idle` after the server's idle limit with neither input nor output). A client that
/// closes the connection hangs up: the command is killed and removed.
#[utoipa::path(get, path = "/projects/{name}/run/interactive", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), InteractiveQuery),
    responses((status = 101, description = "switched to the WebSocket session"), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn interactive(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    QueryParams(query): QueryParams<InteractiveQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let project = project_for(&state, &user, &name, paastech_core::Role::Developer).await?;
    let argv: Vec<String> = serde_json::from_str(&query.command)
        .map_err(|_| Error::Invalid("command: give a JSON array of strings, the program first".into()))?;
    let size = size(query.rows, query.cols)?;
    let term = query.term.map(check_term).transpose()?;
    let upgrade = upgrade.map_err(|rejection| {
        Error::Invalid(format!("this route is a WebSocket: send GET with `Upgrade: websocket` ({rejection})"))
    })?;
    let program = argv.first().cloned().unwrap_or_default();
    let prepared = state.orchestrator.prepare_interactive(&project, argv, term).await?;
    tracing::info!(project = %project.name, user = user.id, %program, "interactive command requested");
    // The program's name only: arguments may carry secrets.
    let detail = format!("{program} (interactive)");
    state.audit(audit::by(&user, AuditAction::CommandRun).on(&project).detail(detail)).await;
    let stopped = state.stopped();
    let name = project.name;
    // Keystrokes and control messages are small: a client cannot make the server buffer
    // more than this per message (axum's default is 64 MiB).
    let upgrade = upgrade.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| serve(socket, prepared, size, name, stopped)).into_response())
}

fn size(rows: Option<u16>, cols: Option<u16>) -> Result<TtySize, Error> {
    let size = TtySize { rows: rows.unwrap_or(TtySize::DEFAULT.rows), cols: cols.unwrap_or(TtySize::DEFAULT.cols) };
    check_size(size)
}

fn check_size(size: TtySize) -> Result<TtySize, Error> {
    if size.rows == 0 || size.cols == 0 || size.rows > MAX_CELLS || size.cols > MAX_CELLS {
        return Err(Error::Invalid(format!("rows and cols: each from 1 to {MAX_CELLS}")));
    }
    Ok(size)
}

/// A terminal type is a short name (`xterm-256color`); anything else is refused rather than
/// handed to the command's environment.
fn check_term(term: String) -> Result<String, Error> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+');
    if term.is_empty() || term.len() > 64 || !term.chars().all(fits) {
        return Err(Error::Invalid("term: a terminal type such as xterm-256color".into()));
    }
    Ok(term)
}

/// How the relay ended, and what the client is told.
enum Outcome {
    /// The command ended: its exit code or the error that ended it.
    Ended(paastech_core::Result<i32>),
    /// Nothing either way for the idle limit.
    Idle(std::time::Duration),
    /// The server is stopping.
    Stopping,
    /// The client went away: nobody to tell.
    HungUp,
}

async fn serve(
    mut socket: WebSocket,
    prepared: PreparedInteractive,
    size: TtySize,
    project: ProjectName,
    stopped: impl std::future::Future<Output = ()>,
) {
    let idle = prepared.idle_limit();
    let outcome = match prepared.start(size).await {
        Ok(session) => relay(&mut socket, session, idle, stopped).await,
        Err(err) => Outcome::Ended(Err(err)),
    };
    // Dropping the session (in `relay`) already killed the command unless it ended.
    let last = match outcome {
        Outcome::HungUp => {
            tracing::info!(project = %project, "interactive command ended: the client hung up");
            return;
        }
        Outcome::Ended(Ok(code)) => {
            tracing::info!(project = %project, exit_code = code, "interactive command ended");
            serde_json::json!({ "exit_code": code })
        }
        Outcome::Ended(Err(err)) => {
            tracing::info!(project = %project, error = %err, "interactive command failed");
            serde_json::json!({ "error": { "code": err.code(), "message": err.to_string() } })
        }
        Outcome::Idle(limit) => {
            tracing::info!(project = %project, "interactive command ended: idle");
            let message = format!("no input or output for {} s: the session was ended", limit.as_secs());
            serde_json::json!({ "error": { "code": "idle", "message": message } })
        }
        Outcome::Stopping => {
            serde_json::json!({ "error": { "code": "unavailable", "message": "the server is stopping" } })
        }
    };
    let _ = socket.send(Message::Text(last.to_string().into())).await;
    let close = CloseFrame { code: close_code::NORMAL, reason: "".into() };
    let _ = socket.send(Message::Close(Some(close))).await;
}

async fn relay(
    socket: &mut WebSocket,
    session: TtySession,
    idle: std::time::Duration,
    stopped: impl std::future::Future<Output = ()>,
) -> Outcome {
    let TtySession { input, mut output, exit } = session;
    tokio::pin!(stopped);
    let mut idle_until = Instant::now() + idle;
    // One message from the client waits here until the command's input has room, and the
    // socket is not read meanwhile: a command that does not read slows its typist, and its
    // output keeps flowing.
    let mut waiting: Option<TtyInput> = None;
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(bytes) => {
                    idle_until = Instant::now() + idle;
                    // A client that keeps its connection but stops reading would hold this
                    // send (and the command) for ever: past the idle limit, it hung up.
                    match tokio::time::timeout(idle, socket.send(Message::Binary(bytes.into()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => return Outcome::HungUp,
                    }
                }
                None => {
                    return Outcome::Ended(exit.await.unwrap_or_else(|_| {
                        Err(Error::internal_msg("the command ended without an exit code"))
                    }));
                }
            },
            permit = input.reserve(), if waiting.is_some() => {
                if let (Ok(permit), Some(message)) = (permit, waiting.take()) {
                    permit.send(message);
                }
            }
            message = socket.recv(), if waiting.is_none() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    idle_until = Instant::now() + idle;
                    waiting = Some(TtyInput::Bytes(bytes.to_vec()));
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control { resize }) => {
                        idle_until = Instant::now() + idle;
                        // A size out of range is clamped, not an error: the session goes on.
                        let rows = resize.rows.clamp(1, MAX_CELLS);
                        let cols = resize.cols.clamp(1, MAX_CELLS);
                        waiting = Some(TtyInput::Resize(TtySize { rows, cols }));
                    }
                    Err(err) => tracing::debug!(error = %err, "an interactive session's control message is not understood"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Outcome::HungUp,
            },
            () = tokio::time::sleep_until(idle_until) => return Outcome::Idle(idle),
            () = &mut stopped => return Outcome::Stopping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_terminal_types() {
        assert_eq!(size(None, None).expect("default"), TtySize::DEFAULT);
        assert_eq!(size(Some(40), Some(132)).expect("given"), TtySize { rows: 40, cols: 132 });
        for (rows, cols) in [(0, 80), (24, 0), (1001, 80), (24, 1001)] {
            assert!(size(Some(rows), Some(cols)).is_err(), "{rows}x{cols}");
        }
        assert_eq!(check_term("xterm-256color".into()).expect("xterm"), "xterm-256color");
        for bad in ["", "xterm 256", "a\nb", "x=y", &"x".repeat(65)] {
            assert!(check_term(bad.into()).is_err(), "{bad:?}");
        }
    }
}
