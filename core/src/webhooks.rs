//! Deploy webhooks: a project's URLs that are told, by a signed JSON POST, when one of its
//! deployments goes live or fails. This module holds what the rest agree on: the events,
//! the stored shapes, the rules for a URL, the retry policy (pure logic), and the
//! [`WebhookSender`] trait. Core sends nothing itself: the one sender speaking HTTP is
//! registered by the binary (it lives in `paastech-web`), and the orchestrator's
//! dispatcher (`orchestrator/webhooks.rs`) runs each delivery in the background.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Timestamp;
use crate::error::{Error, Result};

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WebhookEvent {
    /// A deployment went live.
    DeploySucceeded,
    /// A deployment failed (build, hook, release command, start or health check); the
    /// previous one still serves.
    DeployFailed,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 2] = [WebhookEvent::DeploySucceeded, WebhookEvent::DeployFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::DeploySucceeded => "deploy.succeeded",
            WebhookEvent::DeployFailed => "deploy.failed",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|e| e.as_str()).collect();
            Error::Invalid(format!("unknown webhook event {name:?}: the known events are {}", known.join(", ")))
        })
    }

    /// The events a webhook asks for: every one when `names` is empty, else each name once,
    /// in the order of [`WebhookEvent::ALL`].
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Vec<Self>> {
        if names.is_empty() {
            return Ok(Self::ALL.to_vec());
        }
        let mut events = names.iter().map(|n| Self::parse(n.as_ref().trim())).collect::<Result<Vec<_>>>()?;
        events.sort();
        events.dedup();
        Ok(events)
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook of a project. Its secret is not part of it: it is shown once, when the
/// webhook is made, and read back only by the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub project_id: i64,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub created_at: Timestamp,
}

impl Webhook {
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.events.contains(&event)
    }
}

/// One attempt to deliver one event to one webhook, as kept for the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub webhook_id: i64,
    /// The id of the delivery (the same for each attempt of it): `X-PaaSTech-Delivery`.
    pub delivery: String,
    pub event: WebhookEvent,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the attempt started.
    pub at: Timestamp,
    /// The receiver's status code, when it answered.
    pub status_code: Option<u16>,
    /// Why there is no answer (cannot connect, timeout, …).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// How many webhooks a project may have: each deploy event costs one delivery per webhook.
pub const MAX_WEBHOOKS: usize = 20;

/// How many attempts (across its deliveries) the store keeps per webhook: the last 20
/// deliveries of up to 5 attempts each.
pub const KEPT_ATTEMPTS: i64 = 100;

/// Checks a webhook's URL: an absolute `http` or `https` URL with a host and without
/// userinfo. Returns it in its normalized form.
pub fn validate_url(input: &str) -> Result<String> {
    let invalid = |why: &str| Error::Invalid(format!("invalid webhook url {input:?}: {why}"));
    let url = url::Url::parse(input.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(&format!("the scheme must be http or https, not {}", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("a user name or password in the url is not allowed (the secret signs each request)"));
    }
    match url.host_str() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(invalid("the url has no host")),
    }
    if url.fragment().is_some() {
        return Err(invalid("a fragment (#…) is never sent, leave it out"));
    }
    Ok(url.to_string())
}

/// Whether an address is one a webhook must not reach unless the operator allows it
/// (`[webhooks] allow_private_targets`): loopback, private (RFC 1918, fc00::/7), shared
/// (100.64/10), link-local (cloud metadata services live there), unspecified, multicast and
/// broadcast. A user's webhook would otherwise make the server probe its own network.
pub fn is_private_target(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_target(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status code.
    Answered(u16),
    /// No answer within the timeout.
    TimedOut,
    /// No answer: the connection could not be made or broke.
    Failed(String),
}

impl AttemptResult {
    /// Whether a later attempt may succeed: no answer, a 5xx, 408 or 429. Any other 4xx
    /// says the request itself is refused; a 2xx or 3xx (not followed) ends the delivery.
    pub fn is_retryable(&self) -> bool {
        match self {
            AttemptResult::Answered(code) => *code >= 500 || *code == 408 || *code == 429,
            AttemptResult::TimedOut | AttemptResult::Failed(_) => true,
        }
    }

    /// `delivered` (2xx), `refused` (any other answer), or `error` (no answer).
    pub fn outcome(&self) -> &'static str {
        match self {
            AttemptResult::Answered(code) if (200..300).contains(code) => "delivered",
            AttemptResult::Answered(_) => "refused",
            AttemptResult::TimedOut | AttemptResult::Failed(_) => "error",
        }
    }
}

/// How deliveries are attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; it doubles after each one.
    pub base_delay: Duration,
    pub max_attempts: u32,
    /// How long one attempt may take, connecting included.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base_delay: Duration::from_secs(1), max_attempts: 5, timeout: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next` (2 for the first retry), or `None` when no attempt
    /// is left: `base`, `2·base`, `4·base`, …
    pub fn delay_before(&self, next: u32) -> Option<Duration> {
        if next < 2 || next > self.max_attempts {
            return None;
        }
        let doublings = (next - 2).min(30);
        Some(self.base_delay.saturating_mul(1u32 << doublings))
    }
}

/// What happened to a deployment: the payload of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployEvent {
    pub event: WebhookEvent,
    pub project: String,
    pub version: i64,
    pub commit: Option<String>,
    /// The deployment's status: `live` or `failed`.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// One POST to make.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub url: String,
    /// Signs the body.
    pub secret: String,
    /// The same for every attempt of one delivery.
    pub delivery: String,
    pub payload: DeployEvent,
    pub timeout: Duration,
}

/// Makes one attempt of a delivery. Implemented once, by the crate that speaks HTTP and
/// JSON: a POST of the payload to `url` alone (no redirect followed), signed with the
/// secret, within `timeout`.
#[async_trait]
pub trait WebhookSender: Send + Sync {
    async fn send(&self, request: &WebhookRequest) -> AttemptResult;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_naming_the_problem() {
        for (input, expect) in [
            ("http://127.0.0.1:9000/hook", Ok("http://127.0.0.1:9000/hook")),
            ("https://example.com", Ok("https://example.com/")),
            ("not a url", Err("relative URL without a base")),
            ("ftp://example.com/x", Err("the scheme must be http or https, not ftp")),
            ("https://user:pw@example.com/", Err("a user name or password")),
            ("https://user@example.com/", Err("a user name or password")),
            ("http://", Err("empty host")),
            ("/relative", Err("relative URL")),
            ("https://example.com/#frag", Err("fragment")),
        ] {
            match (validate_url(input), expect) {
                (Ok(url), Ok(want)) => assert_eq!(url, want, "{input}"),
                (Err(Error::Invalid(message)), Err(want)) => {
                    assert!(message.contains(want), "{input}: {message}");
                    assert!(message.contains("invalid webhook url"), "{message}");
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn events_default_to_all_and_unknown_ones_name_the_known() {
        assert_eq!(WebhookEvent::parse_list::<&str>(&[]).expect("empty"), WebhookEvent::ALL.to_vec());
        assert_eq!(
            WebhookEvent::parse_list(&["deploy.failed", "deploy.failed"]).expect("one"),
            vec![WebhookEvent::DeployFailed]
        );
        let Err(Error::Invalid(message)) = WebhookEvent::parse_list(&["deploy.done"]) else {
            panic!("an unknown event is invalid")
        };
        assert!(message.contains("\"deploy.done\""), "{message}");
        assert!(message.contains("deploy.succeeded, deploy.failed"), "{message}");
    }

    #[test]
    fn backoff_doubles_until_the_attempts_run_out() {
        let policy = RetryPolicy { base_delay: Duration::from_secs(1), ..RetryPolicy::default() };
        let delays: Vec<_> = (1..=6).map(|n| policy.delay_before(n)).collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(delays, vec![None, secs(1), secs(2), secs(4), secs(8), None]);
        let fast = RetryPolicy { base_delay: Duration::from_millis(10), max_attempts: 3, ..policy };
        assert_eq!(fast.delay_before(3), Some(Duration::from_millis(20)));
        assert_eq!(fast.delay_before(4), None);
    }

    #[test]
    fn only_answers_that_may_change_are_retried() {
        for (result, retry) in [
            (AttemptResult::Answered(200), false),
            (AttemptResult::Answered(302), false),
            (AttemptResult::Answered(400), false),
            (AttemptResult::Answered(404), false),
            (AttemptResult::Answered(408), true),
            (AttemptResult::Answered(429), true),
            (AttemptResult::Answered(500), true),
            (AttemptResult::Answered(503), true),
            (AttemptResult::TimedOut, true),
            (AttemptResult::Failed("connection refused".into()), true),
        ] {
            assert_eq!(result.is_retryable(), retry, "{result:?}");
        }
    }

    #[test]
    fn private_targets_are_told_from_public_ones() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private_target(private.parse().expect(private)), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(!is_private_target(public.parse().expect(public)), "{public}");
        }
    }
}
