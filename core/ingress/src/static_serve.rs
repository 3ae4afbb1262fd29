//! The ingress's fast path for static sites: a request routed to a backend that is the
//! platform's own static file server is answered from the site's files by the ingress
//! itself, on the client's connection, without the hop to that process.
//!
//! Which backends qualify is decided once per deployment switch ([`discover`]): the process
//! listening on the backend's address must be the configured static server binary run as
//! `PREFIX… DIR`. The answer is then exactly what that process would give (both use one
//! [`StaticSite`]), so serving it here changes nothing but the cost.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::forward::ClientIo;
use crate::h1::{Answering, MAX_HEADERS};
use crate::static_site::{Ask, Reply, ReplyBody, StaticSite, http_date_now};

/// How long a write to the client may make no progress.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// One read of a streamed file.
const CHUNK: usize = 128 * 1024;
/// The most one `sendfile(2)` call is asked for, so one connection does not hold its
/// thread for long.
const SENDFILE_CHUNK: usize = 1024 * 1024;

/// An answer sent whole.
pub(crate) struct Served {
    /// Whether the connection may carry another request.
    pub(crate) keep_alive: bool,
    pub(crate) status: u16,
    /// Head and body.
    pub(crate) bytes: u64,
}

/// Answers one request (`head`: its whole head, already parsed once by `h1`) from `site`.
pub(crate) async fn serve<S: ClientIo>(
    site: &Arc<StaticSite>,
    client: &mut S,
    head: &[u8],
    answering: Answering,
    keep_alive: bool,
    out: &mut Vec<u8>,
    hsts: Option<u32>,
) -> io::Result<Served> {
    let reply = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // `h1` accepted this head already; a failure here would be a bug, answered as 400.
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "static request head did not parse again"));
        }
        let mut ask = Ask { method: req.method.unwrap_or(""), target: req.path.unwrap_or("/"), ..Ask::default() };
        for h in req.headers.iter() {
            let slot = if h.name.eq_ignore_ascii_case("if-none-match") {
                &mut ask.if_none_match
            } else if h.name.eq_ignore_ascii_case("if-modified-since") {
                &mut ask.if_modified_since
            } else if h.name.eq_ignore_ascii_case("range") {
                &mut ask.range
            } else if h.name.eq_ignore_ascii_case("if-range") {
                &mut ask.if_range
            } else if h.name.eq_ignore_ascii_case("accept-encoding") {
                &mut ask.accept_encoding
            } else {
                continue;
            };
            *slot = Some(h.value);
        }
        match site.answer_cached(&ask) {
            Some(reply) => reply,
            None => {
                // Not seen yet: the first look reads the disk, off this thread.
                let owned = OwnedAsk::from(&ask);
                let site = site.clone();
                tokio::task::spawn_blocking(move || site.answer(&owned.ask()))
                    .await
                    .map_err(|err| io::Error::other(format!("static file lookup failed: {err}")))?
            }
        }
    };
    let status = reply.status.as_u16();
    let bytes = write_reply(client, reply, answering, keep_alive, out, hsts).await?;
    Ok(Served { keep_alive, status, bytes })
}

async fn write_reply<S: ClientIo>(
    client: &mut S,
    reply: Reply,
    answering: Answering,
    keep_alive: bool,
    out: &mut Vec<u8>,
    hsts: Option<u32>,
) -> io::Result<u64> {
    use std::io::Write as _;
    out.clear();
    let version = if answering.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let reason = reply.status.canonical_reason().unwrap_or("");
    let _ = write!(
        out,
        "{version} {} {reason}\r\nServer: paastech\r\nDate: {}\r\n",
        reply.status.as_u16(),
        http_date_now()
    );
    for (name, value) in &reply.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = reply.content_length {
        let _ = write!(out, "content-length: {len}\r\n");
    }
    // Over HTTPS, the project's HSTS (as on the proxied path).
    if let Some(max_age) = hsts {
        let _ = write!(out, "strict-transport-security: max-age={max_age}\r\n");
    }
    match (keep_alive, answering.http10) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, false) => {}
    }
    out.extend_from_slice(b"\r\n");
    if answering.head_method {
        write_all(client, out).await?;
        return Ok(out.len() as u64);
    }
    match reply.body {
        ReplyBody::Empty => {
            write_all(client, out).await?;
            Ok(out.len() as u64)
        }
        ReplyBody::Bytes(bytes) => {
            // A small answer goes out in one write with its head.
            out.extend_from_slice(&bytes);
            write_all(client, out).await?;
            Ok(out.len() as u64)
        }
        ReplyBody::File { path, offset, len } => {
            let mut file = tokio::fs::File::open(&path).await?;
            write_all(client, out).await?;
            let head = out.len() as u64;
            if let Some(tcp) = client.plain_tcp() {
                // Plain HTTP: from the page cache to the socket, never through this
                // process's memory.
                send_file(tcp, file.into_std().await, offset, len).await?;
                return Ok(head + len);
            }
            file.seek(io::SeekFrom::Start(offset)).await?;
            let mut remaining = len;
            let mut buf = vec![0u8; CHUNK];
            while remaining > 0 {
                let want = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
                let n = file.read(&mut buf[..want]).await?;
                if n == 0 {
                    // The file shrank after its length was sent: cut the connection rather
                    // than send a body shorter than announced.
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"));
                }
                write_all(client, &buf[..n]).await?;
                remaining -= n as u64;
            }
            Ok(head + len)
        }
    }
}

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, waiting for the socket
/// to take more (each wait bounded like any write).
async fn send_file(tcp: &TcpStream, file: std::fs::File, mut offset: u64, len: u64) -> io::Result<()> {
    let end = offset.saturating_add(len);
    while offset < end {
        tokio::time::timeout(WRITE_TIMEOUT, tcp.writable())
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
        let count = usize::try_from(end - offset).map_or(SENDFILE_CHUNK, |left| left.min(SENDFILE_CHUNK));
        let sent = tcp.try_io(Interest::WRITABLE, || {
            let mut at = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            nix::sys::sendfile::sendfile(tcp, &file, Some(&mut at), count).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                // The file shrank after its length was sent: cut the connection rather
                // than send a body shorter than announced.
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"));
            }
            Ok(n) => offset += n as u64,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

async fn write_all<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, client.write_all(bytes))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// An [`Ask`] that owns its parts, to move to a blocking thread.
struct OwnedAsk {
    method: String,
    target: String,
    headers: [Option<Vec<u8>>; 5],
}

impl OwnedAsk {
    fn from(ask: &Ask<'_>) -> Self {
        let own = |v: Option<&[u8]>| v.map(<[u8]>::to_vec);
        OwnedAsk {
            method: ask.method.to_owned(),
            target: ask.target.to_owned(),
            headers: [
                own(ask.if_none_match),
                own(ask.if_modified_since),
                own(ask.range),
                own(ask.if_range),
                own(ask.accept_encoding),
            ],
        }
    }

    fn ask(&self) -> Ask<'_> {
        let [inm, ims, range, if_range, ae] = &self.headers;
        Ask {
            method: &self.method,
            target: &self.target,
            if_none_match: inm.as_deref(),
            if_modified_since: ims.as_deref(),
            range: range.as_deref(),
            if_range: if_range.as_deref(),
            accept_encoding: ae.as_deref(),
        }
    }
}

/// For each of `addrs` that is served by the static server `prefix` (its argv, without
/// the directory), the site that process serves. Looks at `/proc`: the process holding
/// the listening socket must run the same executable as `prefix[0]` with exactly
/// `prefix… DIR` as its arguments. Anything else (another program, a container's port,
/// an address that is not local) is proxied as usual.
pub(crate) async fn discover(prefix: Vec<String>, addrs: Vec<SocketAddr>) -> HashMap<SocketAddr, Arc<StaticSite>> {
    tokio::task::spawn_blocking(move || discover_blocking(&prefix, &addrs)).await.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "looking for static site servers failed");
        HashMap::new()
    })
}

fn discover_blocking(prefix: &[String], addrs: &[SocketAddr]) -> HashMap<SocketAddr, Arc<StaticSite>> {
    let mut found = HashMap::new();
    let Some(program) = prefix.first() else {
        return found;
    };
    let Ok(exe) = std::fs::canonicalize(program) else {
        return found;
    };
    let addrs: Vec<SocketAddr> = addrs.iter().copied().filter(|a| a.ip().is_loopback()).collect();
    if addrs.is_empty() {
        return found;
    }
    // Listening sockets on our addresses: inode → address.
    let inodes: HashMap<u64, SocketAddr> = paastech_core::ports::listeners()
        .into_iter()
        .filter_map(|l| Some((l.inode, *addrs.iter().find(|a| l.takes(**a))?)))
        .collect();
    if inodes.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name();
        if !pid.to_str().is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        // The argv first: reading it is cheaper than listing every descriptor.
        let Some(dir) = static_dir_of(&entry.path(), &exe, prefix) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let addr = fds.flatten().find_map(|fd| inodes.get(&paastech_core::ports::socket_inode(&fd.path())?).copied());
        let Some(addr) = addr else {
            continue;
        };
        let Some(dir) = entry.metadata().ok().and_then(|proc| servable(proc.uid(), own_uid(), &dir)) else {
            tracing::debug!(%addr, dir = %dir.display(), "a static site server of a directory its user may not give out: proxied");
            continue;
        };
        match StaticSite::open(&dir) {
            Ok(site) => {
                tracing::debug!(%addr, dir = %dir.display(), "serving a static site from the ingress");
                found.insert(addr, Arc::new(site));
            }
            Err(err) => tracing::warn!(%addr, error = %err, "static site server found, but its directory is not"),
        }
    }
    found
}

/// The uid this process runs as (the owner of its `/proc` entry).
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// `dir`, resolved, when a static server running as `uid` may have the ingress serve it.
/// The ingress reads as the server: an app running as a uid of its own (the process
/// runtime's isolation) must not make it serve what that uid cannot read itself (the
/// data directory, another project's release). So the directory must be the app's own,
/// and no directory above it the app's or open to writes by others than their owner (else
/// the app could swap it for a link elsewhere once checked). A process of the server's
/// own uid (apps not isolated) reads all that anyway.
fn servable(uid: u32, server_uid: u32, dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    if uid == server_uid {
        return Some(dir);
    }
    if std::fs::metadata(&dir).ok()?.uid() != uid {
        return None;
    }
    // Each directory on the way, with the uid owning the entry below it: a sticky one
    // (/tmp) lets nobody but that entry's owner rename it.
    let mut below = uid;
    for above in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(above).ok()?;
        let closed = meta.mode() & 0o022 == 0 || (meta.mode() & 0o1000 != 0 && below != uid);
        if meta.uid() == uid || !closed {
            return None;
        }
        below = meta.uid();
    }
    Some(dir)
}

/// The directory a process serves, if it is `exe` run as `prefix… DIR`.
fn static_dir_of(proc_dir: &Path, exe: &Path, prefix: &[String]) -> Option<PathBuf> {
    if std::fs::read_link(proc_dir.join("exe")).ok()? != exe {
        return None;
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.strip_suffix(b"\0").unwrap_or(&cmdline).split(|b| *b == 0).collect();
    if args.len() != prefix.len() + 1 || args[1..prefix.len()].iter().zip(&prefix[1..]).any(|(a, p)| *a != p.as_bytes())
    {
        return None;
    }
    let dir = PathBuf::from(std::str::from_utf8(args[prefix.len()]).ok()?);
    dir.is_absolute().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app's uid may have its own directory served, in a place it cannot swap, and
    /// nothing else; the server's own uid anything. Needs root (chown), as the journeys.
    #[test]
    fn a_static_server_of_another_uid_gets_only_its_own_fixed_directory() {
        use std::os::unix::fs::PermissionsExt;
        let (app, other, server) = (2_000_000_042, 2_000_000_043, own_uid());
        assert_eq!(server, 0, "this test chowns files: run it as root");
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("releases");
        let site = base.join("v1");
        std::fs::create_dir_all(&site).expect("dirs");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        std::os::unix::fs::chown(&site, Some(app), None).expect("chown");
        assert_eq!(servable(app, server, &site), Some(site.clone()), "its own release");
        assert_eq!(servable(other, server, &site), None, "another uid's directory");
        assert_eq!(servable(app, server, &base), None, "a directory it does not own");
        assert_eq!(servable(server, server, &base), Some(base.clone()), "the server's own processes");
        assert_eq!(servable(app, server, &site.join("..").join("v1")), Some(site.clone()), "resolved first");
        // Where the app could rename its directory and put a link in its place: refused.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert_eq!(servable(app, server, &site), None, "under a directory others may write");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert_eq!(servable(app, server, &site), None, "right under a sticky directory, which it owns the entry of");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        std::os::unix::fs::chown(&base, Some(app), None).expect("chown");
        assert_eq!(servable(app, server, &site), None, "under a directory of its own");
    }
}
