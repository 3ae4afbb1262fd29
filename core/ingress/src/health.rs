//! Health checks of freshly started instances, before traffic moves to them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Pause between two attempts: short, so a healthy app goes live quickly.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// While the app is not listening yet its port refuses the connection, which costs the app
/// nothing: retry that much more often at first. Most apps bind within a few tens of
/// milliseconds of starting, and with 100 ms polls a deploy waited ~50 ms more on average.
const FAST_RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// How long the fast polling of a refused port lasts; an app slower than that to bind is
/// doing real start-up work and gets the normal interval.
const FAST_RETRY_FOR: Duration = Duration::from_secs(2);

/// What the last attempt of a failed health check saw.
#[derive(Debug)]
pub enum LastSeen {
    /// The TCP connection could not be made (usually: connection refused, the app is not
    /// listening yet).
    ConnectFailed(std::io::Error),
    /// The app answered with a server error.
    Status(StatusCode),
    /// The app accepted the connection but sent no answer before the deadline.
    NoAnswer,
    /// The app answered something that is not HTTP/1.
    BadResponse(String),
    /// The path to check is not a valid request target; nothing was sent.
    InvalidPath(String),
}

impl fmt::Display for LastSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastSeen::ConnectFailed(err) => write!(f, "connection failed: {err}"),
            LastSeen::Status(status) => write!(f, "status {}", status.as_u16()),
            LastSeen::NoAnswer => f.write_str("no answer before the timeout"),
            LastSeen::BadResponse(msg) => write!(f, "invalid HTTP response: {msg}"),
            LastSeen::InvalidPath(msg) => write!(f, "invalid path: {msg}"),
        }
    }
}

/// A health check that never saw a healthy answer.
#[derive(Debug, thiserror::Error)]
#[error("no healthy answer from http://{addr}{path} within {}s; last seen: {last}", timeout.as_secs_f32())]
pub struct HealthError {
    pub addr: SocketAddr,
    pub path: String,
    pub timeout: Duration,
    pub last: LastSeen,
}

impl From<HealthError> for paastech_core::Error {
    fn from(err: HealthError) -> Self {
        paastech_core::Error::Unavailable(err.to_string())
    }
}

/// GETs `http://addr/path` until an answer with a status below 500 arrives (healthy) or
/// `timeout` passes. Each attempt uses a fresh connection, so a restarted app is seen as
/// it is now.
pub async fn health_check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), HealthError> {
    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    let target = match PathAndQuery::try_from(path.as_str()) {
        Ok(target) => target,
        Err(err) => {
            // Retrying cannot fix a malformed path: say so at once.
            return Err(HealthError { addr, path, timeout, last: LastSeen::InvalidPath(err.to_string()) });
        }
    };
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let last = match tokio::time::timeout_at(deadline, attempt(addr, &target)).await {
            Ok(Ok(status)) if status.as_u16() < 500 => return Ok(()),
            Ok(Ok(status)) => LastSeen::Status(status),
            Ok(Err(seen)) => seen,
            Err(_) => LastSeen::NoAnswer,
        };
        // Sleep, then give up with what this attempt saw if no time is left for another.
        let pause = retry_pause(&last, started.elapsed());
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        if Instant::now() >= deadline {
            return Err(HealthError { addr, path, timeout, last });
        }
    }
}

/// The wait before the next attempt, given what the last one saw and how long the check has
/// run: quick polls only while the port refuses connections early on; an app that answers
/// (even with an error) is never hammered.
fn retry_pause(last: &LastSeen, elapsed: Duration) -> Duration {
    match last {
        LastSeen::ConnectFailed(_) if elapsed < FAST_RETRY_FOR => FAST_RETRY_INTERVAL,
        _ => RETRY_INTERVAL,
    }
}

async fn attempt(addr: SocketAddr, path: &PathAndQuery) -> Result<StatusCode, LastSeen> {
    let stream = TcpStream::connect(addr).await.map_err(LastSeen::ConnectFailed)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| LastSeen::BadResponse(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path.clone())
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "paastech-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| LastSeen::BadResponse(e.to_string()))?;
    let result = sender.send_request(request).await;
    // The body does not matter; drop the connection rather than read it.
    conn.abort();
    match result {
        Ok(resp) => Ok(resp.status()),
        Err(err) if err.is_incomplete_message() || err.is_canceled() => {
            Err(LastSeen::BadResponse("the connection closed before a response".to_owned()))
        }
        Err(err) => Err(LastSeen::BadResponse(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_fast_only_while_the_port_refuses_early_on() {
        let refused = || LastSeen::ConnectFailed(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let cases: &[(LastSeen, Duration, Duration)] = &[
            (refused(), Duration::ZERO, FAST_RETRY_INTERVAL),
            (refused(), Duration::from_millis(1999), FAST_RETRY_INTERVAL),
            (refused(), FAST_RETRY_FOR, RETRY_INTERVAL),
            (LastSeen::Status(StatusCode::SERVICE_UNAVAILABLE), Duration::ZERO, RETRY_INTERVAL),
            (LastSeen::NoAnswer, Duration::ZERO, RETRY_INTERVAL),
            (LastSeen::BadResponse("x".into()), Duration::ZERO, RETRY_INTERVAL),
        ];
        for (last, elapsed, want) in cases {
            assert_eq!(retry_pause(last, *elapsed), *want, "after {last} at {elapsed:?}");
        }
    }
}
