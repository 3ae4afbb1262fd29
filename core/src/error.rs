use std::error::Error as StdError;

/// The errors every PaaSTech component speaks. Callers branch on the kind; the boxed
/// source of `Internal` carries whatever a backend said, for logs only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing does not exist, or the caller may not know that it exists.
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with existing state (a taken name, a key already registered).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed; the message says which part and why.
    #[error("{0}")]
    Invalid(String),
    /// The caller is not who they claim, or their credentials are wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts; retry later.
    #[error("{0}")]
    RateLimited(String),
    /// A build, hook, start or health check failed; the previous deployment still serves.
    #[error("{0}")]
    DeployFailed(String),
    /// A backend the request needs is down or not compiled in.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else. The message is safe to show; the source is for the logs.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(message: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Error::Internal { message: message.into(), source: Some(Box::new(source)) }
    }

    pub fn internal_msg(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into(), source: None }
    }

    /// A stable machine-readable code, used in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Invalid(_) => "invalid",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::RateLimited(_) => "rate_limited",
            Error::DeployFailed(_) => "deploy_failed",
            Error::Unavailable(_) => "unavailable",
            Error::Internal { .. } => "internal",
        }
    }
}
