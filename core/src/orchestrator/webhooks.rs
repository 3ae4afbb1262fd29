//! Deploy webhooks as the orchestrator sees them: their records (through the store) and
//! the dispatch of each deploy event. The invariant: a delivery never delays or fails a
//! deployment. `roll_out` and `fail` only call [`Orchestrator::deploy_event`], which
//! spawns the work and returns at once; each webhook's delivery then runs in its own task,
//! attempt after attempt with growing waits, and records every attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Orchestrator;
use crate::deployment::Deployment;
use crate::domain::{Project, Timestamp};
use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::store::Store;
use crate::webhooks::{
    AttemptResult, DeployEvent, MAX_WEBHOOKS, RetryPolicy, Webhook, WebhookAttempt, WebhookEvent, WebhookRequest,
    WebhookSender, validate_url,
};

impl Orchestrator {
    /// Delivers deploy events to the projects' webhooks through `sender`. Without one,
    /// webhooks are recorded but nothing is sent.
    pub fn with_webhooks(mut self, sender: Arc<dyn WebhookSender>) -> Self {
        self.webhook_sender = Some(sender);
        self
    }

    /// The project's webhooks, oldest first.
    pub async fn webhooks(&self, project: &Project) -> Result<Vec<Webhook>> {
        self.store.webhooks(project.id).await
    }

    /// Adds a webhook to the project: `url` is checked (an absolute http(s) URL with a
    /// host, no user name or password), `events` named ones (none means all). `secret`
    /// signs its deliveries; the caller makes it and shows it once.
    pub async fn add_webhook(&self, project: &Project, url: &str, events: &[String], secret: &str) -> Result<Webhook> {
        let url = validate_url(url)?;
        let events = WebhookEvent::parse_list(events)?;
        // Checked before the insert, not in its transaction: two adds racing at the limit may
        // pass it by one, which bounds the work all the same.
        if self.store.webhooks(project.id).await?.len() >= MAX_WEBHOOKS {
            return Err(Error::Conflict(format!(
                "the project has {MAX_WEBHOOKS} webhooks, the most it may have: remove one first"
            )));
        }
        let webhook = self.store.add_webhook(project.id, &url, &events, secret).await?;
        tracing::info!(project = %project.name, webhook = webhook.id, url = %webhook.url, "webhook added");
        Ok(webhook)
    }

    /// Removes the project's webhook; deliveries under way stop recording.
    pub async fn remove_webhook(&self, project: &Project, webhook_id: i64) -> Result<()> {
        self.store.delete_webhook(project.id, webhook_id).await
    }

    /// The kept attempts of the project's webhook, newest first.
    pub async fn webhook_attempts(&self, project: &Project, webhook_id: i64) -> Result<Vec<WebhookAttempt>> {
        self.store.webhook_attempts(project.id, webhook_id).await
    }

    /// Tells the project's webhooks that want it about `deployment` (now live or failed).
    /// Returns at once: the lookup and the deliveries run in background tasks.
    pub(super) fn deploy_event(
        &self,
        project: &Project,
        deployment: &Deployment,
        event: WebhookEvent,
        reason: Option<&str>,
    ) {
        let Some(sender) = self.webhook_sender.clone() else { return };
        let payload = DeployEvent {
            event,
            project: project.name.to_string(),
            version: deployment.version,
            commit: deployment.commit.clone(),
            status: match event {
                WebhookEvent::DeploySucceeded => "live",
                WebhookEvent::DeployFailed => "failed",
            }
            .to_owned(),
            reason: reason.map(str::to_owned),
            at: Timestamp::now(),
        };
        let (store, policy, project_id) = (Arc::clone(&self.store), self.config.webhook_retry, project.id);
        tokio::spawn(async move {
            let hooks = match store.webhooks_with_secrets(project_id).await {
                Ok(hooks) => hooks,
                Err(err) => {
                    tracing::error!(project = %payload.project, error = %err, "cannot read the project's webhooks");
                    return;
                }
            };
            for (hook, secret) in hooks.into_iter().filter(|(hook, _)| hook.wants(event)) {
                let request = WebhookRequest {
                    url: hook.url,
                    secret,
                    delivery: delivery_id(hook.id),
                    payload: payload.clone(),
                    timeout: policy.timeout,
                };
                tokio::spawn(deliver(Arc::clone(&store), Arc::clone(&sender), policy, hook.id, request));
            }
        });
    }
}

/// A delivery id unique on this server: the time, the webhook, and a counter.
fn delivery_id(webhook_id: i64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{:x}-{webhook_id}-{}", Timestamp::now().0, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Attempts one delivery until it is answered for good or the attempts run out, keeping
/// each attempt in the store.
pub(crate) async fn deliver(
    store: Arc<dyn Store>,
    sender: Arc<dyn WebhookSender>,
    policy: RetryPolicy,
    webhook_id: i64,
    request: WebhookRequest,
) {
    let mut attempt = 1;
    loop {
        let (at, started) = (Timestamp::now(), Instant::now());
        // The sender has its own timeout; this one holds whatever the sender does.
        let result =
            tokio::time::timeout(policy.timeout, sender.send(&request)).await.unwrap_or(AttemptResult::TimedOut);
        let record = WebhookAttempt {
            webhook_id,
            delivery: request.delivery.clone(),
            event: request.payload.event,
            attempt,
            at,
            status_code: match result {
                AttemptResult::Answered(code) => Some(code),
                _ => None,
            },
            error: match &result {
                AttemptResult::Answered(_) => None,
                AttemptResult::TimedOut => Some(format!("no answer within {} s", policy.timeout.as_secs_f64())),
                AttemptResult::Failed(why) => Some(why.clone()),
            },
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(err) = store.record_webhook_attempt(&record).await {
            tracing::warn!(webhook = webhook_id, error = %err, "cannot record a webhook attempt");
        }
        let wait = if result.is_retryable() { policy.delay_before(attempt + 1) } else { None };
        let Some(wait) = wait else {
            metrics().webhook_delivery(result.outcome());
            match result.outcome() {
                "delivered" => tracing::info!(webhook = webhook_id, attempt, url = %request.url, "webhook delivered"),
                _ => {
                    tracing::warn!(webhook = webhook_id, attempt, url = %request.url, result = ?result, "webhook not delivered")
                }
            }
            return;
        };
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}
