//! The platform's own figures, exposed to Prometheus on `GET /metrics` (OpenMetrics text).
//!
//! One process-wide registry: the ingress, the orchestrator, the SSH server and the hook
//! host each count into it through [`metrics()`], and the API renders it with [`encode`].
//! This is the only module that knows Prometheus; the others call plain methods.
//!
//! The ingress's per-request path is the hot one: a project's series are looked up once
//! (a [`ProjectRequests`] handle the route table keeps beside the project's backends) and
//! each request then costs a few atomic adds and one short lock (its histogram).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::drivers::{InstanceState, Node};

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every figure of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The registry in the OpenMetrics text format (which Prometheus scrapes).
pub fn encode() -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabel {
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    project: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabel {
    scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: String,
}

/// Makes each series of a histogram family with the family's buckets.
#[derive(Clone)]
struct Buckets(fn() -> Histogram);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

/// 0.5 ms to ~16 s: a request through the ingress.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 0.1 s to ~27 min: a build or a deploy.
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// 1 ms to ~33 s: a WASM hook call.
fn hook_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type Counters<L> = Family<L, Counter<u64, AtomicU64>>;
type Histograms<L> = Family<L, Histogram, Buckets>;

pub struct Metrics {
    registry: Registry,
    pub ingress: IngressMetrics,
    deploys: Counters<OutcomeLabel>,
    deploy_seconds: Histograms<OutcomeLabel>,
    builds: Counters<OutcomeLabel>,
    webhook_deliveries: Counters<OutcomeLabel>,
    cron_runs: Counters<OutcomeLabel>,
    wakes: Counters<OutcomeLabel>,
    wake_seconds: Histograms<OutcomeLabel>,
    sleeps: Counter,
    build_seconds: Histograms<OutcomeLabel>,
    instance_restarts: Family<ProjectLabel, Gauge>,
    hook_calls: Counters<HookLabels>,
    hook_seconds: Histograms<HookLabel>,
    ssh_connections: Gauge,
    ssh_connections_total: Counter,
    git_operations: Counters<ServiceLabel>,
    projects: Gauge,
    users: Gauge,
    live_instances: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("paastech");
        let ingress = IngressMetrics::default();
        registry.register(
            "ingress_requests",
            "Requests answered by the ingress, by project (empty: no project was found), method and status class",
            ingress.requests.clone(),
        );
        registry.register(
            "ingress_request_duration_seconds",
            "Time from a request's head to the end of its answer, by project",
            ingress.seconds.clone(),
        );
        registry.register(
            "ingress_response_bytes",
            "Bytes of answers (head and body) sent to clients, by project",
            ingress.bytes.clone(),
        );
        registry.register("ingress_connections", "Client connections open now, by scheme", ingress.connections.clone());
        let mut this = Metrics {
            registry,
            ingress,
            deploys: Family::default(),
            webhook_deliveries: Family::default(),
            cron_runs: Family::default(),
            wakes: Family::default(),
            wake_seconds: Family::new_with_constructor(Buckets(request_buckets)),
            sleeps: Counter::default(),
            deploy_seconds: Family::new_with_constructor(Buckets(job_buckets)),
            builds: Family::default(),
            build_seconds: Family::new_with_constructor(Buckets(job_buckets)),
            instance_restarts: Family::default(),
            hook_calls: Family::default(),
            hook_seconds: Family::new_with_constructor(Buckets(hook_buckets)),
            ssh_connections: Gauge::default(),
            ssh_connections_total: Counter::default(),
            git_operations: Family::default(),
            projects: Gauge::default(),
            users: Gauge::default(),
            live_instances: Gauge::default(),
        };
        let r = &mut this.registry;
        r.register("deploys", "Deployments that went live or failed", this.deploys.clone());
        r.register(
            "deploy_duration_seconds",
            "Time from a deployment's start to live or failed",
            this.deploy_seconds.clone(),
        );
        r.register("builds", "Builds that succeeded or failed", this.builds.clone());
        r.register(
            "webhook_deliveries",
            "Webhook deliveries by how they ended: delivered (2xx), refused (another answer) or error (no answer)",
            this.webhook_deliveries.clone(),
        );
        r.register(
            "cron_runs",
            "Scheduled jobs' times by how they ended: succeeded, failed (non-zero, timeout, no start) or skipped (still running)",
            this.cron_runs.clone(),
        );
        r.register("build_duration_seconds", "Time a build took", this.build_seconds.clone());
        r.register(
            "wakes",
            "Wakes of sleeping projects by how they ended: succeeded, failed (start or health check) or timeout",
            this.wakes.clone(),
        );
        r.register(
            "wake_duration_seconds",
            "Time from a wake's start to its web instances healthy and routed, or to its failure",
            this.wake_seconds.clone(),
        );
        r.register("sleeps", "Projects put to sleep after their idle time", this.sleeps.clone());
        r.register(
            "instance_restarts",
            "Restarts of the instances running now after they exited, as the runtime counts them, by project",
            this.instance_restarts.clone(),
        );
        r.register("hook_calls", "WASM hook calls, by hook and outcome", this.hook_calls.clone());
        r.register("hook_duration_seconds", "Time a WASM hook call took", this.hook_seconds.clone());
        r.register("ssh_connections", "SSH connections open now", this.ssh_connections.clone());
        r.register("ssh_connections_opened", "SSH connections accepted", this.ssh_connections_total.clone());
        r.register(
            "git_operations",
            "git pushes (receive-pack) and fetches (upload-pack) served over SSH",
            this.git_operations.clone(),
        );
        r.register("projects", "Projects in the store", this.projects.clone());
        r.register("users", "Users in the store", this.users.clone());
        r.register(
            "live_instances",
            "Instances of live deployments the runtime reports running",
            this.live_instances.clone(),
        );
        this
    }

    /// A webhook delivery ended (after its last attempt): `delivered`, `refused` or `error`.
    pub fn webhook_delivery(&self, outcome: &'static str) {
        self.webhook_deliveries.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A scheduled job's time ended: `succeeded`, `failed` or `skipped`.
    pub fn cron_run(&self, outcome: &'static str) {
        self.cron_runs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A sleeping project's wake ended (`succeeded`, `failed` or `timeout`), `elapsed`
    /// after it started.
    pub fn wake(&self, outcome: &'static str, elapsed: Duration) {
        let label = OutcomeLabel { outcome };
        self.wakes.get_or_create(&label).inc();
        self.wake_seconds.get_or_create(&label).observe(elapsed.as_secs_f64());
    }

    /// A project was put to sleep.
    pub fn sleep(&self) {
        self.sleeps.inc();
    }

    /// A deployment went live (`ok`) or failed, `elapsed` after it started.
    pub fn deploy(&self, ok: bool, elapsed: Duration) {
        let label = OutcomeLabel { outcome: outcome(ok) };
        self.deploys.get_or_create(&label).inc();
        self.deploy_seconds.get_or_create(&label).observe(elapsed.as_secs_f64());
    }

    /// A build succeeded or failed after `elapsed`.
    pub fn build(&self, ok: bool, elapsed: Duration) {
        let label = OutcomeLabel { outcome: outcome(ok) };
        self.builds.get_or_create(&label).inc();
        self.build_seconds.get_or_create(&label).observe(elapsed.as_secs_f64());
    }

    /// A WASM hook call ended (`ok`: it ran and answered) after `elapsed`.
    pub fn hook_call(&self, hook: &str, ok: bool, elapsed: Duration) {
        self.hook_calls.get_or_create(&HookLabels { hook: hook.to_owned(), outcome: outcome(ok) }).inc();
        self.hook_seconds.get_or_create(&HookLabel { hook: hook.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// An SSH connection was accepted; the guard counts it open until dropped.
    pub fn ssh_connection(&self) -> OpenGuard {
        self.ssh_connections_total.inc();
        OpenGuard::new(&self.ssh_connections)
    }

    /// git ran over SSH for a push (`receive-pack`) or a fetch (`upload-pack`). Whether a
    /// push's deploy went live is in the deploy counts: git says nothing of it.
    pub fn git_operation(&self, service: &'static str) {
        self.git_operations.get_or_create(&ServiceLabel { service }).inc();
    }

    /// What the store holds, read when `/metrics` is asked for (`None`: could not be read,
    /// the last value stays).
    pub fn set_store_figures(&self, projects: Option<u64>, users: Option<u64>) {
        for (gauge, value) in [(&self.projects, projects), (&self.users, users)] {
            if let Some(value) = value {
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    /// What the runtime runs, read when `/metrics` is asked for: instances running, and
    /// the restarts of each project's instances.
    pub fn set_instances(&self, nodes: &[Node]) {
        let instances = || nodes.iter().flat_map(|node| &node.instances);
        let running = instances().filter(|i| i.state == InstanceState::Running).count();
        self.live_instances.set(i64::try_from(running).unwrap_or(i64::MAX));
        let mut restarts: HashMap<&str, i64> = HashMap::new();
        for instance in instances() {
            *restarts.entry(instance.project.as_str()).or_default() += i64::from(instance.restarts);
        }
        // Projects whose instances are gone drop out rather than keep their last figure.
        self.instance_restarts.clear();
        for (project, count) in restarts {
            self.instance_restarts.get_or_create(&ProjectLabel { project: project.to_owned() }).set(count);
        }
    }
}

fn outcome(ok: bool) -> &'static str {
    if ok { "succeeded" } else { "failed" }
}

/// Counts something open (a connection) in a gauge until dropped.
pub struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        OpenGuard(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The ingress's figures.
pub struct IngressMetrics {
    requests: Counters<RequestLabels>,
    seconds: Histograms<ProjectLabel>,
    bytes: Counters<ProjectLabel>,
    connections: Family<SchemeLabel, Gauge>,
    /// Handles already made, by project: the route table asks again on every switch.
    projects: Mutex<HashMap<String, Arc<ProjectRequests>>>,
}

impl Default for IngressMetrics {
    fn default() -> Self {
        IngressMetrics {
            requests: Family::default(),
            seconds: Family::new_with_constructor(Buckets(request_buckets)),
            bytes: Family::default(),
            connections: Family::default(),
            projects: Mutex::default(),
        }
    }
}

impl IngressMetrics {
    /// The handle that counts `project`'s requests (`""`: requests no project was found
    /// for).
    pub fn project(&self, project: &str) -> Arc<ProjectRequests> {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = projects.get(project) {
            return Arc::clone(found);
        }
        let label = ProjectLabel { project: project.to_owned() };
        let made = Arc::new(ProjectRequests {
            project: project.to_owned(),
            family: self.requests.clone(),
            counters: Default::default(),
            seconds: self.seconds.get_or_create_owned(&label),
            bytes: self.bytes.get_or_create_owned(&label),
        });
        projects.insert(project.to_owned(), Arc::clone(&made));
        made
    }

    /// Drops `project`'s series (it was deleted): a platform whose projects come and go
    /// would otherwise expose every name it ever served.
    pub fn forget(&self, project: &str) {
        let Some(handle) = self.projects.lock().unwrap_or_else(|e| e.into_inner()).remove(project) else {
            return;
        };
        for (method, row) in Method::EVERY.iter().zip(&handle.counters) {
            for (status, cell) in STATUS_CLASSES.iter().zip(row) {
                if cell.get().is_some() {
                    let labels = RequestLabels { project: project.to_owned(), method: method.label(), status };
                    self.requests.remove(&labels);
                }
            }
        }
        let label = ProjectLabel { project: project.to_owned() };
        self.seconds.remove(&label);
        self.bytes.remove(&label);
    }

    /// A client connection was accepted (`https`: on the TLS listener); the guard counts it
    /// open until dropped.
    pub fn connection(&self, https: bool) -> OpenGuard {
        let scheme = if https { "https" } else { "http" };
        OpenGuard::new(&self.connections.get_or_create_owned(&SchemeLabel { scheme }))
    }
}

/// The method of a request, as few label values as Prometheus likes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    const ALL: usize = 8;
    /// In the order of their discriminants, which index a project's counters.
    const EVERY: [Method; Method::ALL] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Patch,
        Method::Options,
        Method::Other,
    ];

    /// The method that starts a request line (or an HTTP/2 `:method`).
    pub fn of(request: &[u8]) -> Method {
        let word = request.split(|b| *b == b' ').next().unwrap_or_default();
        match word {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "other",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counts one project's requests; cheap to call on every request.
pub struct ProjectRequests {
    project: String,
    family: Counters<RequestLabels>,
    /// By method and status class, made on first use so that only pairs seen are exposed.
    counters: [[OnceLock<Counter>; STATUS_CLASSES.len()]; Method::ALL],
    seconds: Histogram,
    bytes: Counter,
}

impl ProjectRequests {
    /// One request answered with `status` (its class; an out-of-range status counts as
    /// 5xx) and `bytes` sent, `elapsed` after its head arrived.
    pub fn record(&self, method: Method, status: u16, bytes: u64, elapsed: Duration) {
        let class = usize::from(status / 100).saturating_sub(1).min(STATUS_CLASSES.len() - 1);
        let counter = self.counters[method as usize][class].get_or_init(|| {
            let labels =
                RequestLabels { project: self.project.clone(), method: method.label(), status: STATUS_CLASSES[class] };
            self.family.get_or_create_owned(&labels)
        });
        counter.inc();
        self.bytes.inc_by(bytes);
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_status_classes_are_counted_apart() {
        let ingress = IngressMetrics::default();
        let app = ingress.project("app");
        assert!(Arc::ptr_eq(&app, &ingress.project("app")), "one handle per project");
        app.record(Method::of(b"GET / HTTP/1.1"), 200, 100, Duration::from_millis(2));
        app.record(Method::of(b"GET /x HTTP/1.1"), 404, 50, Duration::from_millis(1));
        app.record(Method::of(b"BREW / HTTP/1.1"), 999, 0, Duration::ZERO);
        ingress.project("").record(Method::Post, 404, 7, Duration::ZERO);

        let mut registry = Registry::default();
        registry.register("requests", "", ingress.requests.clone());
        registry.register("bytes", "", ingress.bytes.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            r#"requests_total{project="app",method="GET",status="2xx"} 1"#,
            r#"requests_total{project="app",method="GET",status="4xx"} 1"#,
            r#"requests_total{project="app",method="other",status="5xx"} 1"#,
            r#"requests_total{project="",method="POST",status="4xx"} 1"#,
            r#"bytes_total{project="app"} 150"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("3xx"), "only pairs seen are exposed:\n{text}");

        ingress.forget("app");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(!text.contains(r#"project="app""#), "a deleted project's series are gone:\n{text}");
        assert!(text.contains(r#"requests_total{project="",method="POST",status="4xx"} 1"#), "{text}");
        assert!(!Arc::ptr_eq(&app, &ingress.project("app")), "a project of that name later starts afresh");
    }

    #[test]
    fn the_process_registry_encodes_with_an_end_marker() {
        metrics().deploy(true, Duration::from_secs(3));
        let text = encode();
        assert!(text.contains("paastech_deploys_total{outcome=\"succeeded\"}"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
