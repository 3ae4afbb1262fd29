//! The route table: which backends serve which project, round-robin picking, and the
//! in-flight accounting that lets a deployment switch drain old instances.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use paastech_core::HttpsPolicy;
use paastech_core::metrics::{ProjectRequests, metrics};
use tokio::sync::Notify;

use crate::static_site::StaticSite;
use crate::upstream::IdleConns;

/// How long a backend that could not be connected to is passed over by `pick` (nginx's
/// `fail_timeout` is 10 s). Long enough that a dead address costs a failed connect (up to
/// the connect timeout, on an unreachable node) only once in this time rather than on
/// every n-th request, while the route follower takes 10–15 s to take it out of the
/// table; short enough that an instance that only restarted gets traffic again soon.
pub(crate) const SKIP_AFTER_CONNECT_FAILURE: Duration = Duration::from_secs(5);

/// Milliseconds since the first call, at least 1: the clock of the connect-failure marks,
/// which fit an atomic where an `Instant` does not.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// One backend (a running `web` instance) as the ingress sees it.
///
/// Handles are cheap to clone and compare by identity of the instance they track: the
/// same address registered again through [`RouteTable::set_backends`] keeps its handle
/// (and its in-flight count), so draining never misses a request.
#[derive(Clone)]
pub struct Backend(Arc<BackendInner>);

struct BackendInner {
    addr: SocketAddr,
    /// The project it serves (its table key, lowercase): where a request goes next when
    /// this backend cannot be reached.
    project: Box<str>,
    /// Until when (`now_ms`) `pick` passes this backend over, after a connect to it failed;
    /// 0 when it is not marked. An atomic, shared by every ingress thread: a pick reads it
    /// without a lock, and reads the clock only when it is set.
    skip_until: AtomicU64,
    /// Keep-alive connections to this backend, closed when the backend is forgotten.
    conns: IdleConns,
    in_flight: AtomicUsize,
    /// Woken whenever `in_flight` drops to zero.
    idle_notify: Notify,
    /// Set when this backend is the platform's static file server: the ingress answers
    /// from the site's files instead of forwarding (`static_serve.rs`).
    site: OnceLock<Arc<StaticSite>>,
    /// Where its project's requests are counted.
    requests: Arc<ProjectRequests>,
    /// Its pool's `last_request`: written when its last request in flight ends, so that a
    /// project's idle time counts from the end of its last request, not its start (a wake
    /// whose held requests took longer than the idle time must not be put to sleep again
    /// the moment they are answered).
    last_request: Arc<AtomicU64>,
}

impl Backend {
    fn new(addr: SocketAddr, project: &str, requests: &Arc<ProjectRequests>, last_request: &Arc<AtomicU64>) -> Self {
        Backend(Arc::new(BackendInner {
            addr,
            project: project.into(),
            requests: Arc::clone(requests),
            last_request: Arc::clone(last_request),
            skip_until: AtomicU64::new(0),
            conns: IdleConns::default(),
            in_flight: AtomicUsize::new(0),
            idle_notify: Notify::new(),
            site: OnceLock::new(),
        }))
    }

    /// The static site this backend serves, when the ingress answers for it.
    pub(crate) fn site(&self) -> Option<&Arc<StaticSite>> {
        self.0.site.get()
    }

    /// Answers this backend's requests from `site` from now on. The same backend (one
    /// process on one address) always serves the same site, so the first call wins.
    pub(crate) fn serve_from(&self, site: Arc<StaticSite>) {
        let _ = self.0.site.set(site);
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Requests (and upgraded connections) currently being served by this backend.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn conns(&self) -> &IdleConns {
        &self.0.conns
    }

    /// The project this backend serves (lowercase).
    pub(crate) fn project(&self) -> &str {
        &self.0.project
    }

    /// Where the requests of this backend's project are counted.
    pub(crate) fn requests(&self) -> &ProjectRequests {
        &self.0.requests
    }

    pub(crate) fn requests_handle(&self) -> &Arc<ProjectRequests> {
        &self.0.requests
    }

    /// A connect to this backend failed: `pick` passes it over for
    /// [`SKIP_AFTER_CONNECT_FAILURE`].
    pub(crate) fn connect_failed(&self) {
        let until = now_ms().saturating_add(SKIP_AFTER_CONNECT_FAILURE.as_millis() as u64);
        self.0.skip_until.store(until, Ordering::Relaxed);
    }

    /// A connect to this backend succeeded: it is picked again. A load, and a store only
    /// when it was marked, so the shared cache line is not written on every connect.
    pub(crate) fn connected(&self) {
        if self.0.skip_until.load(Ordering::Relaxed) != 0 {
            self.0.skip_until.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `pick` passes this backend over now. The clock is read only when a mark is
    /// set; an expired mark is cleared, so the clock is not read again for it.
    fn skipped(&self) -> bool {
        let until = self.0.skip_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if until > now_ms() {
            return true;
        }
        let _ = self.0.skip_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Resolves once nothing is in flight to this backend.
    async fn idle(&self) {
        loop {
            let notified = self.0.idle_notify.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a drop to zero between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("addr", &self.0.addr).field("in_flight", &self.in_flight()).finish()
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Backend {}

/// Counts one request as in flight to a backend until dropped: the proxy keeps it alive
/// for the whole exchange, including the streamed response body and upgraded tunnels.
pub(crate) struct InFlight(Backend);

impl InFlight {
    fn start(backend: &Backend) -> Self {
        backend.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(backend.clone())
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            touch(&self.0.0.last_request);
            self.0.0.idle_notify.notify_waiters();
        }
    }
}

struct Pool {
    backends: Vec<Backend>,
    next: AtomicUsize,
    /// The project's HTTPS policy, here so that the lookup that finds the backends finds
    /// it too, under the same lock.
    https: HttpsPolicy,
    /// Where the project's requests are counted.
    requests: Arc<ProjectRequests>,
    /// Stopped by its owner (`paastech stop`): with no backends, it says so.
    stopped: bool,
    /// Asleep (`paastech sleep`): with no backends, a request is held while it wakes.
    asleep: bool,
    /// The project's name (its key): what a held request asks to wake.
    name: Arc<str>,
    /// When (`now_ms`) it was last asked for, or last given backends: what the sleeper
    /// reads. An atomic shared by every ingress thread, written without a lock.
    last_request: Arc<AtomicU64>,
}

impl Pool {
    /// Records a request now. At most one write per [`TOUCH_EVERY_MS`], so a busy route's
    /// shared cache line is not written by every request of every thread.
    #[inline]
    fn touch(&self) {
        touch(&self.last_request);
    }
}

/// Writes now into a pool's `last_request`, unless it is already less than
/// [`TOUCH_EVERY_MS`] old.
#[inline]
fn touch(last_request: &AtomicU64) {
    let now = now_ms();
    if now.saturating_sub(last_request.load(Ordering::Relaxed)) >= TOUCH_EVERY_MS {
        last_request.store(now, Ordering::Relaxed);
    }
}

/// How stale a route's last-request time may be: far below any idle time (a minute).
const TOUCH_EVERY_MS: u64 = 100;

/// What a lookup found for a project, with the project's HTTPS policy when it is one.
pub(crate) enum Pick {
    UnknownProject,
    NoBackends(HttpsPolicy, Arc<ProjectRequests>),
    /// No backends because its owner stopped it.
    Stopped(HttpsPolicy, Arc<ProjectRequests>),
    /// No backends because it sleeps: the request waits while the project named wakes.
    Asleep(HttpsPolicy, Arc<ProjectRequests>, Arc<str>),
    Backend(InFlight, HttpsPolicy),
}

impl Pick {
    /// The HTTPS policy of the project found, if any.
    pub(crate) fn https(&self) -> Option<HttpsPolicy> {
        match self {
            Pick::UnknownProject => None,
            Pick::NoBackends(https, _)
            | Pick::Stopped(https, _)
            | Pick::Asleep(https, _, _)
            | Pick::Backend(_, https) => Some(*https),
        }
    }

    /// Where this request is counted: its project's series, or those of requests no
    /// project was found for.
    pub(crate) fn requests(&self) -> &ProjectRequests {
        match self {
            Pick::UnknownProject => unrouted(),
            Pick::NoBackends(_, requests) | Pick::Stopped(_, requests) | Pick::Asleep(_, requests, _) => requests,
            Pick::Backend(in_flight, _) => in_flight.backend().requests(),
        }
    }
}

/// Where requests no project was found for are counted (`project=""`).
pub(crate) fn unrouted() -> &'static ProjectRequests {
    static UNROUTED: LazyLock<Arc<ProjectRequests>> = LazyLock::new(|| metrics().ingress.project(""));
    &UNROUTED
}

/// Projects and the custom domains that lead to them, under one lock, so a lookup by
/// domain sees a consistent pair.
#[derive(Default)]
struct Routes {
    pools: HashMap<Box<str>, Pool>,
    /// Custom domain (lowercase, no trailing dot) → project.
    domains: HashMap<Box<str>, Box<str>>,
}

/// Which backends serve which project, and which custom domains lead to which project.
/// Cheap to clone (all clones share one table) and safe to use from any thread; the lock
/// is never held across an await.
#[derive(Clone, Default)]
pub struct RouteTable {
    inner: Arc<RwLock<Routes>>,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.read();
        let mut d = f.debug_map();
        for (name, pool) in routes.pools.iter() {
            d.entry(name, &pool.backends);
        }
        for (domain, project) in routes.domains.iter() {
            d.entry(domain, project);
        }
        d.finish()
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock only means a panic happened while holding it; every write below
    // leaves the map consistent, so keep serving rather than take the ingress down.
    fn read(&self) -> RwLockReadGuard<'_, Routes> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Routes> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `backends` the whole set serving `project` (atomically: every request after
    /// this call goes to the new set). An empty set keeps the project known, so it answers
    /// 503 "no live deployment" rather than 404.
    ///
    /// Returns the handles of the previous backends that are not in the new set: pass them
    /// to [`drain`] before stopping those instances. Addresses present in both sets keep
    /// their handle and are not returned. Duplicate addresses are collapsed.
    pub fn set_backends(&self, project: &str, backends: Vec<SocketAddr>) -> Vec<Backend> {
        let key = project.to_ascii_lowercase();
        let mut routes = self.write();
        let (old, https, stopped, asleep, requests, last_request) = match routes.pools.remove(key.as_str()) {
            Some(pool) => (pool.backends, pool.https, pool.stopped, pool.asleep, pool.requests, pool.last_request),
            None => (
                Vec::new(),
                HttpsPolicy::default(),
                false,
                false,
                metrics().ingress.project(&key),
                Arc::new(AtomicU64::new(0)),
            ),
        };
        // Backends given count as a request: an app just deployed or woken gets its whole
        // idle time before it sleeps.
        if !backends.is_empty() {
            last_request.store(now_ms(), Ordering::Relaxed);
        }
        let mut new = Vec::with_capacity(backends.len());
        for addr in backends {
            if new.iter().any(|b: &Backend| b.addr() == addr) {
                continue;
            }
            let handle = old
                .iter()
                .find(|b| b.addr() == addr)
                .cloned()
                .unwrap_or_else(|| Backend::new(addr, &key, &requests, &last_request));
            new.push(handle);
        }
        let removed = old.into_iter().filter(|b| !new.iter().any(|n| n.addr() == b.addr())).collect();
        let name: Arc<str> = Arc::from(key.as_str());
        let pool =
            Pool { backends: new, next: AtomicUsize::new(0), https, stopped, asleep, name, requests, last_request };
        routes.pools.insert(key.into_boxed_str(), pool);
        removed
    }

    /// Forgets a project and its custom domains (they answer 404 afterwards). Returns its
    /// backends, to drain.
    pub fn remove(&self, project: &str) -> Vec<Backend> {
        let key = project.to_ascii_lowercase();
        metrics().ingress.forget(&key);
        let mut routes = self.write();
        routes.domains.retain(|_, p| **p != *key);
        routes.pools.remove(key.as_str()).map(|p| p.backends).unwrap_or_default()
    }

    /// The backends serving `project`; `None` when the project is unknown.
    pub fn backends(&self, project: &str) -> Option<Vec<Backend>> {
        let key = project.to_ascii_lowercase();
        self.read().pools.get(key.as_str()).map(|p| p.backends.clone())
    }

    /// Makes `domains` the whole set of custom domains that lead to `project` (atomically).
    /// Its other domains answer 404 afterwards; a domain another project had moves here.
    pub fn set_domains<S: AsRef<str>>(&self, project: &str, domains: &[S]) {
        let key: Box<str> = project.to_ascii_lowercase().into_boxed_str();
        let mut routes = self.write();
        routes.domains.retain(|_, p| *p != key);
        for domain in domains {
            let domain = domain.as_ref();
            let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
            routes.domains.insert(domain.into_boxed_str(), key.clone());
        }
    }

    /// Makes `policy` the HTTPS policy of `project`, for its name and custom domains
    /// alike. A project the table does not know is left unknown: its policy comes with its
    /// first [`Self::set_backends`] call from the orchestrator, which sets it after.
    pub fn set_https(&self, project: &str, policy: HttpsPolicy) {
        let key = project.to_ascii_lowercase();
        if let Some(pool) = self.write().pools.get_mut(key.as_str()) {
            pool.https = policy;
        }
    }

    /// Marks `project` stopped (or not): while it has no backends, a request to it picks
    /// [`Pick::Stopped`] instead of [`Pick::NoBackends`]. Kept across
    /// [`Self::set_backends`]; a project the table does not know is left unknown, as for
    /// [`Self::set_https`].
    pub fn set_stopped(&self, project: &str, stopped: bool) {
        let key = project.to_ascii_lowercase();
        if let Some(pool) = self.write().pools.get_mut(key.as_str()) {
            pool.stopped = stopped;
        }
    }

    /// Marks `project` asleep (or not): while it has no backends, a request to it picks
    /// [`Pick::Asleep`] (held while it wakes). Kept across [`Self::set_backends`]; a
    /// project the table does not know is left unknown, as for [`Self::set_stopped`].
    pub fn set_asleep(&self, project: &str, asleep: bool) {
        let key = project.to_ascii_lowercase();
        if let Some(pool) = self.write().pools.get_mut(key.as_str()) {
            pool.asleep = asleep;
        }
    }

    /// How long `project` has had no request: since its last one ended, or since it was
    /// last given backends, whichever is later; zero while a request to it is in flight.
    /// `None` for a project the table does not know.
    pub fn idle_for(&self, project: &str) -> Option<Duration> {
        let key = project.to_ascii_lowercase();
        let routes = self.read();
        let pool = routes.pools.get(key.as_str())?;
        if pool.backends.iter().any(|b| b.in_flight() > 0) {
            return Some(Duration::ZERO);
        }
        let last = pool.last_request.load(Ordering::Relaxed);
        Some(Duration::from_millis(now_ms().saturating_sub(last)))
    }

    /// The project a custom domain leads to.
    pub fn project_of_domain(&self, domain: &str) -> Option<String> {
        let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
        self.read().domains.get(domain.as_str()).map(|p| p.to_string())
    }

    /// Picks the next backend of a project, round-robin, and counts the request as in
    /// flight. `project` must already be lowercase.
    ///
    /// The count is taken while the read lock is held: `set_backends` needs the write
    /// lock, so once it returns, every request routed to an old backend is already counted
    /// and `drain` cannot miss it.
    pub(crate) fn pick(&self, project: &str) -> Pick {
        let routes = self.read();
        let Some(pool) = routes.pools.get(project) else {
            return Pick::UnknownProject;
        };
        Self::pick_in(pool)
    }

    /// Like [`Self::pick`], for a request whose `Host` (with or without a port and a
    /// trailing dot, any case) is one of a project's custom domains.
    pub(crate) fn pick_by_host(&self, host: &str) -> Pick {
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Pick::UnknownProject,
            None => host,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        // Stored names are lowercase; only a Host that is not pays for a copy.
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let routes = self.read();
        let Some(pool) = routes.domains.get(host).and_then(|project| routes.pools.get(project)) else {
            return Pick::UnknownProject;
        };
        Self::pick_in(pool)
    }

    fn pick_in(pool: &Pool) -> Pick {
        pool.touch();
        let n = pool.backends.len();
        if n == 0 {
            let requests = Arc::clone(&pool.requests);
            return if pool.stopped {
                Pick::Stopped(pool.https, requests)
            } else if pool.asleep {
                Pick::Asleep(pool.https, requests, Arc::clone(&pool.name))
            } else {
                Pick::NoBackends(pool.https, requests)
            };
        }
        let i = if n == 1 {
            // Alone, it is tried whatever its mark: better to try than to refuse.
            0
        } else {
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % n;
            if pool.backends[i].skipped() {
                // The next one that is not passed over; when all are, this one anyway.
                (1..n).map(|k| (i + k) % n).find(|&j| !pool.backends[j].skipped()).unwrap_or(i)
            } else {
                i
            }
        };
        Pick::Backend(InFlight::start(&pool.backends[i]), pool.https)
    }

    /// Another backend of `project` for a request whose connect failed on each address in
    /// `tried`: the next one round-robin that is not in `tried`, preferring one that is not
    /// passed over. `None` when every backend of the project was tried (or the project is
    /// gone). Looked up anew, so a backend that arrived meanwhile counts.
    pub(crate) fn pick_other(&self, project: &str, tried: &[SocketAddr]) -> Option<InFlight> {
        let routes = self.read();
        let pool = routes.pools.get(project)?;
        let n = pool.backends.len();
        if n == 0 {
            return None;
        }
        // Read, not advanced: advancing it here would move the next request on with this
        // one, and lock-step every request onto the failed backend again.
        let start = pool.next.load(Ordering::Relaxed);
        let untried = (0..n).map(|k| &pool.backends[(start + k) % n]).filter(|b| !tried.contains(&b.addr()));
        let mut fallback = None;
        for b in untried {
            if !b.skipped() {
                return Some(InFlight::start(b));
            }
            fallback = fallback.or(Some(b));
        }
        fallback.map(InFlight::start)
    }
}

/// Waits until every request in flight to `backends` has finished (responses fully
/// sent, upgraded connections closed), or `timeout` passes. Returns `true` when they all
/// went idle, `false` on timeout.
///
/// Call it after [`RouteTable::set_backends`] moved traffic away: no new request reaches
/// those backends, so the count only goes down.
pub async fn drain(backends: &[Backend], timeout: Duration) -> bool {
    let all_idle = async {
        for b in backends {
            b.idle().await;
        }
    };
    tokio::time::timeout(timeout, all_idle).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pick_addr(t: &RouteTable, p: &str) -> Option<SocketAddr> {
        match t.pick(p) {
            Pick::Backend(g, _) => Some(g.backend().addr()),
            _ => None,
        }
    }

    #[test]
    fn round_robin_and_states() {
        let t = RouteTable::new();
        assert!(matches!(t.pick("blog"), Pick::UnknownProject));
        t.set_backends("Blog", vec![]);
        assert!(matches!(t.pick("blog"), Pick::NoBackends(..)));
        t.set_backends("blog", vec![addr(1), addr(2), addr(1)]);
        let seq: Vec<_> = (0..4).filter_map(|_| pick_addr(&t, "blog")).collect();
        assert_eq!(seq, vec![addr(1), addr(2), addr(1), addr(2)]);
        assert_eq!(t.remove("BLOG").len(), 2);
        assert!(t.backends("blog").is_none());
    }

    #[test]
    fn a_stopped_project_says_so_while_it_has_no_backends() {
        let t = RouteTable::new();
        t.set_stopped("blog", true);
        assert!(matches!(t.pick("blog"), Pick::UnknownProject), "an unknown project stays unknown");
        t.set_backends("blog", vec![]);
        t.set_domains("blog", &["www.example.com"]);
        assert!(matches!(t.pick("blog"), Pick::NoBackends(..)));
        t.set_stopped("Blog", true);
        assert!(matches!(t.pick("blog"), Pick::Stopped(..)));
        assert!(matches!(t.pick_by_host("www.example.com"), Pick::Stopped(..)), "its domains too");
        t.set_backends("blog", vec![]);
        assert!(matches!(t.pick("blog"), Pick::Stopped(..)), "kept across a switch");
        t.set_backends("blog", vec![addr(1)]);
        assert_eq!(pick_addr(&t, "blog"), Some(addr(1)), "a backend serves whatever the mark");
        t.set_stopped("blog", false);
        t.set_backends("blog", vec![]);
        assert!(matches!(t.pick("blog"), Pick::NoBackends(..)));
    }

    #[test]
    fn an_asleep_project_is_held_while_it_has_no_backends() {
        let t = RouteTable::new();
        t.set_asleep("blog", true);
        assert!(matches!(t.pick("blog"), Pick::UnknownProject), "an unknown project stays unknown");
        t.set_backends("blog", vec![addr(1)]);
        t.set_domains("blog", &["www.example.com"]);
        t.set_asleep("Blog", true);
        assert_eq!(pick_addr(&t, "blog"), Some(addr(1)), "its backends serve until they are taken out");
        t.set_backends("blog", vec![]);
        match t.pick("blog") {
            Pick::Asleep(_, _, name) => assert_eq!(&*name, "blog"),
            _ => panic!("expected asleep"),
        }
        assert!(matches!(t.pick_by_host("www.example.com"), Pick::Asleep(..)), "its domains too");
        t.set_stopped("blog", true);
        assert!(matches!(t.pick("blog"), Pick::Stopped(..)), "stopped says more than asleep");
        t.set_stopped("blog", false);
        t.set_backends("blog", vec![addr(2)]);
        t.set_asleep("blog", false);
        assert_eq!(pick_addr(&t, "blog"), Some(addr(2)));
        t.set_backends("blog", vec![]);
        assert!(matches!(t.pick("blog"), Pick::NoBackends(..)));
    }

    #[test]
    fn idle_time_counts_from_the_last_request_or_switch_and_is_zero_in_flight() {
        let t = RouteTable::new();
        assert_eq!(t.idle_for("blog"), None);
        t.set_backends("blog", vec![addr(1)]);
        let last = |t: &RouteTable| t.read().pools.get("blog").map(|p| p.last_request.load(Ordering::Relaxed));
        let at_switch = last(&t).expect("known");
        assert!(t.idle_for("blog").expect("known") < Duration::from_secs(1), "a switch counts as a request");
        std::thread::sleep(Duration::from_millis(300));
        assert!(t.idle_for("blog").expect("known") >= Duration::from_millis(250));
        assert_eq!(last(&t), Some(at_switch), "reading it changes nothing");
        let guard = match t.pick("blog") {
            Pick::Backend(g, _) => g,
            _ => panic!("expected a backend"),
        };
        assert_eq!(t.idle_for("blog"), Some(Duration::ZERO), "a request in flight");
        // A request that lasts longer than the idle time so far: idle counts from its end.
        std::thread::sleep(Duration::from_millis(300));
        drop(guard);
        assert!(t.idle_for("blog").expect("known") < Duration::from_millis(250), "counted from the end of the request");
        // Kept across a switch that gives no backends (a sleep).
        let before = last(&t);
        t.set_backends("blog", vec![]);
        assert_eq!(last(&t), before);
    }

    #[test]
    fn set_backends_returns_only_removed_and_keeps_counts() {
        let t = RouteTable::new();
        t.set_backends("a", vec![addr(1), addr(2)]);
        let guard = match t.pick("a") {
            Pick::Backend(g, _) => g,
            _ => panic!("expected a backend"),
        };
        assert_eq!(guard.backend().addr(), addr(1));
        let removed = t.set_backends("a", vec![addr(1), addr(3)]);
        assert_eq!(removed.iter().map(Backend::addr).collect::<Vec<_>>(), vec![addr(2)]);
        let kept = t.backends("a").expect("known");
        assert_eq!(kept[0].in_flight(), 1, "kept handle keeps its count");
        drop(guard);
        assert_eq!(kept[0].in_flight(), 0);
    }

    #[test]
    fn custom_domains_lead_to_their_project_until_removed() {
        let t = RouteTable::new();
        t.set_backends("blog", vec![addr(1)]);
        assert!(matches!(t.pick_by_host("www.example.com"), Pick::UnknownProject));
        t.set_domains("blog", &["www.example.com", "Example.ORG."]);
        for host in ["www.example.com", "WWW.Example.com:8000", "www.example.com.", "example.org", "example.org.:80"] {
            assert_eq!(pick_by_host_addr(&t, host), Some(addr(1)), "{host:?}");
        }
        for host in ["example.com", "www.example.com:x", "blog", "a.www.example.com", ""] {
            assert!(matches!(t.pick_by_host(host), Pick::UnknownProject), "{host:?}");
        }
        // A domain of a project with no live deployment answers like the project.
        t.set_domains("shop", &["shop.example.net"]);
        assert!(matches!(t.pick_by_host("shop.example.net"), Pick::UnknownProject));
        t.set_backends("shop", vec![]);
        assert!(matches!(t.pick_by_host("shop.example.net"), Pick::NoBackends(..)));
        // Setting the set again drops what is not in it.
        t.set_domains("blog", &["example.org"]);
        assert!(matches!(t.pick_by_host("www.example.com"), Pick::UnknownProject));
        assert_eq!(t.project_of_domain("example.org").as_deref(), Some("blog"));
        // Forgetting the project forgets its domains, and only its.
        t.remove("blog");
        assert!(matches!(t.pick_by_host("example.org"), Pick::UnknownProject));
        assert_eq!(t.project_of_domain("example.org"), None);
        assert_eq!(t.project_of_domain("shop.example.net").as_deref(), Some("shop"));
    }

    fn pick_by_host_addr(t: &RouteTable, host: &str) -> Option<SocketAddr> {
        match t.pick_by_host(host) {
            Pick::Backend(g, _) => Some(g.backend().addr()),
            _ => None,
        }
    }

    #[test]
    fn a_backend_whose_connect_failed_is_passed_over_until_it_connects() {
        let t = RouteTable::new();
        t.set_backends("a", vec![addr(1), addr(2), addr(3)]);
        let backends = t.backends("a").expect("known");
        backends[1].connect_failed();
        let seq: Vec<_> = (0..6).filter_map(|_| pick_addr(&t, "a")).collect();
        assert_eq!(seq, vec![addr(1), addr(3), addr(3), addr(1), addr(3), addr(3)]);
        // The mark stays with the address when the set is given again.
        t.set_backends("a", vec![addr(2), addr(3)]);
        let seq: Vec<_> = (0..4).filter_map(|_| pick_addr(&t, "a")).collect();
        assert!(!seq.contains(&addr(2)), "{seq:?}");
        backends[1].connected();
        let seq: Vec<_> = (0..4).filter_map(|_| pick_addr(&t, "a")).collect();
        assert_eq!(seq.iter().filter(|a| **a == addr(2)).count(), 2, "{seq:?}");
    }

    #[test]
    fn when_every_backend_is_passed_over_they_are_picked_as_before() {
        let t = RouteTable::new();
        t.set_backends("a", vec![addr(1), addr(2)]);
        for b in t.backends("a").expect("known") {
            b.connect_failed();
        }
        let seq: Vec<_> = (0..4).filter_map(|_| pick_addr(&t, "a")).collect();
        assert_eq!(seq, vec![addr(1), addr(2), addr(1), addr(2)]);
        t.set_backends("b", vec![addr(1)]);
        t.backends("b").expect("known")[0].connect_failed();
        assert_eq!(pick_addr(&t, "b"), Some(addr(1)), "a lone backend is tried anyway");
    }

    #[test]
    fn a_mark_lasts_the_skip_time() {
        let t = RouteTable::new();
        t.set_backends("a", vec![addr(1)]);
        let b = &t.backends("a").expect("known")[0];
        b.connect_failed();
        assert!(b.skipped());
        // As if the mark had been set longer ago than the skip time.
        b.0.skip_until.store(now_ms(), Ordering::Relaxed);
        assert!(!b.skipped());
        assert_eq!(b.0.skip_until.load(Ordering::Relaxed), 0, "an expired mark is cleared");
    }

    #[test]
    fn another_backend_is_each_untried_one_once_then_none() {
        let t = RouteTable::new();
        t.set_backends("Shop", vec![addr(1), addr(2), addr(3)]);
        let backends = t.backends("shop").expect("known");
        assert_eq!(backends[0].project(), "shop");
        backends[2].connect_failed();
        let mut tried = vec![addr(1)];
        // The one not passed over first, then the marked one: each tried once.
        let next = t.pick_other("shop", &tried).expect("another").backend().addr();
        assert_eq!(next, addr(2));
        tried.push(next);
        let next = t.pick_other("shop", &tried).expect("the marked one, rather than none").backend().addr();
        assert_eq!(next, addr(3));
        tried.push(next);
        assert!(t.pick_other("shop", &tried).is_none());
        assert!(t.pick_other("gone", &[]).is_none());
    }

    #[test]
    fn another_backend_leaves_the_round_robin_where_it_was() {
        let t = RouteTable::new();
        t.set_backends("a", vec![addr(1), addr(2)]);
        // Whatever the marks (none here), a request retried on 2 is not followed by the
        // next request on 1 again, which would send every request to a dead 1 first.
        assert_eq!(pick_addr(&t, "a"), Some(addr(1)));
        assert_eq!(t.pick_other("a", &[addr(1)]).expect("another").backend().addr(), addr(2));
        assert_eq!(pick_addr(&t, "a"), Some(addr(2)));
        assert_eq!(pick_addr(&t, "a"), Some(addr(1)));
    }

    #[tokio::test]
    async fn drain_waits_for_guards() {
        let t = RouteTable::new();
        t.set_backends("a", vec![addr(1)]);
        let guard = match t.pick("a") {
            Pick::Backend(g, _) => g,
            _ => panic!("expected a backend"),
        };
        let old = t.set_backends("a", vec![addr(2)]);
        assert!(!drain(&old, Duration::from_millis(50)).await);
        let waiter = tokio::spawn(async move { drain(&old, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(guard);
        assert!(waiter.await.expect("join"));
    }
}
