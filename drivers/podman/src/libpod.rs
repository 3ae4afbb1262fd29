//! The engine connection: podman-api's client for most calls, and a small raw libpod
//! client (hyper over the same Unix socket) for the two calls podman-api 0.11 cannot make
//! safely:
//!
//! - creating a container: podman-api's `ContainerCreateOpts` sends `no_new_privilages`
//!   (sic), which libpod ignores, so its containers would run without no-new-privileges;
//! - building an image: podman-api's `build` tars the context itself, following symlinks
//!   (a pushed symlink to a server file would put that file in the image) and compressing
//!   on the async runtime's thread; we send our own tar, streamed from a file.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paastech_core::Error;
use podman_api::Podman;
use serde_json::Value;
use tokio::net::UnixStream;

/// The libpod API version of Podman 4.3.1 (Debian 12), the version these calls target.
pub(crate) const API_VERSION: &str = "v4.3.1";

type Body = BoxBody<Bytes, std::io::Error>;

/// One engine, reached at one Unix socket.
#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) socket: PathBuf,
    pub(crate) podman: Podman,
}

impl Engine {
    pub(crate) fn new(socket: &Path) -> Engine {
        Engine { socket: socket.to_owned(), podman: Podman::unix(socket) }
    }

    /// Says whether the engine answers; the error says where it was looked for.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        self.podman.ping().await.map(|_| ()).map_err(|err| self.error("reaching podman", err))
    }

    /// Maps a podman-api error: the engine not answering is `Unavailable` (with the socket
    /// and how to start it), a 404 (or a container gone meanwhile) `NotFound`, anything
    /// else `Internal`.
    pub(crate) fn error(&self, doing: &str, err: podman_api::Error) -> Error {
        match &err {
            // Libpod 4.3 answers 500 "no such container" for a container removed while it
            // was being looked at (listed, then inspected): it is gone all the same.
            podman_api::Error::Fault { code, message }
                if code.as_u16() == 404 || message.ends_with("no such container") =>
            {
                Error::NotFound(format!("{doing}: {message}"))
            }
            podman_api::Error::Fault { message, .. } => {
                Error::Internal { message: format!("{doing}: podman answered: {message}"), source: Some(Box::new(err)) }
            }
            podman_api::Error::Error(_) | podman_api::Error::IO(_) => self.unavailable(doing, &err.to_string()),
            _ => Error::internal(doing.to_owned(), err),
        }
    }

    fn unavailable(&self, doing: &str, why: &str) -> Error {
        Error::Unavailable(format!(
            "{doing}: podman does not answer at {} ({why}); start it with \
             `podman system service --time=0 unix://{}` or set [runtime] socket",
            self.socket.display(),
            self.socket.display()
        ))
    }

    async fn send(&self, doing: &str, request: Request<Body>) -> Result<Response<Incoming>, Error> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| self.unavailable(doing, &e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unavailable(doing, &e.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "libpod connection ended");
            }
        });
        sender.send_request(request).await.map_err(|e| self.unavailable(doing, &e.to_string()))
    }

    /// `POST /libpod/PATH` with a JSON body; the JSON answer of a 2xx status.
    pub(crate) async fn post_json(&self, doing: &str, path: &str, body: &Value) -> Result<Value, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::internal(format!("{doing}: encoding JSON"), e))?;
        let request = Request::post(format!("/{API_VERSION}/libpod/{path}"))
            .header("Host", "podman")
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed())
            .map_err(|e| Error::internal(format!("{doing}: building the request"), e))?;
        let response = self.send(doing, request).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::internal(format!("{doing}: reading podman's answer"), e))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(status_error(doing, status, &value))
    }

    /// `POST /libpod/PATH_AND_QUERY` with no body (and `X-Registry-Auth` when given): the
    /// status and the whole answer, for calls whose answer is a stream of JSON lines
    /// (a push, a pull) that says what went wrong in an `error` line.
    pub(crate) async fn post_collect(
        &self,
        doing: &str,
        path: &str,
        registry_auth: Option<&str>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let mut request = Request::post(format!("/{API_VERSION}/libpod/{path}")).header("Host", "podman");
        if let Some(auth) = registry_auth {
            request = request.header("X-Registry-Auth", auth);
        }
        let request = request
            .body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed())
            .map_err(|e| Error::internal(format!("{doing}: building the request"), e))?;
        let response = self.send(doing, request).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::internal(format!("{doing}: reading podman's answer"), e))?
            .to_bytes();
        Ok((status, body))
    }

    /// `POST /libpod/PATH_AND_QUERY` with the file at `tar` as the body (a build context);
    /// the answer's body, to be streamed, once the status is a success.
    pub(crate) async fn post_tar(&self, doing: &str, path: &str, tar: &Path) -> Result<Incoming, Error> {
        let file = tokio::fs::File::open(tar).await.map_err(|e| Error::internal(format!("{doing}: opening"), e))?;
        let frames = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
        let request = Request::post(format!("/{API_VERSION}/libpod/{path}"))
            .header("Host", "podman")
            .header("Content-Type", "application/x-tar")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .map_err(|e| Error::internal(format!("{doing}: building the request"), e))?;
        let response = self.send(doing, request).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(status_error(doing, status, &serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// Libpod's error body is `{"cause", "message", "response"}`; its message is the useful part.
fn status_error(doing: &str, status: StatusCode, body: &Value) -> Error {
    let message = body.get("message").and_then(Value::as_str).unwrap_or("no message").to_owned();
    match status {
        StatusCode::NOT_FOUND => Error::NotFound(format!("{doing}: {message}")),
        StatusCode::CONFLICT => Error::Conflict(format!("{doing}: {message}")),
        _ => Error::internal_msg(format!("{doing}: podman answered {status}: {message}")),
    }
}
