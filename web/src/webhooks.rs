//! The webhook sender: one attempt of a delivery as an HTTP POST, the JSON payload signed
//! with HMAC-SHA256 as GitHub signs its webhooks. Core's dispatcher decides when to call
//! it and what to keep; this module alone knows the payload's JSON shape and the headers.
//!
//! The request goes to the webhook's URL only: no redirect is followed (a 3xx is an
//! answer, kept as such), no proxy from the environment is used, and the attempt ends at
//! its timeout, connecting included. ureq is blocking, so each attempt runs on tokio's
//! blocking pool.

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use paastech_core::webhooks::{AttemptResult, DeployEvent, WebhookRequest, WebhookSender};
use serde::Serialize;
use sha2::Sha256;

/// The header naming the event (`deploy.succeeded`, …).
pub const EVENT_HEADER: &str = "X-PaaSTech-Event";
/// The header with the delivery's id, the same on each attempt.
pub const DELIVERY_HEADER: &str = "X-PaaSTech-Delivery";
/// The header with `sha256=<hex HMAC-SHA256 of the body with the secret>`.
pub const SIGNATURE_HEADER: &str = "X-PaaSTech-Signature-256";

/// Sends deliveries over HTTP(S) with ureq.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpWebhookSender {
    /// Whether a webhook may reach loopback and private addresses (`[webhooks]
    /// allow_private_targets`). Off, a URL whose name resolves only to such addresses fails
    /// each attempt, saying so; the check is on the addresses the connection then uses, so a
    /// name that resolves differently a moment later gains nothing.
    pub allow_private_targets: bool,
}

/// ureq's resolver, keeping only the addresses a webhook may reach.
#[derive(Debug)]
struct PublicOnly(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let all = self.0.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for addr in all.iter().filter(|a| !paastech_core::webhooks::is_private_target(a.ip())) {
            kept.push(*addr);
        }
        if kept.is_empty() {
            let host = uri.host().unwrap_or("the host");
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{host} resolves only to loopback or private addresses, which webhooks may not reach \
                     (the operator can allow them: [webhooks] allow_private_targets = true)"
                ),
            )));
        }
        Ok(kept)
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    event: &'static str,
    project: &'a str,
    version: i64,
    commit: Option<&'a str>,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    at: String,
}

/// The JSON body of a delivery, exactly as sent and signed.
pub fn payload(event: &DeployEvent) -> Vec<u8> {
    let payload = Payload {
        event: event.event.as_str(),
        project: &event.project,
        version: event.version,
        commit: event.commit.as_deref(),
        status: &event.status,
        reason: event.reason.as_deref(),
        at: event.at.to_rfc3339(),
    };
    serde_json::to_vec(&payload).expect("a struct of strings and numbers always serializes")
}

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn send(&self, request: &WebhookRequest) -> AttemptResult {
        let request = request.clone();
        let allow_private = self.allow_private_targets;
        tokio::task::spawn_blocking(move || post(&request, allow_private))
            .await
            .unwrap_or_else(|e| AttemptResult::Failed(format!("the delivery task failed: {e}")))
    }
}

fn post(request: &WebhookRequest, allow_private: bool) -> AttemptResult {
    let body = payload(&request.payload);
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(request.timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .user_agent(concat!("PaaSTech-Webhook/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = if allow_private {
        ureq::Agent::new_with_config(config)
    } else {
        let connector = ureq::unversioned::transport::DefaultConnector::new();
        ureq::Agent::with_parts(config, connector, PublicOnly(Default::default()))
    };
    let sent = agent
        .post(&request.url)
        .header("Content-Type", "application/json")
        .header(EVENT_HEADER, request.payload.event.as_str())
        .header(DELIVERY_HEADER, &request.delivery)
        .header(SIGNATURE_HEADER, signature(&request.secret, &body))
        .send(&body[..]);
    match sent {
        Ok(response) => AttemptResult::Answered(response.status().as_u16()),
        Err(ureq::Error::Timeout(_)) => AttemptResult::TimedOut,
        Err(err) => AttemptResult::Failed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use paastech_core::Timestamp;
    use paastech_core::webhooks::WebhookEvent;

    use super::*;

    #[test]
    fn signatures_match_rfc_4231_and_githubs_example() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // GitHub's documented example of X-Hub-Signature-256.
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    fn request(url: String, timeout: Duration) -> WebhookRequest {
        WebhookRequest {
            url,
            secret: "s".into(),
            delivery: "d-1".into(),
            payload: DeployEvent {
                event: WebhookEvent::DeploySucceeded,
                project: "blog".into(),
                version: 1,
                commit: None,
                status: "live".into(),
                reason: None,
                at: Timestamp(0),
            },
            timeout,
        }
    }

    /// A server on loopback that answers each connection's request with `answer` (or holds
    /// it unanswered when `None`), up to `count` connections; returns its port and the
    /// number of requests it got.
    fn receiver(answer: Option<&'static str>, count: usize) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().take(count) {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.read(&mut buf);
                counter.fetch_add(1, Ordering::SeqCst);
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(answer.as_bytes());
                    }
                    None => held.push(stream),
                }
            }
            // Keeps the unanswered connections open past any timeout the tests use.
            if !held.is_empty() {
                std::thread::sleep(Duration::from_secs(10));
            }
        });
        (port, seen)
    }

    #[test]
    fn a_redirect_is_an_answer_not_followed() {
        let (target, target_seen) = receiver(Some("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), 1);
        let redirect: &'static str = Box::leak(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{target}/\r\ncontent-length: 0\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (port, seen) = receiver(Some(redirect), 1);
        let result = post(&request(format!("http://127.0.0.1:{port}/hook"), Duration::from_secs(5)), true);
        assert_eq!(result, AttemptResult::Answered(307));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(target_seen.load(Ordering::SeqCst), 0, "the redirect was not followed");
    }

    #[test]
    fn an_attempt_ends_at_its_timeout_and_a_refused_connection_is_an_error() {
        let (port, seen) = receiver(None, 1);
        let started = std::time::Instant::now();
        let result = post(&request(format!("http://127.0.0.1:{port}/"), Duration::from_millis(300)), true);
        assert_eq!(result, AttemptResult::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        // A port nobody listens on (bound, then closed).
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        match post(&request(format!("http://127.0.0.1:{closed}/"), Duration::from_secs(5)), true) {
            AttemptResult::Failed(why) => assert!(!why.is_empty()),
            other => panic!("a refused connection is an error, got {other:?}"),
        }
    }

    #[test]
    fn loopback_targets_are_refused_unless_allowed() {
        let (port, seen) = receiver(Some("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), 1);
        for host in ["127.0.0.1", "localhost"] {
            match post(&request(format!("http://{host}:{port}/hook"), Duration::from_secs(5)), false) {
                AttemptResult::Failed(why) => {
                    assert!(why.contains("loopback or private") && why.contains("allow_private_targets"), "{why}")
                }
                other => panic!("{host}: refused before connecting, got {other:?}"),
            }
        }
        assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the receiver");
        let result = post(&request(format!("http://127.0.0.1:{port}/hook"), Duration::from_secs(5)), true);
        assert_eq!(result, AttemptResult::Answered(200));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_payload_has_the_documented_fields() {
        let mut event = DeployEvent {
            event: WebhookEvent::DeployFailed,
            project: "blog".into(),
            version: 3,
            commit: Some("abc123".into()),
            status: "failed".into(),
            reason: Some("health check failed".into()),
            at: Timestamp(0),
        };
        assert_eq!(
            String::from_utf8(payload(&event)).expect("utf-8"),
            r#"{"event":"deploy.failed","project":"blog","version":3,"commit":"abc123","status":"failed","reason":"health check failed","at":"1970-01-01T00:00:00Z"}"#
        );
        event.reason = None;
        assert!(!String::from_utf8(payload(&event)).expect("utf-8").contains("reason"), "no reason when none");
    }
}
