//! Interactive one-offs in a Podman container: created with a terminal and an open stdin
//! (libpod's SpecGenerator `terminal`, `stdin`), attached before it starts, resized through
//! libpod's API, removed (killed if need be) whatever ends the session.

use std::time::Duration;

use futures_util::{AsyncWriteExt, StreamExt};
use paastech_core::drivers::OneOff;
use paastech_core::interactive::{TtyEnd, TtyEnds, TtyInput, TtySize, sleep_until_some};
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};
use podman_api::conn::TtyChunk;
use podman_api::opts::ContainerAttachOpts;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::libpod::Engine;
use crate::runtime::remove;

/// The engine's detach sequence, which it would swallow from the input stream: set to one
/// no one types (five Ctrl-] in a row), since the API has no way to turn it off.
const DETACH_KEYS: &str = "ctrl-],ctrl-],ctrl-],ctrl-],ctrl-]";
/// How long the output is read after the container exited, before its end is reported.
const DRAIN: Duration = Duration::from_secs(2);

/// A one-off's SpecGenerator made interactive: a terminal, stdin kept open.
pub(crate) fn tty_spec(mut body: Value) -> Value {
    body["terminal"] = json!(true);
    body["stdin"] = json!(true);
    body
}

/// Creates the container, attaches, starts it at `size`, and hands the relay to a task;
/// the container is removed when the session ends, or here when it cannot start.
pub(crate) async fn start(
    engine: Engine,
    body: Value,
    run: OneOff,
    size: TtySize,
    registry: Option<&ImageRegistry>,
    ends: TtyEnds,
) -> Result<()> {
    let image = body["image"].as_str().unwrap_or_default().to_owned();
    if let Some(registry) = registry.filter(|r| image.starts_with(&format!("{}/", r.address))) {
        crate::registry::ensure_image(&engine, registry, &image).await?;
    }
    let created =
        engine.post_json(&format!("creating a container of {image}"), "containers/create", &tty_spec(body)).await?;
    let id = created
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::internal_msg("podman created a container but gave no id"))?
        .to_owned();
    match attach_and_start(&engine, &id, &run, size).await {
        Ok(attached) => {
            tokio::spawn(relay(engine, id, attached, run, ends));
            Ok(())
        }
        Err(err) => {
            if let Err(err) = remove(&engine, &id, Duration::ZERO).await {
                tracing::warn!(container = %id, error = %err, "cannot remove an interactive container");
            }
            Err(err)
        }
    }
}

async fn attach_and_start(
    engine: &Engine,
    id: &str,
    run: &OneOff,
    size: TtySize,
) -> Result<podman_api::conn::Multiplexer> {
    let container = engine.podman.containers().get(id);
    let options = ContainerAttachOpts::builder().stdin(true).stdout(true).stderr(true).detach_keys(DETACH_KEYS).build();
    let attached =
        container.attach(&options).await.map_err(|err| engine.error("attaching to an interactive container", err))?;
    // Podman answers 500 for a program missing from the image: the command's fault.
    container.start(None).await.map_err(|err| match engine.error(&format!("running {}", run.program()), err) {
        err @ Error::Unavailable(_) => err,
        other => Error::Invalid(other.to_string()),
    })?;
    resize(engine, id, size).await?;
    Ok(attached)
}

async fn resize(engine: &Engine, id: &str, size: TtySize) -> Result<()> {
    engine
        .podman
        .containers()
        .get(id)
        .resize(usize::from(size.cols), usize::from(size.rows))
        .await
        .map_err(|err| engine.error("resizing the terminal of an interactive container", err))
}

async fn exit_code(engine: &Engine, id: &str) -> Result<i32> {
    let container = engine.podman.containers().get(id);
    container.wait(&Default::default()).await.map_err(|e| engine.error("waiting for a container", e))?;
    let data = container.inspect().await.map_err(|e| engine.error("inspecting a container", e))?;
    Ok(data.state.and_then(|s| s.exit_code).unwrap_or_default())
}

async fn relay(engine: Engine, id: String, attached: podman_api::conn::Multiplexer, run: OneOff, ends: TtyEnds) {
    let TtyEnds { mut input, output, exit } = ends;
    let (stream, stdin) = attached.split();
    let mut stream = std::pin::pin!(stream);
    let mut stdin = std::pin::pin!(stdin);
    let deadline = Instant::now() + run.timeout;
    let mut waiting = std::pin::pin!(exit_code(&engine, &id));
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
                Some(Ok(TtyChunk::StdOut(bytes) | TtyChunk::StdErr(bytes))) => {
                    if output.send(bytes).await.is_err() {
                        ended = Some(TtyEnd::HungUp);
                    }
                }
                Some(Ok(TtyChunk::StdIn(_))) => {}
                Some(Err(err)) => {
                    tracing::debug!(container = %id, error = %err, "attach stream ended");
                    stream_open = false;
                }
                None => stream_open = false,
            },
            message = input.recv(), if ended.is_none() => match message {
                Some(TtyInput::Bytes(bytes)) => {
                    // The engine reads the attach connection as the command reads its
                    // terminal: a command that does not read holds this write.
                    if let Err(err) = stdin.write_all(&bytes).await {
                        tracing::debug!(container = %id, error = %err, "writing to an interactive container");
                    }
                }
                Some(TtyInput::Resize(size)) => {
                    if let Err(err) = resize(&engine, &id, size).await {
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
                if let Err(err) = remove(&engine, &id, Duration::ZERO).await {
                    tracing::warn!(container = %id, error = %err, "cannot remove an interactive container");
                }
            }
            () = sleep_until_some(drain_until) => stream_open = false,
        }
    }
    if let Err(err) = remove(&engine, &id, Duration::ZERO).await {
        tracing::warn!(container = %id, error = %err, "cannot remove an interactive container");
    }
    // All output first, then the end.
    drop(output);
    TtyEnd::report(ended, &run, exit);
}
