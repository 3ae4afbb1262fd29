//! Interactive one-offs in a container: created with a TTY and an open stdin, attached
//! before it starts (so no output is lost), resized through the engine's API, removed
//! (killed if need be) whatever ends the session.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{AttachContainerOptionsBuilder, ResizeContainerTTYOptionsBuilder};
use futures_util::StreamExt;
use paastech_core::drivers::OneOff;
use paastech_core::interactive::{TtyEnd, TtyEnds, TtyInput, TtySize, sleep_until_some};
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::engine::engine_error;
use crate::runtime::{create_container, exit_code, remove_container, short};

/// The engine's detach sequence, which it would swallow from the input stream: set to one
/// no one types (five Ctrl-] in a row), since the API has no way to turn it off.
const DETACH_KEYS: &str = "ctrl-],ctrl-],ctrl-],ctrl-],ctrl-]";
/// How long the output is read after the container exited, before its end is reported.
const DRAIN: Duration = Duration::from_secs(2);

/// `body` made interactive: a TTY, stdin open and attached, stdout and stderr on the TTY.
pub(crate) fn tty_body(mut body: ContainerCreateBody) -> ContainerCreateBody {
    body.tty = Some(true);
    body.open_stdin = Some(true);
    body.stdin_once = Some(false);
    body.attach_stdin = Some(true);
    body.attach_stdout = Some(true);
    body.attach_stderr = Some(true);
    body
}

/// Creates the container, attaches, starts it at `size`, and hands the relay to a task;
/// the container is removed when the session ends, or here when it cannot start.
pub(crate) async fn start(
    docker: Docker,
    name: &str,
    body: ContainerCreateBody,
    run: OneOff,
    size: TtySize,
    registry: Option<&ImageRegistry>,
    ends: TtyEnds,
) -> Result<()> {
    let id = create_container(&docker, name, tty_body(body), registry).await?;
    match attach_and_start(&docker, &id, &run, size).await {
        Ok(attached) => {
            tokio::spawn(relay(docker, id, attached, run, ends));
            Ok(())
        }
        Err(err) => {
            if let Err(err) = remove_container(&docker, &id).await {
                tracing::warn!(container = %short(&id), error = %err, "cannot remove an interactive container");
            }
            Err(err)
        }
    }
}

async fn attach_and_start(
    docker: &Docker,
    id: &str,
    run: &OneOff,
    size: TtySize,
) -> Result<bollard::container::AttachContainerResults> {
    let options = AttachContainerOptionsBuilder::new()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .detach_keys(DETACH_KEYS)
        .build();
    let attached = docker
        .attach_container(id, Some(options))
        .await
        .map_err(|err| engine_error(format!("attaching to container {}", short(id)), err))?;
    docker.start_container(id, None).await.map_err(|err| engine_error(format!("running {}", run.program()), err))?;
    resize(docker, id, size).await?;
    Ok(attached)
}

async fn resize(docker: &Docker, id: &str, size: TtySize) -> Result<()> {
    let options = ResizeContainerTTYOptionsBuilder::new().h(i32::from(size.rows)).w(i32::from(size.cols)).build();
    docker
        .resize_container_tty(id, options)
        .await
        .map_err(|err| engine_error(format!("resizing the terminal of container {}", short(id)), err))
}

async fn relay(
    docker: Docker,
    id: String,
    attached: bollard::container::AttachContainerResults,
    run: OneOff,
    ends: TtyEnds,
) {
    let TtyEnds { mut input, output, exit } = ends;
    let bollard::container::AttachContainerResults { output: mut stream, input: mut stdin } = attached;
    let deadline = Instant::now() + run.timeout;
    let mut waiting = std::pin::pin!(exit_code(&docker, &id));
    let mut ended: Option<TtyEnd> = None;
    let mut stream_open = true;
    let mut drain_until: Option<Instant> = None;
    loop {
        if let Some(end) = &ended
            && (!stream_open || matches!(end, TtyEnd::HungUp))
        {
            break;
        }
        tokio::select! {
            item = stream.next(), if stream_open => match item {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message })) => {
                    if output.send(message.to_vec()).await.is_err() {
                        ended = Some(TtyEnd::HungUp);
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(err)) => {
                    tracing::debug!(container = %short(&id), error = %err, "attach stream ended");
                    stream_open = false;
                }
                None => stream_open = false,
            },
            message = input.recv(), if ended.is_none() => match message {
                Some(TtyInput::Bytes(bytes)) => {
                    // The engine reads the attach connection as the command reads its
                    // terminal: a command that does not read holds this write.
                    if let Err(err) = stdin.write_all(&bytes).await {
                        tracing::debug!(container = %short(&id), error = %err, "writing to an interactive container");
                    }
                }
                Some(TtyInput::Resize(size)) => {
                    if let Err(err) = resize(&docker, &id, size).await {
                        tracing::debug!(error = %err, "resizing an interactive container");
                    }
                }
                None => ended = Some(TtyEnd::HungUp),
            },
            () = output.closed(), if ended.is_none() => ended = Some(TtyEnd::HungUp),
            code = &mut waiting, if ended.is_none() => {
                ended = Some(TtyEnd::Exited(code));
                drain_until = Some(Instant::now() + DRAIN);
            }
            () = tokio::time::sleep_until(deadline), if ended.is_none() => {
                ended = Some(TtyEnd::TimedOut);
                drain_until = Some(Instant::now() + DRAIN);
                // Removing kills it; its stream then ends.
                if let Err(err) = remove_container(&docker, &id).await {
                    tracing::warn!(container = %short(&id), error = %err, "cannot remove an interactive container");
                }
            }
            () = sleep_until_some(drain_until) => stream_open = false,
        }
    }
    drop(stdin);
    if let Err(err) = remove_container(&docker, &id).await {
        tracing::warn!(container = %short(&id), error = %err, "cannot remove an interactive container");
    }
    // All output first, then the end.
    drop(output);
    TtyEnd::report(ended, &run, exit);
}

/// What `run_interactive` answers when it cannot even begin.
pub(crate) fn no_program() -> Error {
    Error::Invalid("a one-off command needs a program to run".into())
}
