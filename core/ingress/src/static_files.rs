//! The static file server process: a [`StaticSite`] over hyper, run as the `web` process
//! of "static site" apps (a directory with an `index.html`). The ingress serves the same
//! sites itself when it can (see `static_site.rs`); this process is what it would
//! otherwise proxy to, and what the health check sees.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};
use tokio::net::TcpListener;

use crate::server::{Serving, Shutdown};
use crate::static_site::{Ask, Reply, ReplyBody, StaticSite};

/// Size of one read from a file, and so of one body frame.
const CHUNK: usize = 64 * 1024;

pub(crate) type StaticBody = Either<FileBody, Full<Bytes>>;

/// Serves the files under `root` until `shutdown` resolves: GET and HEAD, `/` and
/// directories answer their `index.html`, nothing outside `root` is ever served (not
/// through `..`, encoded or not, nor through symlinks).
///
/// Fails at once if `root` is not a readable directory.
pub fn serve_static(
    listener: TcpListener,
    root: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Serving<io::Result<()>> {
    serving_site(listener, root, Box::pin(shutdown))
}

/// Made here, not in the caller's crate: see [`Serving`].
#[inline(never)]
fn serving_site(listener: TcpListener, root: PathBuf, shutdown: Shutdown) -> Serving<io::Result<()>> {
    Box::pin(serve_site(listener, root, shutdown))
}

async fn serve_site(listener: TcpListener, root: PathBuf, shutdown: Shutdown) -> io::Result<()> {
    let site = tokio::task::spawn_blocking(move || StaticSite::open(&root))
        .await
        .map_err(|err| io::Error::other(format!("opening the static root: {err}")))??;
    let site = Arc::new(site);
    crate::server::run(listener, shutdown, Duration::from_secs(5), move |_| {
        let site = site.clone();
        service_fn(move |req| handle(site.clone(), req))
    })
    .await;
    Ok(())
}

async fn handle(site: Arc<StaticSite>, req: Request<Incoming>) -> Result<Response<StaticBody>, Infallible> {
    Ok(respond(&site, &req).await)
}

/// The answer of `site` to `req`: from memory, on this thread, when what it asks for is
/// cached (the common case once a file was read); otherwise after a look at the disk on a
/// blocking thread. Used by this process and by the ingress for HTTP/2 requests (`h2.rs`).
pub(crate) async fn respond<B>(site: &Arc<StaticSite>, req: &Request<B>) -> Response<StaticBody> {
    let cached = {
        let header = |name: header::HeaderName| req.headers().get(name).map(HeaderValue::as_bytes);
        let ask = Ask {
            method: req.method().as_str(),
            target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            if_none_match: header(header::IF_NONE_MATCH),
            if_modified_since: header(header::IF_MODIFIED_SINCE),
            range: header(header::RANGE),
            if_range: header(header::IF_RANGE),
            accept_encoding: header(header::ACCEPT_ENCODING),
        };
        site.answer_cached(&ask)
    };
    if let Some(reply) = cached {
        return into_response(reply).await;
    }
    let site = site.clone();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let header = |name: header::HeaderName| req.headers().get(name).map(|v| v.as_bytes().to_vec());
    let method = req.method().as_str().to_owned();
    let (inm, ims, range, if_range, ae) = (
        header(header::IF_NONE_MATCH),
        header(header::IF_MODIFIED_SINCE),
        header(header::RANGE),
        header(header::IF_RANGE),
        header(header::ACCEPT_ENCODING),
    );
    let answer = move || {
        let ask = Ask {
            method: &method,
            target: &target,
            if_none_match: inm.as_deref(),
            if_modified_since: ims.as_deref(),
            range: range.as_deref(),
            if_range: if_range.as_deref(),
            accept_encoding: ae.as_deref(),
        };
        site.answer(&ask)
    };
    // A first look at a file reads the disk.
    let reply = match tokio::task::spawn_blocking(answer).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::error!(error = %err, "static file lookup failed");
            let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(b"internal error\n"))));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
    };
    into_response(reply).await
}

async fn into_response(reply: Reply) -> Response<StaticBody> {
    let body = match reply.body {
        ReplyBody::Empty => Either::Right(Full::new(Bytes::new())),
        ReplyBody::Bytes(bytes) => Either::Right(Full::new(bytes)),
        ReplyBody::File { path, offset, len } => match open_at(&path, offset).await {
            Ok(file) => Either::Left(FileBody { file, remaining: len }),
            Err(err) => {
                tracing::debug!(path = %path.display(), error = %err, "cannot open file");
                let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(b"not found\n"))));
                *resp.status_mut() = StatusCode::NOT_FOUND;
                return resp;
            }
        },
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = reply.status;
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    for (name, value) in reply.headers {
        headers.append(name, value);
    }
    if let Some(len) = reply.content_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

async fn open_at(path: &std::path::Path, offset: u64) -> io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset)).await?;
    }
    Ok(file)
}

/// A file streamed in chunks, so large files are never held in memory.
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut chunk = vec![0u8; want];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err))),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    // The file shrank after we sent its length: end with an error rather
                    // than a body shorter than announced.
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ))));
                }
                this.remaining -= n as u64;
                chunk.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
