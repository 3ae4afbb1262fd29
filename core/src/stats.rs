//! Resource figures of a project's instances over time (`paastech ps`, `GET
//! /projects/{name}/stats`, the web UI's chart): what a reading of [`Runtime::usage`] turns
//! into. Pure: the orchestrator takes the readings and keeps one [`UsageHistory`] per
//! project, in memory (a server restart starts the chart again).
//!
//! [`Runtime::usage`]: crate::drivers::Runtime::usage

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::domain::Timestamp;
use crate::drivers::Usage;

/// How often the orchestrator reads every running project's figures for its chart.
pub const STATS_INTERVAL: Duration = Duration::from_secs(30);

/// How far back the chart goes.
pub const HISTORY: Duration = Duration::from_secs(3600);

/// Two readings closer than this give no CPU share of their own: the counters' steps
/// (a clock tick, 10 ms) would make it noise. The share of the reading before is kept.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// A point of the chart: the project's instances together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsPoint {
    pub at: Timestamp,
    /// Percent of one CPU (two busy CPUs: 200); `None` when no instance had two readings.
    pub cpu_percent: Option<f64>,
    /// `None` when no instance's memory could be read.
    pub memory_bytes: Option<u64>,
}

/// One project's last reading and its chart.
#[derive(Debug, Default)]
pub struct UsageHistory {
    last: Option<(Timestamp, BTreeMap<String, Usage>)>,
    /// Each instance's CPU share at the last reading.
    shares: BTreeMap<String, f64>,
    points: VecDeque<StatsPoint>,
}

impl UsageHistory {
    /// Takes a reading made at `at` and answers each instance's CPU share since the
    /// reading before (instances read for the first time have none).
    pub fn record(&mut self, at: Timestamp, usage: &BTreeMap<String, Usage>) -> BTreeMap<String, f64> {
        if let Some((before, _)) = &self.last
            && at.0 - before.0 < MIN_GAP.as_millis() as i64
        {
            return self
                .shares
                .iter()
                .filter(|(id, _)| usage.contains_key(*id))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
        }
        let shares: BTreeMap<String, f64> = match &self.last {
            Some((before, previous)) => usage
                .iter()
                .filter_map(|(id, now)| {
                    let then = previous.get(id)?;
                    Some((id.clone(), cpu_percent((*before, then.cpu_ns?), (at, now.cpu_ns?))?))
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let memory =
            usage.values().filter_map(|u| u.memory_bytes).fold(None, |sum: Option<u64>, m| Some(sum.unwrap_or(0) + m));
        let cpu = (!shares.is_empty()).then(|| shares.values().sum());
        self.points.push_back(StatsPoint { at, cpu_percent: cpu, memory_bytes: memory });
        let oldest = at.0 - HISTORY.as_millis() as i64;
        while self.points.front().is_some_and(|p| p.at.0 < oldest) {
            self.points.pop_front();
        }
        self.last = Some((at, usage.clone()));
        self.shares = shares.clone();
        shares
    }

    /// The chart's points of the last hour, oldest first.
    pub fn points(&self) -> Vec<StatsPoint> {
        self.points.iter().copied().collect()
    }
}

/// The CPU share between two readings of a counter, in percent of one CPU. `None` when no
/// time passed or the counter went back (the container was made again).
pub fn cpu_percent(before: (Timestamp, u64), after: (Timestamp, u64)) -> Option<f64> {
    let wall_ms = after.0.0 - before.0.0;
    let used = after.1.checked_sub(before.1)?;
    (wall_ms > 0).then(|| used as f64 / (wall_ms as f64 * 1e6) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_ms: u64, memory: u64) -> Usage {
        Usage { cpu_ns: Some(cpu_ms * 1_000_000), memory_bytes: Some(memory), memory_limit_bytes: None }
    }

    fn reading(entries: &[(&str, Usage)]) -> BTreeMap<String, Usage> {
        entries.iter().map(|(id, u)| ((*id).to_owned(), *u)).collect()
    }

    #[test]
    fn the_cpu_share_is_the_counters_growth_over_the_wall_time() {
        assert_eq!(cpu_percent((Timestamp(0), 0), (Timestamp(2000), 1_000_000_000)), Some(50.0));
        assert_eq!(cpu_percent((Timestamp(0), 0), (Timestamp(1000), 2_000_000_000)), Some(200.0));
        assert_eq!(cpu_percent((Timestamp(1000), 5), (Timestamp(1000), 9)), None, "no time passed");
        assert_eq!(cpu_percent((Timestamp(0), 9), (Timestamp(1000), 5)), None, "a counter that went back");
    }

    #[test]
    fn readings_make_shares_and_points() {
        let mut history = UsageHistory::default();
        let first = history.record(Timestamp(10_000), &reading(&[("a", usage(100, 10)), ("b", usage(0, 20))]));
        assert!(first.is_empty(), "one reading has no share");
        let second = history.record(Timestamp(12_000), &reading(&[("a", usage(1100, 30)), ("c", usage(5, 1))]));
        assert_eq!(second, BTreeMap::from([("a".to_owned(), 50.0)]), "c is new, b is gone");
        let points = history.points();
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].cpu_percent, points[0].memory_bytes), (None, Some(30)));
        assert_eq!((points[1].cpu_percent, points[1].memory_bytes), (Some(50.0), Some(31)));
    }

    #[test]
    fn a_reading_too_soon_keeps_the_shares_before_and_adds_no_point() {
        let mut history = UsageHistory::default();
        history.record(Timestamp(0), &reading(&[("a", usage(0, 1))]));
        history.record(Timestamp(4000), &reading(&[("a", usage(1000, 1))]));
        let soon = history.record(Timestamp(4500), &reading(&[("a", usage(3000, 1))]));
        assert_eq!(soon, BTreeMap::from([("a".to_owned(), 25.0)]));
        assert_eq!(history.points().len(), 2);
    }

    #[test]
    fn figures_that_cannot_be_read_are_none_not_zero() {
        let mut history = UsageHistory::default();
        let blank = Usage::default();
        history.record(Timestamp(0), &reading(&[("a", blank)]));
        let shares = history.record(Timestamp(5000), &reading(&[("a", blank)]));
        assert!(shares.is_empty());
        assert_eq!(history.points()[1], StatsPoint { at: Timestamp(5000), cpu_percent: None, memory_bytes: None });
    }

    #[test]
    fn the_chart_keeps_the_last_hour() {
        let mut history = UsageHistory::default();
        for minute in 0..=90 {
            history.record(Timestamp(minute * 60_000), &reading(&[("a", usage(0, 1))]));
        }
        let points = history.points();
        assert_eq!(points.first().map(|p| p.at), Some(Timestamp(30 * 60_000)));
        assert_eq!(points.len(), 61);
    }
}
