//! Waking sleeping projects: a request for a route marked asleep is held here while the
//! project's web instances start, then routed as usual.
//!
//! The ingress does not know who starts instances: it asks a [`Waker`] the binary gives it
//! (the orchestrator behind it), through this narrow interface. Requests that arrive while
//! a wake is under way wait for the same one (single flight: one `Waker::wake` per project
//! at a time, whatever the number of requests), at most [`Wakes`]' cap of them per
//! project; the rest are answered 503 at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

/// Who wakes a sleeping project: starts its web instances, health-checks them and gives
/// its route their addresses (and clears its asleep mark) before answering `Ok`. The
/// answer's error is the reason shown to the held requests. Called once per wake, on the
/// caller's runtime, so an implementation with work of its own spawns it where it belongs.
#[async_trait]
pub trait Waker: Send + Sync {
    async fn wake(&self, project: &str, timeout: Duration) -> Result<(), String>;
}

/// Why a held request is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeRefused {
    /// More requests wait for this project than the cap.
    TooMany,
    /// The wake failed (or no waker is configured): the reason.
    Failed(Arc<str>),
    /// The wake did not end within the wake timeout.
    Timeout(Duration),
}

impl std::fmt::Display for WakeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WakeRefused::TooMany => f.write_str("too many requests are waiting for this app to start"),
            WakeRefused::Failed(why) => write!(f, "the app could not be started: {why}"),
            WakeRefused::Timeout(after) => write!(f, "the app did not start within {} s", after.as_secs()),
        }
    }
}

/// The outcome of one wake, shared by every request that waits for it.
type Outcome = Option<Result<(), WakeRefused>>;

struct Flight {
    outcome: watch::Receiver<Outcome>,
    waiting: Arc<AtomicUsize>,
}

/// The wakes under way, one per project, shared by every ingress thread.
pub(crate) struct Wakes {
    waker: Option<Arc<dyn Waker>>,
    timeout: Duration,
    max_waiting: usize,
    flights: Arc<Mutex<HashMap<Arc<str>, Flight>>>,
}

/// Counts a request as waiting for a flight until dropped.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Wakes {
    pub(crate) fn new(waker: Option<Arc<dyn Waker>>, timeout: Duration, max_waiting: usize) -> Self {
        Wakes { waker, timeout, max_waiting, flights: Arc::default() }
    }

    /// Holds the caller until `project` is woken (then route the request again), or says
    /// why it will not be. Starts the wake unless one is under way, which it joins.
    pub(crate) async fn wait(&self, project: &Arc<str>) -> Result<(), WakeRefused> {
        let Some(waker) = &self.waker else {
            return Err(WakeRefused::Failed("this server wakes no sleeping app".into()));
        };
        let (mut outcome, _waiting) = {
            // Never held across an await; a panic elsewhere leaves the map consistent.
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            let flight = flights.entry(Arc::clone(project)).or_insert_with(|| self.start(waker, project));
            if flight.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                flight.waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(WakeRefused::TooMany);
            }
            (flight.outcome.clone(), Waiting(Arc::clone(&flight.waiting)))
        };
        // The flight ends itself at the timeout; a second past it is only a safety net.
        let ended = tokio::time::timeout(self.timeout + Duration::from_secs(1), outcome.wait_for(Option::is_some));
        match ended.await {
            Ok(Ok(result)) => result.clone().unwrap_or(Err(WakeRefused::Timeout(self.timeout))),
            Ok(Err(_)) => Err(WakeRefused::Failed("the wake stopped unexpectedly".into())),
            Err(_) => Err(WakeRefused::Timeout(self.timeout)),
        }
    }

    /// A new flight for `project`: one call of the waker, bounded by the timeout, whose
    /// outcome every waiter sees; the flight leaves the map when it ends, so the next
    /// request after a failure tries again.
    fn start(&self, waker: &Arc<dyn Waker>, project: &Arc<str>) -> Flight {
        let (tx, rx) = watch::channel(None);
        let (waker, project, timeout) = (Arc::clone(waker), Arc::clone(project), self.timeout);
        let flights = Arc::clone(&self.flights);
        let this_flight = rx.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, waker.wake(&project, timeout)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(WakeRefused::Failed(why.into())),
                Err(_) => Err(WakeRefused::Timeout(timeout)),
            };
            let _ = tx.send(Some(result));
            let mut flights = flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.get(&project).is_some_and(|f| f.outcome.same_channel(&this_flight)) {
                flights.remove(&project);
            }
        });
        Flight { outcome: rx, waiting: Arc::new(AtomicUsize::new(0)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Counts its calls; each wake takes `delay` and succeeds unless `fail`.
    struct Counting {
        calls: AtomicUsize,
        delay: Duration,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Waker for Counting {
        async fn wake(&self, _project: &str, _timeout: Duration) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) { Err("web.1 exited at start".into()) } else { Ok(()) }
        }
    }

    fn counting(delay: Duration) -> Arc<Counting> {
        Arc::new(Counting { calls: AtomicUsize::new(0), delay, fail: AtomicBool::new(false) })
    }

    #[tokio::test]
    async fn requests_during_a_wake_wait_for_the_same_one() {
        let waker = counting(Duration::from_millis(200));
        let wakes = Arc::new(Wakes::new(Some(waker.clone() as Arc<dyn Waker>), Duration::from_secs(5), 100));
        let project: Arc<str> = Arc::from("blog");
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let (wakes, project) = (Arc::clone(&wakes), Arc::clone(&project));
                tokio::spawn(async move { wakes.wait(&project).await })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(waiter.await.expect("join"), Ok(()));
        }
        assert_eq!(waker.calls.load(Ordering::SeqCst), 1, "one wake for 50 requests");
        // Ended: the next request (after a new sleep) starts a new one.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(wakes.wait(&project).await, Ok(()));
        assert_eq!(waker.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn past_the_cap_a_request_is_refused_at_once() {
        let waker = counting(Duration::from_millis(300));
        let wakes = Arc::new(Wakes::new(Some(waker.clone() as Arc<dyn Waker>), Duration::from_secs(5), 3));
        let project: Arc<str> = Arc::from("blog");
        let held: Vec<_> = (0..3)
            .map(|_| {
                let (wakes, project) = (Arc::clone(&wakes), Arc::clone(&project));
                tokio::spawn(async move { wakes.wait(&project).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wakes.wait(&project).await, Err(WakeRefused::TooMany));
        for waiter in held {
            assert_eq!(waiter.await.expect("join"), Ok(()));
        }
        // Another project has its own cap.
        assert_eq!(wakes.wait(&Arc::from("shop")).await, Ok(()));
    }

    #[tokio::test]
    async fn a_failed_or_slow_wake_says_why_and_the_next_request_tries_again() {
        let waker = counting(Duration::from_millis(10));
        waker.fail.store(true, Ordering::SeqCst);
        let wakes = Wakes::new(Some(waker.clone() as Arc<dyn Waker>), Duration::from_secs(5), 10);
        let project: Arc<str> = Arc::from("blog");
        assert_eq!(wakes.wait(&project).await, Err(WakeRefused::Failed("web.1 exited at start".into())));
        tokio::time::sleep(Duration::from_millis(20)).await;
        waker.fail.store(false, Ordering::SeqCst);
        assert_eq!(wakes.wait(&project).await, Ok(()));
        assert_eq!(waker.calls.load(Ordering::SeqCst), 2);

        let slow = counting(Duration::from_secs(10));
        let wakes = Wakes::new(Some(slow as Arc<dyn Waker>), Duration::from_millis(100), 10);
        let began = std::time::Instant::now();
        assert_eq!(wakes.wait(&project).await, Err(WakeRefused::Timeout(Duration::from_millis(100))));
        assert!(began.elapsed() < Duration::from_secs(2), "answered at the timeout");

        let none = Wakes::new(None, Duration::from_secs(1), 10);
        assert!(matches!(none.wait(&project).await, Err(WakeRefused::Failed(_))));
    }
}
