//! What a static site answers, apart from how it is sent: one [`StaticSite`] per release
//! directory, used both by the `serve-static` process (over hyper, `static_files.rs`) and
//! by the ingress itself when it serves a site's files without the hop to that process
//! (`forward.rs`, over bytes).
//!
//! A release directory never changes once deployed (a new deployment is a new
//! directory), so what was read of it can be kept for the life of the site: small files
//! are held in memory (bounded per site), larger ones are only described and streamed
//! from disk on each request. A new deployment gets a new `StaticSite`, so nothing cached
//! for the old one is ever served for the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};

/// Files up to this size are kept in memory once read.
pub(crate) const CACHE_FILE_MAX: u64 = 256 * 1024;
/// What one site may hold in memory, over all its cached files.
pub(crate) const CACHE_TOTAL_MAX: usize = 32 * 1024 * 1024;
/// How many paths one site remembers (a large file's description is small but counted).
const CACHE_ENTRIES_MAX: usize = 16 * 1024;

/// A directory served as a website: `/` and directories answer their `index.html`,
/// nothing outside the root is ever served (not through `..`, encoded or not, nor
/// through symlinks).
pub struct StaticSite {
    root: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Box<str>, Arc<Resolved>>,
    bytes: usize,
}

/// A file as found for one request path: the file itself and its precompressed
/// siblings.
struct Resolved {
    content_type: &'static str,
    identity: Variant,
    gzip: Option<Variant>,
    brotli: Option<Variant>,
}

/// One representation of a file.
struct Variant {
    path: PathBuf,
    len: u64,
    /// Kept as header values: every answer sends them, without formatting or checking.
    etag: HeaderValue,
    last_modified: HeaderValue,
    modified_secs: u64,
    /// The whole content, for small files.
    body: Option<Bytes>,
}

/// The parts of a request a static site looks at.
#[derive(Default)]
pub(crate) struct Ask<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    pub if_none_match: Option<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub range: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
    pub accept_encoding: Option<&'a [u8]>,
}

/// What to answer: status, headers, and where the body comes from.
pub(crate) struct Reply {
    pub status: StatusCode,
    /// Headers other than `Content-Length`, `Date`, `Server` and `Connection`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body's length, sent as `Content-Length` (also for `HEAD`); `None` for a 304.
    pub content_length: Option<u64>,
    pub body: ReplyBody,
}

pub(crate) enum ReplyBody {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of the file at `path` from `offset`, streamed.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl StaticSite {
    /// A site serving `root`; fails if it is not a readable directory.
    pub fn open(root: &Path) -> std::io::Result<StaticSite> {
        let canonical = std::fs::canonicalize(root)
            .map_err(|err| std::io::Error::new(err.kind(), format!("static root {}: {err}", root.display())))?;
        if !std::fs::metadata(&canonical)?.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("static root {} is not a directory", root.display()),
            ));
        }
        Ok(StaticSite { root: canonical, cache: Mutex::new(Cache::default()) })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes of file content held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache is consistent after every write; a panic elsewhere must not stop serving.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `ask`. Reads the disk only for what is not cached yet; call it from a
    /// context that may block briefly (a small file's first read).
    pub(crate) fn answer(&self, ask: &Ask<'_>) -> Reply {
        self.answer_from(ask, true).unwrap_or_else(not_found)
    }

    /// The answer to `ask` if it needs no disk access (the file is cached, or the request
    /// is refused before any lookup); `None` otherwise: then call [`Self::answer`] where
    /// blocking is fine.
    pub(crate) fn answer_cached(&self, ask: &Ask<'_>) -> Option<Reply> {
        self.answer_from(ask, false)
    }

    fn answer_from(&self, ask: &Ask<'_>, disk: bool) -> Option<Reply> {
        let head = match ask.method {
            "GET" => false,
            "HEAD" => true,
            _ => {
                let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                reply.headers.push((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
                return Some(reply);
            }
        };
        let (raw_path, query) = match ask.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (ask.target, None),
        };
        // An absolute-form target (`GET http://host/path`) names the path after the host.
        let raw_path = strip_authority(raw_path);
        let Some(rel) = safe_relative_path(raw_path) else {
            return Some(not_found());
        };
        let dir_wanted = raw_path.ends_with('/');
        let key = if dir_wanted { format!("{rel}/") } else { rel.clone() };
        let cached = self.lock().entries.get(key.as_str()).cloned();
        let resolved = match cached {
            Some(r) => r,
            None if !disk => return None,
            None => match self.resolve(&rel, dir_wanted) {
                Found::File(r) => self.remember(key, *r),
                Found::Directory => return Some(redirect_to_dir(raw_path, query)),
                Found::Missing => return Some(not_found()),
            },
        };
        Some(respond(&resolved, ask, head))
    }

    fn remember(&self, key: String, resolved: Resolved) -> Arc<Resolved> {
        let resolved = Arc::new(resolved);
        let size: usize = [Some(&resolved.identity), resolved.gzip.as_ref(), resolved.brotli.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|v| v.body.as_ref().map(Bytes::len))
            .sum();
        let mut cache = self.lock();
        // Full: serve without keeping (a site's files outnumbering the bound is slower,
        // never wrong).
        if cache.entries.len() < CACHE_ENTRIES_MAX && cache.bytes + size <= CACHE_TOTAL_MAX {
            cache.bytes += size;
            cache.entries.insert(key.into_boxed_str(), resolved.clone());
        }
        resolved
    }

    fn resolve(&self, rel: &str, dir_wanted: bool) -> Found {
        let mut path = self.root.join(rel);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Found::Missing;
        };
        if meta.is_dir() {
            if !dir_wanted {
                // Relative links in the index resolve against the directory only with the
                // trailing slash, as every web server does.
                return Found::Directory;
            }
            path.push("index.html");
        }
        let Some(identity) = self.variant(&path, "") else {
            return Found::Missing;
        };
        let sibling = |ext: &str, tag: &str| {
            let mut name = path.clone().into_os_string();
            name.push(ext);
            self.variant(Path::new(&name), tag)
        };
        Found::File(Box::new(Resolved {
            content_type: content_type(&path),
            gzip: sibling(".gz", "gz"),
            brotli: sibling(".br", "br"),
            identity,
        }))
    }

    /// A regular file inside the root (after following every symlink), described and,
    /// when small, read.
    fn variant(&self, path: &Path, tag: &str) -> Option<Variant> {
        // Symlinks in the site may point anywhere: resolve them and check we are still in.
        let real = std::fs::canonicalize(path).ok().filter(|p| p.starts_with(&self.root))?;
        let meta = std::fs::metadata(&real).ok().filter(|m| m.is_file())?;
        let len = meta.len();
        let modified = meta.modified().unwrap_or(UNIX_EPOCH);
        let since_epoch = modified.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let etag = HeaderValue::try_from(if tag.is_empty() {
            format!("\"{:x}-{:x}-{:x}\"", since_epoch.as_secs(), since_epoch.subsec_nanos(), len)
        } else {
            format!("\"{:x}-{:x}-{:x}-{tag}\"", since_epoch.as_secs(), since_epoch.subsec_nanos(), len)
        })
        .ok()?;
        let body = if len <= CACHE_FILE_MAX {
            let bytes = std::fs::read(&real).ok()?;
            // The file changed between the two looks: describe what was read.
            if bytes.len() as u64 != len {
                return None;
            }
            Some(Bytes::from(bytes))
        } else {
            None
        };
        Some(Variant {
            path: real,
            len,
            etag,
            last_modified: HeaderValue::try_from(httpdate::fmt_http_date(modified)).ok()?,
            modified_secs: since_epoch.as_secs(),
            body,
        })
    }
}

enum Found {
    File(Box<Resolved>),
    Directory,
    Missing,
}

fn respond(resolved: &Resolved, ask: &Ask<'_>, head: bool) -> Reply {
    let has_variants = resolved.gzip.is_some() || resolved.brotli.is_some();
    let (variant, encoding) = match ask.accept_encoding.map(accepted_encodings) {
        Some((_, true)) if resolved.brotli.is_some() => (resolved.brotli.as_ref(), Some("br")),
        Some((true, _)) if resolved.gzip.is_some() => (resolved.gzip.as_ref(), Some("gzip")),
        _ => (None, None),
    };
    let variant = variant.unwrap_or(&resolved.identity);

    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(7);
    headers.push((header::CONTENT_TYPE, HeaderValue::from_static(resolved.content_type)));
    headers.push((header::ETAG, variant.etag.clone()));
    headers.push((header::LAST_MODIFIED, variant.last_modified.clone()));
    if has_variants {
        headers.push((header::VARY, HeaderValue::from_static("Accept-Encoding")));
    }
    if let Some(encoding) = encoding {
        headers.push((header::CONTENT_ENCODING, HeaderValue::from_static(encoding)));
    }

    if not_modified(variant, ask) {
        return Reply { status: StatusCode::NOT_MODIFIED, headers, content_length: None, body: ReplyBody::Empty };
    }
    headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));

    let range = match ask.range {
        Some(range) if if_range_holds(variant, ask.if_range) => parse_range(range, variant.len),
        _ => RangeAsk::Whole,
    };
    let (status, offset, len) = match range {
        RangeAsk::Whole => (StatusCode::OK, 0, variant.len),
        RangeAsk::Part { start, end } => {
            let value = HeaderValue::try_from(format!("bytes {start}-{end}/{}", variant.len));
            headers.extend(value.ok().map(|value| (header::CONTENT_RANGE, value)));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAsk::Unsatisfiable => {
            let mut reply = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            let value = HeaderValue::try_from(format!("bytes */{}", variant.len));
            reply.headers.extend(value.ok().map(|value| (header::CONTENT_RANGE, value)));
            return reply;
        }
    };
    let body = if head {
        ReplyBody::Empty
    } else {
        match &variant.body {
            Some(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
                let stop = usize::try_from(offset + len).unwrap_or(usize::MAX).min(bytes.len());
                ReplyBody::Bytes(bytes.slice(start..stop))
            }
            None => ReplyBody::File { path: variant.path.clone(), offset, len },
        }
    };
    Reply { status, headers, content_length: Some(len), body }
}

/// `If-None-Match` (weak comparison, RFC 9110 §13.1.2) decides when present; otherwise
/// `If-Modified-Since`, to the second.
fn not_modified(variant: &Variant, ask: &Ask<'_>) -> bool {
    if let Some(tags) = ask.if_none_match {
        let Ok(tags) = std::str::from_utf8(tags) else {
            return false;
        };
        let ours = variant.etag.to_str().unwrap_or_default().trim_start_matches("W/");
        return tags.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == ours);
    }
    let Some(since) = ask.if_modified_since.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    match httpdate::parse_http_date(since) {
        Ok(since) => {
            let since = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            variant.modified_secs <= since
        }
        Err(_) => false,
    }
}

/// `If-Range`: the range applies only to the representation the client already has
/// part of (a strong ETag match, or exactly its `Last-Modified`).
fn if_range_holds(variant: &Variant, if_range: Option<&[u8]>) -> bool {
    let Some(value) = if_range else {
        return true;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') { value == variant.etag } else { value == variant.last_modified }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No usable `Range`: the whole file (a malformed or multi-range header is ignored,
    /// as RFC 9110 §14.2 allows).
    Whole,
    /// Bytes `start..=end`.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

fn parse_range(value: &[u8], len: u64) -> RangeAsk {
    let Some(spec) = std::str::from_utf8(value).ok().and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (first.trim(), last.trim()) {
        ("", "") => RangeAsk::Whole,
        ("", suffix) => match number(suffix) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part { start: len.saturating_sub(n), end: len - 1 },
            None => RangeAsk::Whole,
        },
        (first, last) => {
            let Some(start) = number(first) else {
                return RangeAsk::Whole;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeAsk::Whole,
                }
            };
            if start >= len { RangeAsk::Unsatisfiable } else { RangeAsk::Part { start, end: end.min(len - 1) } }
        }
    }
}

/// Which of (gzip, br) `Accept-Encoding` allows (a `q=0` refuses one).
fn accepted_encodings(value: &[u8]) -> (bool, bool) {
    let Ok(value) = std::str::from_utf8(value) else {
        return (false, false);
    };
    let (mut gzip, mut br) = (false, false);
    for item in value.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let refused = parts
            .any(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0));
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = !refused;
        } else if name.eq_ignore_ascii_case("br") {
            br = !refused;
        }
    }
    (gzip, br)
}

fn strip_authority(path: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    path
}

/// The request path as a path relative to the root (segments joined by `/`), or `None`
/// if it is malformed or tries to climb out (`..`, `%2e%2e`, an encoded `/` or `\`, a NUL
/// byte).
pub(crate) fn safe_relative_path(raw: &str) -> Option<String> {
    let decoded = percent_decode(raw)?;
    let mut rel = String::with_capacity(decoded.len());
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s if s.contains(['\\', '\0']) => return None,
            s => {
                if !rel.is_empty() {
                    rel.push('/');
                }
                rel.push_str(s);
            }
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

fn redirect_to_dir(path: &str, query: Option<&str>) -> Reply {
    // Collapse leading slashes: `//evil.example` would be a protocol-relative redirect.
    let path = format!("/{}/", path.trim_start_matches('/'));
    let location = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut reply = text(StatusCode::MOVED_PERMANENTLY, "moved\n");
    // Only visible ASCII may go in a header; a path with anything else was sent encoded.
    if location.bytes().all(|b| b.is_ascii_graphic())
        && let Ok(location) = HeaderValue::try_from(location)
    {
        reply.headers.push((header::LOCATION, location));
    }
    reply
}

fn not_found() -> Reply {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    Reply {
        status,
        headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))],
        content_length: Some(body.len() as u64),
        body: ReplyBody::Bytes(Bytes::from_static(body.as_bytes())),
    }
}

/// The value of `Date` now; formatted at most once a second per thread.
pub(crate) fn http_date_now() -> Arc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Arc<str>)> = std::cell::RefCell::new((0, Arc::from("")));
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs || last.1.is_empty() {
            *last = (secs, Arc::from(httpdate::fmt_http_date(now)));
        }
        last.1.clone()
    })
}

/// The media type of a file, by extension.
pub(crate) fn content_type(path: &Path) -> &'static str {
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
            assert_eq!(safe_relative_path(raw).as_deref(), Some(*want), "{raw}");
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

    #[test]
    fn ranges() {
        use RangeAsk::*;
        let cases: &[(&str, u64, RangeAsk)] = &[
            ("bytes=0-0", 10, Part { start: 0, end: 0 }),
            ("bytes=2-5", 10, Part { start: 2, end: 5 }),
            ("bytes=2-", 10, Part { start: 2, end: 9 }),
            ("bytes=5-100", 10, Part { start: 5, end: 9 }),
            ("bytes=-3", 10, Part { start: 7, end: 9 }),
            ("bytes=-30", 10, Part { start: 0, end: 9 }),
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-20", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=5-2", 10, Whole),
            ("bytes=0-1,3-4", 10, Whole),
            ("items=0-1", 10, Whole),
            ("bytes=a-b", 10, Whole),
            ("bytes=+1-2", 10, Whole),
            ("bytes=-", 10, Whole),
        ];
        for (value, len, want) in cases {
            assert_eq!(parse_range(value.as_bytes(), *len), *want, "{value} of {len}");
        }
    }

    #[test]
    fn encodings() {
        let cases: &[(&str, (bool, bool))] = &[
            ("gzip, deflate, br", (true, true)),
            ("gzip", (true, false)),
            ("br;q=1.0, gzip;q=0.5", (true, true)),
            ("br;q=0, gzip", (true, false)),
            ("GZIP;q=0.000", (false, false)),
            ("identity", (false, false)),
            ("*", (false, false)),
        ];
        for (value, want) in cases {
            assert_eq!(accepted_encodings(value.as_bytes()), *want, "{value}");
        }
    }
}
