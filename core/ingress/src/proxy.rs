//! The reverse proxy: `NAME.<domain>` → one of NAME's backends, bodies streamed both
//! ways, upgrades (WebSocket) tunnelled.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::forward;
use crate::h2;
use crate::routes::RouteTable;
use crate::server::{Serving, Shutdown};
use crate::tls::{ALPN_ACME_TLS, ALPN_H2, CertStore};
use crate::trust::IpRange;
use crate::wake::{Waker, Wakes};

/// How the ingress runs. Build it with [`IngressConfig::new`] and adjust the fields.
#[derive(Clone)]
pub struct IngressConfig {
    /// Project `blog` is served at `blog.<domain>`.
    pub domain: String,
    /// How long to wait for a backend to accept a connection before answering 502.
    pub connect_timeout: Duration,
    /// How long a backend may take to start its answer once it has the whole request
    /// (then a 504 page), and how long it may then send nothing in the middle of its
    /// answer (then the client's connection is closed), as nginx's `proxy_read_timeout`.
    pub backend_timeout: Duration,
    /// After `shutdown` resolves, how long open connections get to finish their request.
    pub shutdown_grace: Duration,
    /// How many threads proxy requests (each a single-threaded runtime).
    pub threads: NonZeroUsize,
    /// Peers (a load balancer, a TLS terminator) whose `X-Forwarded-Proto` is passed on;
    /// from anyone else it is replaced with `http`.
    pub trusted_proxies: Vec<IpRange>,
    /// Open client connections at most (they share the process's file descriptors with
    /// SSH and the API). Past it, a new connection gets a short `503` page with
    /// `Retry-After` and is closed; see [`MAX_REFUSING`].
    pub max_connections: NonZeroUsize,
    /// The port clients reach the HTTPS listener on, when it is not the one it listens on
    /// (a server behind port forwarding): redirects to HTTPS name it (`None`: the
    /// listener's own port; 443 is left out of URLs).
    pub https_public_port: Option<u16>,
    /// Who wakes a sleeping project when a request for it arrives (`None`: such a request
    /// is answered 503 at once).
    pub waker: Option<Arc<dyn Waker>>,
    /// How long a request for a sleeping project is held while it wakes; past it, 503.
    pub wake_timeout: Duration,
    /// How many requests may wait for one project's wake; more are answered 503 at once.
    pub max_waiting_wakes: usize,
}

impl std::fmt::Debug for IngressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressConfig")
            .field("domain", &self.domain)
            .field("connect_timeout", &self.connect_timeout)
            .field("backend_timeout", &self.backend_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("threads", &self.threads)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_connections", &self.max_connections)
            .field("https_public_port", &self.https_public_port)
            .field("waker", &self.waker.is_some())
            .field("wake_timeout", &self.wake_timeout)
            .field("max_waiting_wakes", &self.max_waiting_wakes)
            .finish()
    }
}

/// The default [`IngressConfig::wake_timeout`].
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`IngressConfig::max_waiting_wakes`]: a burst of a page's assets from a few
/// browsers, well under the connection cap.
pub const DEFAULT_MAX_WAITING_WAKES: usize = 1024;

/// The default [`IngressConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(10_000).expect("not zero");

/// Connections past the cap being answered their `503` page at once. Each is held for at
/// most [`REFUSAL_LINGER`]; past this many, a connection over the cap is closed without a
/// word, which costs nothing.
pub const MAX_REFUSING: usize = 64;
/// How long a refused connection is held: to send the page, then to read and drop what
/// the client sent, so that closing does not reset the connection before it read the page.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL_LINGER_BYTES: usize = 64 * 1024;
/// The listeners' accept queue: connections the kernel completes while every proxy
/// thread is busy. A listener bound with the standard library's 128 overflows under a
/// burst of new connections (most of all TLS ones, each a handshake's CPU time before
/// the next accept), and a dropped SYN costs its client a one-second retransmit. nginx's
/// bench configuration uses the same; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;
/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a connection over the cap reads.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: paastech\r\n\
Content-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nContent-Length: 66\r\nConnection: close\r\n\r\n\
503 Service Unavailable: the server has too many open connections\n";

impl IngressConfig {
    pub fn new(domain: impl Into<String>) -> Self {
        IngressConfig {
            domain: domain.into(),
            connect_timeout: Duration::from_secs(5),
            backend_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            threads: default_threads(),
            trusted_proxies: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            https_public_port: None,
            waker: None,
            wake_timeout: DEFAULT_WAKE_TIMEOUT,
            max_waiting_wakes: DEFAULT_MAX_WAITING_WAKES,
        }
    }
}

/// One proxy thread per core, for plain HTTP and HTTPS alike. Encrypting and decrypting
/// is the proxy's own work, so TLS scales with threads; plain HTTP once did better on one
/// thread per two cores (fewer, busier threads handle more events per wakeup), but only
/// until the threads took turns with the rest of the machine (`turns.rs`). Since then, on
/// 2 cores with the load generator and the backend on the same machine, two threads serve
/// the static site 1.40x/1.19x/1.01x nginx's requests/s at 8/64/256 connections with p99
/// 0.3-0.7x nginx's, where one thread missed the rate at 8 and 256 connections (0.94x,
/// 0.91x) and p99 at 8 (2.1x); proxied requests went 0.97x/1.11x/1.02x nginx's with two
/// threads and 1.22x/1.13x/0.87x with one (`scripts/bench.sh`, README "Benchmarks").
fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// What the requests of one ingress thread share.
pub(crate) struct Shared {
    pub(crate) table: RouteTable,
    /// `.<domain>`, lowercase, so matching a Host is one case-insensitive suffix compare.
    pub(crate) suffix: Box<str>,
    pub(crate) connect_timeout: Duration,
    /// See [`IngressConfig::backend_timeout`].
    pub(crate) backend_timeout: Duration,
    /// This thread's index, to reuse the backend connections its own runtime drives.
    pub(crate) shard: usize,
    /// Set once the ingress stops: busy connections close after their current exchange.
    pub(crate) stopping: Arc<AtomicBool>,
    /// See [`IngressConfig::trusted_proxies`].
    pub(crate) trusted_proxies: Arc<[IpRange]>,
    /// This thread's HTTP/1.1 client to backends, for requests that came over HTTP/2.
    pub(crate) h2_upstream: h2::Upstream,
    /// The certificates HTTPS is served with (`None`: no HTTPS): plain HTTP is redirected
    /// only for a host that has one.
    pub(crate) certs: Option<CertStore>,
    /// The port redirects to HTTPS name.
    pub(crate) https_port: u16,
    /// Wakes of sleeping projects, shared by every thread (one wake per project).
    pub(crate) wakes: Arc<Wakes>,
}

/// Serves the ingress on `listener` until `shutdown` resolves (then lets open requests
/// finish, for at most `config.shutdown_grace`).
///
/// `Host: NAME.<domain>[:port]` (any case) goes to NAME's backends in `table`; an unknown
/// name gets a 404 page, a project without backends a 503 page, an unreachable backend a
/// 502 page.
///
/// The proxying runs on threads of its own (`config.threads`), each a single-threaded
/// tokio runtime accepting on the same socket: a request, its backend exchange and the
/// response are then all handled by one task of one thread, with no wakeup of another
/// on the way (on a multi-thread runtime those cost about a third of the CPU time at low
/// concurrency). The caller's runtime only waits for `shutdown`. Dropping the returned
/// future stops the threads too.
pub fn serve(
    listener: TcpListener,
    config: IngressConfig,
    table: RouteTable,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Serving<()> {
    proxying(listener, None, config, table, Box::pin(shutdown))
}

/// [`serve`], and HTTPS on `https` with the certificates of `certs` (chosen per
/// connection by SNI; a name it has none for fails the handshake). TLS 1.2 and 1.3; ALPN
/// `h2` gets HTTP/2, anything else HTTP/1.1 on the same path as plain HTTP. Apps are sent
/// `X-Forwarded-Proto: https` for requests that came over TLS.
///
/// Both listeners share the proxy threads and the cap on open connections (a TLS
/// connection over the cap is closed without an answer: a plain-text 503 page would mean
/// nothing to it).
pub fn serve_with_https(
    listener: TcpListener,
    https: TcpListener,
    certs: CertStore,
    config: IngressConfig,
    table: RouteTable,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Serving<()> {
    proxying(listener, Some((https, certs)), config, table, Box::pin(shutdown))
}

/// Made here, not in the caller's crate: see [`Serving`].
#[inline(never)]
fn proxying(
    listener: TcpListener,
    https: Option<(TcpListener, CertStore)>,
    config: IngressConfig,
    table: RouteTable,
    shutdown: Shutdown,
) -> Serving<()> {
    Box::pin(run(listener, https, config, table, shutdown))
}

async fn run(
    listener: TcpListener,
    https: Option<(TcpListener, CertStore)>,
    config: IngressConfig,
    table: RouteTable,
    shutdown: Shutdown,
) {
    let domain = config.domain.trim_matches('.').to_ascii_lowercase();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, domain = %domain, "ingress listening");
    }
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "cannot take over the ingress socket");
            return;
        }
    };
    deepen_backlog(&listener);
    let https_port = https.as_ref().and_then(|(https, _)| https.local_addr().ok()).map_or(443, |a| a.port());
    let https_port = config.https_public_port.unwrap_or(https_port);
    let certs = https.as_ref().map(|(_, certs)| certs.clone());
    let (https, acceptor) = match https {
        Some((https, certs)) => {
            if let Ok(addr) = https.local_addr() {
                tracing::info!(%addr, "ingress listening for https");
            }
            match https.into_std() {
                Ok(https) => {
                    deepen_backlog(&https);
                    (Some(https), Some(tokio_rustls::TlsAcceptor::from(certs.server_config())))
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot take over the ingress's https socket");
                    return;
                }
            }
        }
        None => (None, None),
    };
    let suffix: Box<str> = format!(".{domain}").into_boxed_str();
    let trusted_proxies: Arc<[IpRange]> = config.trusted_proxies.clone().into();
    let wakes = Arc::new(Wakes::new(config.waker.clone(), config.wake_timeout, config.max_waiting_wakes));

    // `true` (or the sender dropped with this future) stops every thread.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each thread holds a sender; `recv` returns `None` once they have all finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let threads = config.threads.get();
    let stopping = Arc::new(AtomicBool::new(false));
    let (handoff, mut inboxes): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let balance = Arc::new(Balance { loads: (0..threads).map(|_| AtomicUsize::new(0)).collect(), handoff });
    let cap = Arc::new(Cap::new(config.max_connections));
    let (mut listener, mut https) = (Some(listener), https);
    for (i, inbox) in inboxes.drain(..).enumerate() {
        // The last thread takes the socket itself, the others a duplicate of it, so it is
        // closed once every thread stopped accepting.
        let last = i + 1 == threads;
        let sockets = Sockets { plain: share_socket(&mut listener, last), tls: share_socket(&mut https, last) };
        let shared = Arc::new(Shared {
            table: table.clone(),
            suffix: suffix.clone(),
            connect_timeout: config.connect_timeout,
            backend_timeout: config.backend_timeout,
            shard: i,
            stopping: stopping.clone(),
            trusted_proxies: trusted_proxies.clone(),
            h2_upstream: h2::upstream(config.connect_timeout),
            certs: certs.clone(),
            https_port,
            wakes: Arc::clone(&wakes),
        });
        let thread = Thread {
            shared,
            balance: balance.clone(),
            cap: cap.clone(),
            inbox,
            grace: config.shutdown_grace,
            tls: acceptor.clone(),
        };
        let (mut stop, done) = (stop_rx.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new().name(format!("ingress-{i}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start an ingress thread's runtime");
                    return;
                }
            };
            runtime.block_on(thread.run(sockets, async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }));
            drop(done);
        });
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start an ingress thread");
            // Never pick it as the least busy.
            balance.loads[i].store(usize::MAX / 2, Ordering::Relaxed);
        }
    }
    drop((done_tx, stop_rx, balance));

    shutdown.await;
    stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    // The threads give open connections `shutdown_grace` themselves.
    let _ = done_rx.recv().await;
}

/// Raises `listener`'s accept queue to [`BACKLOG`]: `listen(2)` on a socket that already
/// listens only changes its backlog.
fn deepen_backlog(listener: &std::net::TcpListener) {
    if let Err(err) = socket2::SockRef::from(listener).listen(BACKLOG) {
        tracing::warn!(error = %err, "cannot raise the ingress socket's backlog: bursts of new connections may wait");
    }
}

/// The listening sockets one thread accepts on.
struct Sockets {
    plain: Option<std::net::TcpListener>,
    tls: Option<std::net::TcpListener>,
}

/// `socket` itself when `last`, else a duplicate of it.
fn share_socket(socket: &mut Option<std::net::TcpListener>, last: bool) -> Option<std::net::TcpListener> {
    if last {
        return socket.take();
    }
    match socket.as_ref().map(std::net::TcpListener::try_clone) {
        Some(Ok(socket)) => Some(socket),
        Some(Err(err)) => {
            tracing::warn!(error = %err, "cannot duplicate the ingress socket");
            None
        }
        None => None,
    }
}

/// A new client connection, moved between threads, with its place under the cap, and
/// whether it came on the TLS listener.
type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit, bool);

/// The cap on open client connections, shared by every ingress thread.
struct Cap {
    /// One permit per connection that may be open; a connection holds one until it ends.
    open: Arc<Semaphore>,
    limit: usize,
    /// One permit per refused connection that may be answered at once.
    refusing: Arc<Semaphore>,
    /// When a refusal was last logged: a flood of them is said once a minute, not once each.
    warned: Mutex<Option<Instant>>,
}

impl Cap {
    fn new(limit: NonZeroUsize) -> Self {
        Cap {
            // A semaphore holds at most MAX_PERMITS; no machine has that many descriptors.
            open: Arc::new(Semaphore::new(limit.get().min(Semaphore::MAX_PERMITS))),
            limit: limit.get(),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            warned: Mutex::new(None),
        }
    }

    /// A place for a new connection, or `None` when the cap is reached: the connection
    /// is then refused (answered with a 503 page if that is affordable) and closed.
    fn admit(&self, stream: TcpStream, peer: SocketAddr, tls: bool) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Some((stream, permit));
        }
        self.warn(peer);
        if tls {
            return None;
        }
        if let Ok(refusing) = self.refusing.clone().try_acquire_owned() {
            tokio::spawn(async move {
                refuse(stream).await;
                drop(refusing);
            });
        }
        None
    }

    fn warn(&self, peer: SocketAddr) {
        let mut warned = self.warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            tracing::warn!(%peer, limit = self.limit,
                "too many open ingress connections: refusing new ones with 503 until some close ([ingress] max_connections)");
        }
    }
}

/// Answers a connection over the cap with its 503 page, then closes it after reading
/// what the client sent, all within [`REFUSAL_LINGER`].
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < REFUSAL_LINGER_BYTES {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Spreads client connections evenly over the ingress threads. Whichever thread accepts
/// a connection (the first awake, often the same one in a burst) passes it on when
/// another thread serves fewer; once placed, a connection stays on its thread.
struct Balance {
    /// Open client connections per thread.
    loads: Box<[AtomicUsize]>,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Balance {
    /// Which thread should serve a connection `shard` just accepted; counts it there.
    fn place(&self, shard: usize) -> usize {
        let mine = self.loads[shard].load(Ordering::Relaxed);
        let (least, load) = self
            .loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, load)| load)
            .unwrap_or((shard, mine));
        let to = if load + 1 < mine { least } else { shard };
        self.loads[to].fetch_add(1, Ordering::Relaxed);
        to
    }
}

/// Counts a connection on its thread until the connection ends.
struct Load(Arc<Balance>, usize);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.loads[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One ingress thread: its share of the work and how it gets connections.
struct Thread {
    shared: Arc<Shared>,
    balance: Arc<Balance>,
    cap: Arc<Cap>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    grace: Duration,
    /// The TLS side, when the ingress serves HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Thread {
    /// Accepts on `socket` (when there is one) and serves connections accepted here or
    /// handed over by other threads, until `stopped`.
    async fn run(mut self, sockets: Sockets, stopped: impl Future<Output = ()>) {
        let register = |socket: Option<std::net::TcpListener>| match socket.map(TcpListener::from_std) {
            Some(Ok(listener)) => Some(listener),
            Some(Err(err)) => {
                tracing::error!(error = %err, "cannot register the ingress socket");
                None
            }
            None => None,
        };
        let (listener, tls_listener) = (register(sockets.plain), register(sockets.tls));
        // Every connection moves its request head deadline now and then. Tokio wakes its
        // driver through an eventfd whenever a timer becomes the earliest one, which with
        // no other timer is often: one more write and one more epoll_wait each. A timer
        // that is always due sooner avoids that for the price of one wakeup a second.
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let shard = self.shared.shard;
        // Every connection task holds a receiver: `closed()` on the sender then tells
        // when the last one is gone.
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(stopped);
        loop {
            let (stream, peer, permit, tls) = tokio::select! {
                biased;
                () = &mut stopped => break,
                Some((stream, peer, permit, tls)) = self.inbox.recv() => match TcpStream::from_std(stream) {
                    Ok(stream) => (stream, peer, permit, tls),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot take over a client connection");
                        drop(Load(self.balance.clone(), shard));
                        continue;
                    }
                },
                (stream, peer, tls) = accept_either(listener.as_ref(), tls_listener.as_ref()) => {
                    // Counted before anything else is spent on it.
                    let Some((stream, permit)) = self.cap.admit(stream, peer, tls) else {
                        continue;
                    };
                    let to = self.balance.place(shard);
                    if to == shard {
                        (stream, peer, permit, tls)
                    } else {
                        match self.hand_over(to, stream, peer, permit, tls) {
                            Some((stream, permit)) => (stream, peer, permit, tls),
                            None => continue,
                        }
                    }
                }
            };
            let client_ip = peer.ip().to_canonical().to_string().into_boxed_str();
            let trusted = self.shared.trusted_proxies.iter().any(|range| range.contains(peer.ip()));
            let load = Load(self.balance.clone(), shard);
            let open = paastech_core::metrics::metrics().ingress.connection(tls);
            // Small request/response exchanges must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let (shared, stop) = (self.shared.clone(), stop_rx.clone());
            match self.tls.as_ref().filter(|_| tls) {
                None => {
                    let connection = forward::connection(shared, stream, client_ip, trusted, stop);
                    tokio::spawn(async move {
                        connection.await;
                        drop((load, permit, open));
                    });
                }
                Some(acceptor) => {
                    let connection = tls_connection(shared, acceptor.clone(), stream, client_ip, trusted, stop);
                    tokio::spawn(async move {
                        connection.await;
                        drop((load, permit, open));
                    });
                }
            }
        }
        drop(listener);
        drop(tls_listener);
        drop(self.inbox);
        drop(stop_rx);
        let _ = stop_tx.send(true);
        if tokio::time::timeout(self.grace, stop_tx.closed()).await.is_err() {
            tracing::warn!("ingress connections still open after the shutdown grace period");
        }
    }

    /// Passes a connection to thread `to`; gives it back, counted here, if that fails.
    fn hand_over(
        &self,
        to: usize,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        tls: bool,
    ) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        let shard = self.shared.shard;
        let back = match stream.into_std() {
            Ok(stream) => match self.balance.handoff[to].send((stream, peer, permit, tls)) {
                Ok(()) => return None,
                Err(mpsc::error::SendError((stream, _, permit, _))) => TcpStream::from_std(stream).map(|s| (s, permit)),
            },
            Err(err) => Err(err),
        };
        drop(Load(self.balance.clone(), to));
        match back {
            Ok(back) => {
                self.balance.loads[shard].fetch_add(1, Ordering::Relaxed);
                Some(back)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot hand over a client connection");
                None
            }
        }
    }
}

/// The next connection on `listener`; never, without one.
async fn accept(listener: Option<&TcpListener>) -> (TcpStream, SocketAddr) {
    match listener {
        Some(listener) => crate::server::accept(listener).await,
        None => std::future::pending().await,
    }
}

/// The next connection on either listener, and whether it came on `tls`.
async fn accept_either(plain: Option<&TcpListener>, tls: Option<&TcpListener>) -> (TcpStream, SocketAddr, bool) {
    if tls.is_none() {
        let (stream, peer) = accept(plain).await;
        return (stream, peer, false);
    }
    tokio::select! {
        (stream, peer) = accept(plain) => (stream, peer, false),
        (stream, peer) = accept(tls) => (stream, peer, true),
    }
}

/// Serves a connection of the TLS listener: the handshake (bounded in time, and given up
/// when the ingress stops), then HTTP/2 or HTTP/1.1 as the client and ALPN chose.
async fn tls_connection(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    client_ip: Box<str>,
    trusted: bool,
    mut stop: watch::Receiver<bool>,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, client = %client_ip, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %client_ip, "tls handshake timed out");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let alpn = stream.get_ref().1.alpn_protocol();
    if alpn == Some(ALPN_ACME_TLS) {
        // An ACME validation: the handshake was all of it (RFC 8737 §3).
        return;
    }
    if alpn == Some(ALPN_H2) {
        h2::connection(shared, stream, client_ip, stop).await;
    } else {
        forward::connection(shared, stream, client_ip, trusted, stop).await;
    }
}

/// `NAME` out of `NAME.<domain>[:port][.]`, or `None` when the host is not one label
/// under our domain. `suffix` is `.<domain>` in lowercase.
pub(crate) fn project_of<'a>(host: &'a str, suffix: &str) -> Option<&'a str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let (name, tail) = host.split_at_checked(host.len().checked_sub(suffix.len())?)?;
    if name.is_empty() || name.contains('.') || !tail.eq_ignore_ascii_case(suffix) {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_of_host() {
        let s = ".apps.example";
        let cases: &[(&str, Option<&str>)] = &[
            ("blog.apps.example", Some("blog")),
            ("blog.apps.example:8000", Some("blog")),
            ("BLOG.Apps.Example", Some("BLOG")),
            ("blog.apps.example.", Some("blog")),
            ("blog.apps.example.:80", Some("blog")),
            ("apps.example", None),
            (".apps.example", None),
            ("a.b.apps.example", None),
            ("blog.other.example", None),
            ("blog.apps.example:x", None),
            ("[::1]:8000", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(project_of(host, s), *want, "host {host:?}");
        }
    }

    #[test]
    fn the_refusal_page_says_its_length() {
        let page = std::str::from_utf8(TOO_MANY_CONNECTIONS).expect("ascii");
        let (head, body) = page.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("\r\nRetry-After: 1\r\n"), "{head}");
    }

    #[test]
    fn connections_spread_over_threads() {
        let (handoff, _inboxes): (Vec<_>, Vec<_>) = (0..3).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance { loads: (0..3).map(|_| AtomicUsize::new(0)).collect(), handoff });
        // Thread 0 accepts a burst: it keeps one more than the others at most.
        let placed: Vec<usize> = (0..7).map(|_| balance.place(0)).collect();
        assert_eq!(placed, vec![0, 0, 1, 2, 0, 1, 2]);
        let loads = |b: &Balance| b.loads.iter().map(|l| l.load(Ordering::Relaxed)).collect::<Vec<_>>();
        assert_eq!(loads(&balance), vec![3, 2, 2]);
        // A connection ending on thread 2 makes it the next pick.
        drop(Load(balance.clone(), 2));
        drop(Load(balance.clone(), 2));
        assert_eq!(balance.place(0), 2);
        assert_eq!(loads(&balance), vec![3, 2, 1]);
    }
}
