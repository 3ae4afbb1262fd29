//! Scale to zero (`paastech sleep on|off`): a project whose `web` had no request for its
//! idle time has its web instances stopped (it *sleeps*); the ingress holds the next
//! request while the orchestrator starts them again (it *wakes*). The settings and whether
//! it sleeps now are stored (`Store::sleep`), so a server start leaves a sleeping project
//! asleep. The rules here are pure; the orchestrator (`orchestrator/sleep.rs`) applies them.

use std::time::Duration;

/// The idle time of a project that turns sleep on without saying one.
pub const DEFAULT_AFTER_MINUTES: u32 = 30;
/// The longest idle time accepted: a week.
pub const MAX_AFTER_MINUTES: u32 = 7 * 24 * 60;

/// A project's sleep settings and state. The default: off, awake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepState {
    /// Whether its web instances sleep when idle.
    pub enabled: bool,
    /// How long without a request before they do, in minutes (1 to [`MAX_AFTER_MINUTES`]).
    pub after_minutes: u32,
    /// Whether instances of its other process types (a worker) keep it awake while they
    /// run. Off: only `web`'s requests count, and the others keep running while web sleeps.
    pub workers_keep_awake: bool,
    /// Whether its web instances are stopped for sleep now.
    pub asleep: bool,
    /// Why its last wake failed; cleared by the next wake that succeeds.
    pub wake_error: Option<String>,
}

impl Default for SleepState {
    fn default() -> Self {
        SleepState {
            enabled: false,
            after_minutes: DEFAULT_AFTER_MINUTES,
            workers_keep_awake: true,
            asleep: false,
            wake_error: None,
        }
    }
}

impl SleepState {
    /// Checks an idle time given by a user.
    pub fn check_after_minutes(minutes: u32) -> crate::Result<u32> {
        if (1..=MAX_AFTER_MINUTES).contains(&minutes) {
            Ok(minutes)
        } else {
            Err(crate::Error::Invalid(format!(
                "after_minutes: give a number of minutes from 1 to {MAX_AFTER_MINUTES} (a week)"
            )))
        }
    }

    /// Whether a project in this state, whose web has had no request for `idle` (`None`:
    /// the ingress cannot tell, or a request is in flight), goes to sleep now. `minute` is
    /// how long a minute of `after_minutes` lasts (60 s; less in tests), `web_running`
    /// whether it has web instances, `others_running` whether instances of other process
    /// types run.
    pub fn sleeps_now(
        &self,
        idle: Option<Duration>,
        minute: Duration,
        web_running: bool,
        others_running: bool,
    ) -> bool {
        if !self.enabled || self.asleep || !web_running || (others_running && self.workers_keep_awake) {
            return false;
        }
        idle.is_some_and(|idle| idle >= minute * self.after_minutes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_sleeps() {
        let minute = Duration::from_secs(60);
        let on = SleepState { enabled: true, after_minutes: 5, ..SleepState::default() };
        let long = Some(Duration::from_secs(300));
        let short = Some(Duration::from_secs(299));
        // (state, idle, web running, others running, sleeps)
        let cases = [
            (on.clone(), long, true, false, true),
            (on.clone(), short, true, false, false),
            (on.clone(), None, true, false, false),
            (on.clone(), long, false, false, false),
            (on.clone(), long, true, true, false),
            (SleepState { workers_keep_awake: false, ..on.clone() }, long, true, true, true),
            (SleepState { asleep: true, ..on.clone() }, long, true, false, false),
            (SleepState { enabled: false, ..on.clone() }, long, true, false, false),
        ];
        for (i, (state, idle, web, others, expected)) in cases.into_iter().enumerate() {
            assert_eq!(state.sleeps_now(idle, minute, web, others), expected, "case {i}: {state:?}");
        }
        assert!(on.sleeps_now(Some(Duration::from_secs(5)), Duration::from_secs(1), true, false), "a test minute");
    }

    #[test]
    fn idle_time_bounds() {
        assert!(SleepState::check_after_minutes(0).is_err());
        assert_eq!(SleepState::check_after_minutes(1).ok(), Some(1));
        assert_eq!(SleepState::check_after_minutes(MAX_AFTER_MINUTES).ok(), Some(MAX_AFTER_MINUTES));
        assert!(SleepState::check_after_minutes(MAX_AFTER_MINUTES + 1).is_err());
    }
}
