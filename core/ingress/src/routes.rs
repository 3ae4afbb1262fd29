//! The route table: which backends serve which project, round-robin picking, and the
//! in-flight accounting that lets a deployment switch drain old instances.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use paastech_core::HttpsPolicy;
use tokio::sync::Notify;

use crate::static_site::StaticSite;
use crate::upstream::IdleConns;

/// One backend (a running `web` instance) as the ingress sees it.
///
/// Handles are cheap to clone and compare by identity of the instance they track: the
/// same address registered again through [`RouteTable::set_backends`] keeps its handle
/// (and its in-flight count), so draining never misses a request.
#[derive(Clone)]
pub struct Backend(Arc<BackendInner>);

struct BackendInner {
    addr: SocketAddr,
    /// Keep-alive connections to this backend, closed when the backend is forgotten.
    conns: IdleConns,
    in_flight: AtomicUsize,
    /// Woken whenever `in_flight` drops to zero.
    idle_notify: Notify,
    /// Set when this backend is the platform's static file server: the ingress answers
    /// from the site's files instead of forwarding (`static_serve.rs`).
    site: OnceLock<Arc<StaticSite>>,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Backend(Arc::new(BackendInner {
            addr,
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
}

/// What a lookup found for a project, with the project's HTTPS policy when it is one.
pub(crate) enum Pick {
    UnknownProject,
    NoBackends(HttpsPolicy),
    Backend(InFlight, HttpsPolicy),
}

impl Pick {
    /// The HTTPS policy of the project found, if any.
    pub(crate) fn https(&self) -> Option<HttpsPolicy> {
        match self {
            Pick::UnknownProject => None,
            Pick::NoBackends(https) | Pick::Backend(_, https) => Some(*https),
        }
    }
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
        let (old, https) = routes.pools.remove(key.as_str()).map(|p| (p.backends, p.https)).unwrap_or_default();
        let mut new = Vec::with_capacity(backends.len());
        for addr in backends {
            if new.iter().any(|b: &Backend| b.addr() == addr) {
                continue;
            }
            let handle = old.iter().find(|b| b.addr() == addr).cloned().unwrap_or_else(|| Backend::new(addr));
            new.push(handle);
        }
        let removed = old.into_iter().filter(|b| !new.iter().any(|n| n.addr() == b.addr())).collect();
        routes.pools.insert(key.into_boxed_str(), Pool { backends: new, next: AtomicUsize::new(0), https });
        removed
    }

    /// Forgets a project and its custom domains (they answer 404 afterwards). Returns its
    /// backends, to drain.
    pub fn remove(&self, project: &str) -> Vec<Backend> {
        let key = project.to_ascii_lowercase();
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
        let n = pool.backends.len();
        if n == 0 {
            return Pick::NoBackends(pool.https);
        }
        let i = if n == 1 { 0 } else { pool.next.fetch_add(1, Ordering::Relaxed) % n };
        Pick::Backend(InFlight::start(&pool.backends[i]), pool.https)
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
        assert!(matches!(t.pick("blog"), Pick::NoBackends(_)));
        t.set_backends("blog", vec![addr(1), addr(2), addr(1)]);
        let seq: Vec<_> = (0..4).filter_map(|_| pick_addr(&t, "blog")).collect();
        assert_eq!(seq, vec![addr(1), addr(2), addr(1), addr(2)]);
        assert_eq!(t.remove("BLOG").len(), 2);
        assert!(t.backends("blog").is_none());
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
        assert!(matches!(t.pick_by_host("shop.example.net"), Pick::NoBackends(_)));
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
