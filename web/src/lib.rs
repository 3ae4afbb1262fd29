//! The HTTP API (`/api/v1`) and the web UI (server-rendered pages at `/`). The only crate
//! that knows JSON shapes, HTML and HTTP status codes; it reaches everything else through
//! core's traits.

pub mod api;
mod audit;
pub mod auth;
mod connections;
pub mod email;
pub mod error;
pub mod metrics;
pub mod two_factor;
pub mod ui;
pub mod webhooks;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use paastech_core::Store;
use paastech_core::orchestrator::Orchestrator;

pub use auth::LoginLimiter;

/// Who may create accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignupPolicy {
    /// Anyone may sign up.
    #[default]
    Open,
    /// Only admins may create accounts (the very first account is always allowed).
    Closed,
}

/// What the API shows users about where things are.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    /// Apps are served at `http://<project>.<domain>[:port]`.
    pub app_domain: String,
    /// The ingress port when it is not 80.
    pub app_port: Option<u16>,
    /// When the ingress serves HTTPS, the port users reach it on: app URLs are then
    /// `https://…` (the port left out when it is 443).
    pub https_port: Option<u16>,
    /// The host users `git push` to.
    pub ssh_host: String,
    pub ssh_port: u16,
}

impl PublicUrls {
    pub fn git_url(&self, project: &str) -> String {
        format!("ssh://git@{}:{}/{project}.git", self.ssh_host, self.ssh_port)
    }

    /// Where a project answers on its own name: over HTTPS when the ingress serves it.
    pub fn app_url(&self, project: &str) -> String {
        self.url(&format!("{project}.{}", self.app_domain), true)
    }

    /// `https://HOST[:PORT]` when `https` is wanted and served, else `http://HOST[:PORT]`;
    /// the scheme's default port is left out.
    pub fn url(&self, host: &str, https: bool) -> String {
        match (self.https_port.filter(|_| https), self.app_port) {
            (Some(443), _) => format!("https://{host}"),
            (Some(port), _) => format!("https://{host}:{port}"),
            (None, Some(port)) if port != 80 => format!("http://{host}:{port}"),
            (None, _) => format!("http://{host}"),
        }
    }
}

/// How many projects' store queries a listing runs at once (the store's pools hold at
/// least this many connections).
pub(crate) const PARALLEL_QUERIES: usize = 4;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub orchestrator: Arc<Orchestrator>,
    pub signup: SignupPolicy,
    /// `[auth] require_2fa`: a user without two-factor login may only enrol (pages lead to
    /// Account → Security; the API answers 403 but for `/me`, `/me/2fa*`).
    pub require_2fa: bool,
    pub urls: Arc<PublicUrls>,
    pub limiter: Arc<LoginLimiter>,
    /// Password reset requests, per address and client (as the login's failures).
    pub reset_limiter: Arc<LoginLimiter>,
    /// The server's mail (`[smtp]`), if it sends any.
    pub mail: Option<Arc<email::MailSettings>>,
    /// Names of the build hooks in use (configured and per-project), shown on the admin page.
    pub hook_names: Arc<Vec<String>>,
    /// Flips to true when the server starts shutting down, so endless streams (live logs)
    /// end and the graceful shutdown does not wait on them.
    pub(crate) stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    pub fn new(orchestrator: Arc<Orchestrator>, signup: SignupPolicy, urls: PublicUrls) -> Self {
        AppState {
            store: Arc::clone(orchestrator.store()),
            orchestrator,
            signup,
            require_2fa: false,
            urls: Arc::new(urls),
            limiter: Arc::new(LoginLimiter::new(10, Duration::from_secs(60))),
            reset_limiter: Arc::new(LoginLimiter::new(5, Duration::from_secs(3600))),
            mail: None,
            hook_names: Arc::new(Vec::new()),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Sends mail through `mailer`, with links to `public_url`.
    pub fn with_mail(mut self, mailer: Arc<dyn paastech_core::mail::Mailer>, public_url: String) -> Self {
        self.mail = Some(Arc::new(email::MailSettings { mailer, public_url }));
        self
    }

    /// Records the build hooks in use, for the admin page.
    pub fn with_hook_names(mut self, names: Vec<String>) -> Self {
        self.hook_names = Arc::new(names);
        self
    }

    /// Resolves once the server is shutting down.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }
}

/// The largest request body the API accepts; nothing it takes is bigger than an SSH key.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The API under `/api/v1` and the web UI everywhere else.
pub fn router(state: AppState) -> Router {
    ui::routes()
        .route("/metrics", axum::routing::get(metrics::for_admin))
        .nest("/api/v1", api::routes())
        .layer(axum::middleware::from_fn(audit::client_address))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The default cap on open API connections (`[api] max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(1024).expect("not zero");

/// Serves the API (and UI) on `listener` until `shutdown` resolves, then lets requests in
/// flight finish. At most `max_connections` connections are open at once; past that, a
/// new one is answered `503` with the error body (code `too_many_connections`) and closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    max_connections: NonZeroUsize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = Arc::clone(&state.stopping);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    serve_router(listener, router(state), max_connections, shutdown).await
}

/// Serves the API (and UI) to the ingress alone, for the requests it received for
/// `[api] public_host`. Only the ingress is told of this listener (the server binds it on
/// loopback, on a port of its own), so here, and only here, the ingress's forwarded
/// headers are believed: the client's address is the last `X-Forwarded-For` entry (the
/// one the ingress appended: what it saw), and `X-Forwarded-Proto` is the ingress's own
/// (it replaces a client's). On the public listener these headers count for nothing but
/// `Secure` cookies, so the login limiter keeps one bucket per real address either way.
pub async fn serve_behind_ingress(
    listener: tokio::net::TcpListener,
    state: AppState,
    max_connections: NonZeroUsize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).layer(axum::Extension(auth::BehindIngress));
    serve_router(listener, app, max_connections, shutdown).await
}

/// Serves `GET /metrics` alone, to anyone who reaches `listener` (`[metrics] listen`: the
/// operator keeps it on an address only Prometheus reaches).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A scraper or two: a small cap is plenty.
    let cap = NonZeroUsize::new(16).expect("not zero");
    serve_router(listener, metrics::router(state), cap, shutdown).await
}

async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: NonZeroUsize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // `tap_io` changes nothing, but axum gives the peer address (`ConnectInfo`, which the
    // login limiter needs) only for its own listeners and for those wrapped by it.
    let listener = connections::CappedListener::new(listener, max_connections).tap_io(|_| {});
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
