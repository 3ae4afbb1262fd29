//! The HTTP ingress: Host-based routing to app instances (HTTP/1 forwarded on bytes;
//! hyper for the static-site server and health checks).
//!
//! This is the only crate that knows HTTP proxying. It serves `http://<project>.<domain>`
//! from the backends registered in a [`RouteTable`], health-checks new instances
//! ([`health_check`]) and drains old ones ([`drain`]) so a deployment switch drops no
//! request, and runs static-site apps ([`serve_static`]). With [`serve_with_https`] it
//! also terminates TLS (rustls, ring) with the certificates of a [`CertStore`], chosen by
//! SNI, and serves HTTP/2 to clients that ask for it; apps always get HTTP/1.1. This is
//! the only crate that names rustls types.
//!
//! A health-gated switch, as the orchestrator drives it:
//! 1. start the new `web` instances and [`health_check`] each of them;
//! 2. [`RouteTable::set_backends`] with the new addresses: traffic moves atomically, and
//!    the call returns the old backends;
//! 3. [`drain`] those with a timeout, then stop the old instances.

mod forward;
mod h1;
mod h2;
mod health;
mod proxy;
mod router;
mod routes;
mod server;
mod static_files;
mod static_serve;
mod static_site;
mod tls;
mod trust;
mod turns;
mod upstream;
mod wake;

pub use health::{HealthError, LastSeen, health_check};
pub use proxy::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_WAITING_WAKES, DEFAULT_WAKE_TIMEOUT, IngressConfig, MAX_REFUSING, serve,
    serve_with_https,
};
pub use router::IngressRouter;
pub use routes::{Backend, RouteTable, drain};
pub use server::Serving;
pub use static_files::serve_static;
pub use static_site::StaticSite;
pub use tls::{CertStore, Certificate, CertificateError};
pub use trust::{IpRange, IpRangeError};
pub use wake::{WakeRefused, Waker};
