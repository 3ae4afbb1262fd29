//! A small static file server, used to run "static site" apps (a directory with an
//! `index.html`) as a `web` process.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;

/// Size of one read from a file, and so of one body frame.
const CHUNK: usize = 64 * 1024;

type StaticBody = Either<FileBody, Full<Bytes>>;

/// Serves the files under `root` until `shutdown` resolves: GET and HEAD, `/` and
/// directories answer their `index.html`, nothing outside `root` is ever served (not
/// through `..`, encoded or not, nor through symlinks).
///
/// Fails at once if `root` is not a readable directory.
pub async fn serve_static(listener: TcpListener, root: PathBuf, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let root = tokio::fs::canonicalize(&root)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("static root {}: {err}", root.display())))?;
    if !tokio::fs::metadata(&root).await?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("static root {} is not a directory", root.display()),
        ));
    }
    let root: Arc<Path> = root.into();
    crate::server::run(listener, shutdown, Duration::from_secs(5), move |_| {
        let root = root.clone();
        service_fn(move |req| handle(root.clone(), req))
    })
    .await;
    Ok(())
}

async fn handle(root: Arc<Path>, req: Request<Incoming>) -> Result<Response<StaticBody>, Infallible> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(resp);
        }
    };
    let raw = req.uri().path();
    let Some(rel) = safe_relative_path(raw) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let mut path = root.join(&rel);
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    if meta.is_dir() {
        if !raw.ends_with('/') {
            // Relative links in the index resolve against the directory only with the
            // trailing slash, as every web server does.
            return Ok(redirect_to_dir(req.uri()));
        }
        path.push("index.html");
    }
    // Symlinks in the site may point anywhere: resolve them and check we are still in.
    let path = match tokio::fs::canonicalize(&path).await {
        Ok(p) if p.starts_with(&root) => p,
        _ => return Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(err) => {
            tracing::debug!(path = %path.display(), error = %err, "cannot open file");
            return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
        }
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    };
    let body =
        if head { Either::Right(Full::new(Bytes::new())) } else { Either::Left(FileBody { file, remaining: len }) };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

/// The request path as a path relative to the root, or `None` if it is malformed or
/// tries to climb out (`..`, `%2e%2e`, an encoded `/` or `\`, a NUL byte).
fn safe_relative_path(raw: &str) -> Option<PathBuf> {
    let decoded = percent_decode(raw)?;
    let mut rel = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s if s.contains(['\\', '\0']) => return None,
            s => rel.push(s),
        }
    }
    Some(rel)
}

/// Decodes `%XX` escapes; `None` on a malformed escape or a result that is not UTF-8.
/// Decoding happens once, so `%252e` stays the literal `%2e`.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn redirect_to_dir(uri: &http::Uri) -> Response<StaticBody> {
    // Collapse leading slashes: `//evil.example` would be a protocol-relative redirect.
    let path = format!("/{}/", uri.path().trim_start_matches('/'));
    let location = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut resp = text(StatusCode::MOVED_PERMANENTLY, "moved\n");
    if let Ok(value) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, value);
    }
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<StaticBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("paastech"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The media type of a file, by extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// A file streamed in chunks, so large files are never held in memory.
struct FileBody {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_root() {
        let ok: &[(&str, &str)] = &[
            ("/", ""),
            ("/a/b.html", "a/b.html"),
            ("/a//./b", "a/b"),
            ("/caf%C3%A9.txt", "café.txt"),
            ("/%252e%252e/x", "%2e%2e/x"),
        ];
        for (raw, want) in ok {
            assert_eq!(safe_relative_path(raw), Some(PathBuf::from(want)), "{raw}");
        }
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/a/%2e%2e%2f..",
            "/..%2fetc",
            "/..%5cx",
            "/%00",
            "/%zz",
            "/%2",
        ] {
            assert_eq!(safe_relative_path(raw), None, "{raw}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Path::new("a/INDEX.HTML")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("x.woff2")), "font/woff2");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
