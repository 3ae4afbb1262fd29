//! When to order: renewals and retries. Pure logic over times.

use std::time::{Duration, SystemTime};

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// When a third of the lifetime is left: the renewal starts then, which leaves time
    /// for retries before the certificate expires (30 days of a 90-day certificate).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        self.not_before + lifetime * 2 / 3
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// How long to wait after the `failures`th failure in a row: `first`, doubled each time,
/// at most `max`.
pub(crate) fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    first.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renews_when_a_third_of_the_lifetime_is_left() {
        let ninety_days = Validity { not_before: at(0), not_after: at(90 * 86_400) };
        assert_eq!(ninety_days.renew_at(), at(60 * 86_400));
        let short = Validity { not_before: at(1000), not_after: at(1030) };
        assert_eq!(short.renew_at(), at(1020));
        assert!(!short.expired(at(1029)));
        assert!(short.expired(at(1030)));
        // A certificate that ends before it starts is due at once.
        let odd = Validity { not_before: at(50), not_after: at(10) };
        assert_eq!(odd.renew_at(), at(50));
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let (first, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, first, max).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(0, first, max), first, "no failure counted yet: the first wait");
        assert_eq!(backoff(u32::MAX, first, max), max, "never overflows");
    }
}
