//! Scheduled jobs, declared as Dokku reads them: a repository's `app.json` at its root,
//! `{"cron": [{"command": "...", "schedule": "*/5 * * * *"}]}`. Pure logic only: reading
//! and checking `app.json` (at build time, so a bad entry fails the push), the schedule
//! (5-field cron by `croner`, in UTC or the entry's IANA `timezone`), and the per-job rule
//! of when to run (never two runs of one job at once; a missed time is not caught up).
//! The scheduler that runs jobs lives in `orchestrator/cron.rs`.

use std::path::Path;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::domain::Timestamp;
use crate::error::{Error, Result};

/// The file, at the root of the pushed tree, that declares the jobs.
pub const APP_JSON: &str = "app.json";
/// How many runs of each job the store keeps (the newest).
pub const KEPT_RUNS: i64 = 20;
/// The most jobs one `app.json` may declare.
pub const MAX_JOBS: usize = 100;
/// The most an `app.json` may weigh; it is read whole at build time.
const MAX_APP_JSON_BYTES: u64 = 1024 * 1024;
/// The most a job's command may weigh.
const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// One scheduled job of a build, as its `app.json` declared it (already checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJob {
    /// Run as `sh -c COMMAND` in the live deployment.
    pub command: String,
    /// A standard 5-field cron pattern (minute hour day-of-month month day-of-week).
    pub schedule: String,
    /// An IANA time zone name the schedule is read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl CronJob {
    /// The job's schedule, ready to give times.
    pub fn schedule(&self) -> Result<Schedule> {
        Schedule::parse(&self.schedule, self.timezone.as_deref())
    }

    /// The job's name, and its source in the project log: `cron.N`, N its number (1 for
    /// the first entry of `app.json`'s list, as `web.1` is the first web instance).
    pub fn name(index: usize) -> String {
        format!("cron.{}", index + 1)
    }
}

/// An `app.json` cron entry as written; unknown keys are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    command: String,
    schedule: String,
    #[serde(default)]
    timezone: Option<String>,
}

/// Reads `app.json` at the root of `source`: its jobs, none when there is no such file.
/// A file that is not valid, or a bad entry, is an `Invalid` error naming the entry.
pub fn read_app_json(source: &Path) -> Result<Vec<CronJob>> {
    let path = source.join(APP_JSON);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::Invalid(format!("{APP_JSON}: cannot be read: {err}"))),
    };
    if !meta.is_file() {
        return Err(Error::Invalid(format!("{APP_JSON}: not a regular file")));
    }
    if meta.len() > MAX_APP_JSON_BYTES {
        return Err(Error::Invalid(format!("{APP_JSON}: larger than {} KiB", MAX_APP_JSON_BYTES / 1024)));
    }
    let text =
        std::fs::read_to_string(&path).map_err(|err| Error::Invalid(format!("{APP_JSON}: cannot be read: {err}")))?;
    parse_app_json(&text)
}

/// The jobs of an `app.json` text. Other top-level keys (Dokku's `scripts`,
/// `healthchecks`, …) are left alone; inside `cron`, every entry must be complete and
/// valid, and the first one that is not is named in the error by its place in the list
/// (counted from 0, as `jq '.cron[0]'` does) and its job name (`app.json cron[1] (cron.2): …`).
pub fn parse_app_json(text: &str) -> Result<Vec<CronJob>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| Error::Invalid(format!("{APP_JSON}: not valid JSON: {err}")))?;
    let serde_json::Value::Object(mut top) = value else {
        return Err(Error::Invalid(format!("{APP_JSON}: must be a JSON object")));
    };
    let entries = match top.remove("cron") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(entries)) => entries,
        Some(_) => return Err(Error::Invalid(format!("{APP_JSON} cron: must be a list of jobs"))),
    };
    if entries.len() > MAX_JOBS {
        return Err(Error::Invalid(format!("{APP_JSON} cron: more than {MAX_JOBS} jobs")));
    }
    entries.into_iter().enumerate().map(|(index, entry)| parse_entry(index, entry)).collect()
}

fn parse_entry(index: usize, entry: serde_json::Value) -> Result<CronJob> {
    let invalid = |why: String| Error::Invalid(format!("{APP_JSON} cron[{index}] ({}): {why}", CronJob::name(index)));
    let entry: Entry = serde_json::from_value(entry).map_err(|err| invalid(err.to_string()))?;
    if entry.command.trim().is_empty() {
        return Err(invalid("command is empty".into()));
    }
    if entry.command.len() > MAX_COMMAND_BYTES {
        return Err(invalid(format!("command is longer than {} KiB", MAX_COMMAND_BYTES / 1024)));
    }
    if entry.command.contains('\0') {
        return Err(invalid("command contains a NUL byte".into()));
    }
    let job = CronJob { command: entry.command, schedule: entry.schedule, timezone: entry.timezone };
    job.schedule().map_err(|err| invalid(err.to_string()))?;
    Ok(job)
}

/// A job's schedule: when it runs, in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: jiff::tz::TimeZone,
}

impl Schedule {
    /// A standard 5-field pattern (no seconds, no year; `@hourly`-style nicknames and
    /// names of months and days allowed), read in `timezone` (IANA) or UTC.
    pub fn parse(pattern: &str, timezone: Option<&str>) -> Result<Schedule> {
        if pattern.split_whitespace().count() != 5 && !pattern.trim_start().starts_with('@') {
            return Err(Error::Invalid(format!(
                "schedule {pattern:?}: needs 5 fields (minute hour day-of-month month day-of-week)"
            )));
        }
        check_steps(pattern)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|err| Error::Invalid(format!("schedule {pattern:?}: {err}")))?;
        let zone = match timezone {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|_| Error::Invalid(format!("timezone {name:?}: not a known IANA time zone")))?,
        };
        // A pattern that never matches (`0 0 30 2 *`) would make a job that never runs.
        let schedule = Schedule { cron, zone };
        if schedule.next_after(Timestamp(0)).is_none() {
            return Err(Error::Invalid(format!("schedule {pattern:?}: never matches a date")));
        }
        Ok(schedule)
    }

    /// The first time strictly after `after` the job is due, to the minute; `None` if it
    /// never is again.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let instant = jiff::Timestamp::from_millisecond(after.0).ok()?;
        let zoned = instant.to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(Timestamp(next.timestamp().as_millisecond()))
    }
}

/// Refuses a step wider than its field (`*/61` minutes): croner reads it as "only the
/// first value", which is not what its author meant.
fn check_steps(pattern: &str) -> Result<()> {
    const FIELDS: [(&str, u32); 5] =
        [("minute", 60), ("hour", 24), ("day-of-month", 31), ("month", 12), ("day-of-week", 7)];
    for (field, (name, span)) in pattern.split_whitespace().zip(FIELDS) {
        for part in field.split(',') {
            let Some((_, step)) = part.split_once('/') else { continue };
            match step.parse::<u32>() {
                Ok(step) if step == 0 || step > span => {
                    return Err(Error::Invalid(format!(
                        "schedule {pattern:?}: step {step} of the {name} field is not between 1 and {span}"
                    )));
                }
                // Not a number: croner says what is wrong with it.
                _ => {}
            }
        }
    }
    Ok(())
}

/// What a job's timer decided at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// Run now, for this scheduled time.
    Run(Timestamp),
    /// The previous run is still going: this scheduled time is skipped (and recorded so).
    Skip(Timestamp),
}

/// One job's clock: the next time it is due, and whether a run of it is going. Time is
/// passed in, so the rule is tested without waiting.
#[derive(Debug, Clone)]
pub struct JobTimer {
    schedule: Schedule,
    next: Option<Timestamp>,
    running: bool,
}

impl JobTimer {
    /// Starts at `now`: the first time is the next one after it, so times missed before
    /// (while the server was down, or before this deployment went live) are not run.
    pub fn new(schedule: Schedule, now: Timestamp) -> JobTimer {
        let next = schedule.next_after(now);
        JobTimer { schedule, next, running: false }
    }

    /// When the job is next due.
    pub fn next(&self) -> Option<Timestamp> {
        self.next
    }

    /// At `now`: nothing when the next time has not come; else that time is taken (run,
    /// or skipped when a run is still going) and the next one is the first after `now`,
    /// so a timer that was not asked for a while fires once, not once per missed time.
    pub fn tick(&mut self, now: Timestamp) -> Option<Fire> {
        let due = self.next.filter(|due| *due <= now)?;
        self.next = self.schedule.next_after(now);
        if self.running {
            Some(Fire::Skip(due))
        } else {
            self.running = true;
            Some(Fire::Run(due))
        }
    }

    /// The run that `tick` started has ended.
    pub fn finished(&mut self) {
        self.running = false;
    }
}

/// How a scheduled time of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CronOutcome {
    /// The command exited 0.
    Succeeded,
    /// It exited non-zero, timed out, or could not start (`error` says which).
    Failed,
    /// Not run: the previous run of the job was still going.
    Skipped,
}

impl CronOutcome {
    pub const ALL: [CronOutcome; 3] = [CronOutcome::Succeeded, CronOutcome::Failed, CronOutcome::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            CronOutcome::Succeeded => "succeeded",
            CronOutcome::Failed => "failed",
            CronOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| Error::internal_msg(format!("unknown cron outcome {s:?} in store")))
    }
}

/// One scheduled time of a job: run or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronRun {
    pub project_id: i64,
    /// The job's number: 1 for the first entry of `app.json`'s list (`cron.1`).
    pub job: u32,
    pub command: String,
    pub schedule: String,
    /// The deployment it ran in.
    pub version: i64,
    /// The time the schedule named.
    pub scheduled_at: Timestamp,
    /// When it started and ended; `None` for a skipped time.
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub outcome: CronOutcome,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why it failed without an exit code, or why it was skipped.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2026-12-06T01:50:30Z`-style times, for readable tests.
    fn at(text: &str) -> Timestamp {
        let ts: jiff::Timestamp = text.parse().expect("test time");
        Timestamp(ts.as_millisecond())
    }

    fn show(ts: Timestamp) -> String {
        jiff::Timestamp::from_millisecond(ts.0).expect("valid").to_string()
    }

    #[test]
    fn app_json_entries_are_read() {
        let jobs = parse_app_json(
            r#"{"name": "x", "scripts": {"dokku": {}}, "cron": [
                {"command": "echo hi", "schedule": "*/5 * * * *"},
                {"command": "./report", "schedule": "0 3 * * MON", "timezone": "Europe/Paris"}
            ]}"#,
        )
        .expect("valid");
        assert_eq!(
            jobs,
            vec![
                CronJob { command: "echo hi".into(), schedule: "*/5 * * * *".into(), timezone: None },
                CronJob {
                    command: "./report".into(),
                    schedule: "0 3 * * MON".into(),
                    timezone: Some("Europe/Paris".into())
                },
            ]
        );
        assert_eq!(parse_app_json("{}").expect("no cron"), vec![]);
        assert_eq!(parse_app_json(r#"{"cron": []}"#).expect("empty cron"), vec![]);
    }

    #[test]
    fn bad_app_json_is_refused_naming_the_entry() {
        let ok = r#"{"command": "true", "schedule": "* * * * *"}"#;
        let cases: &[(String, &str)] = &[
            ("{".into(), "app.json: not valid JSON"),
            ("[]".into(), "app.json: must be a JSON object"),
            (r#"{"cron": {}}"#.into(), "app.json cron: must be a list of jobs"),
            (
                format!(r#"{{"cron": [{ok}, {{"command": "x", "schedule": "*/61 * * * *"}}]}}"#),
                "app.json cron[1] (cron.2): schedule \"*/61 * * * *\"",
            ),
            (
                r#"{"cron": [{"command": " ", "schedule": "* * * * *"}]}"#.into(),
                "app.json cron[0] (cron.1): command is empty",
            ),
            (r#"{"cron": [{"schedule": "* * * * *"}]}"#.into(), "app.json cron[0] (cron.1): missing field `command`"),
            (r#"{"cron": [{"command": "x"}]}"#.into(), "app.json cron[0] (cron.1): missing field `schedule`"),
            (
                format!(r#"{{"cron": [{ok}, {ok}, {{"command": "x", "schedule": "* * * * *", "every": 3}}]}}"#),
                "app.json cron[2] (cron.3): unknown field `every`",
            ),
            (
                r#"{"cron": [{"command": "x", "schedule": "0 * * * * *"}]}"#.into(),
                "app.json cron[0] (cron.1): schedule \"0 * * * * *\": needs 5 fields",
            ),
            (r#"{"cron": [{"command": "x", "schedule": "* * * *"}]}"#.into(), "needs 5 fields"),
            (
                r#"{"cron": [{"command": "x", "schedule": "60 * * * *"}]}"#.into(),
                "app.json cron[0] (cron.1): schedule \"60 * * * *\"",
            ),
            (r#"{"cron": [{"command": "x", "schedule": "0 0 30 2 *"}]}"#.into(), "never matches"),
            (
                r#"{"cron": [{"command": "x", "schedule": "* * * * *", "timezone": "Mars/Olympus"}]}"#.into(),
                "app.json cron[0] (cron.1): timezone \"Mars/Olympus\": not a known IANA time zone",
            ),
            (r#"{"cron": [3]}"#.into(), "app.json cron[0] (cron.1): invalid type"),
        ];
        for (text, expected) in cases {
            match parse_app_json(text) {
                Err(Error::Invalid(message)) => {
                    assert!(message.contains(expected), "{text}: {message:?} should contain {expected:?}")
                }
                other => panic!("{text}: expected an invalid error, got {other:?}"),
            }
        }
    }

    #[test]
    fn app_json_is_read_from_the_tree_when_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_app_json(dir.path()).expect("no file, no jobs"), vec![]);
        std::fs::write(dir.path().join(APP_JSON), r#"{"cron": [{"command": "true", "schedule": "@hourly"}]}"#)
            .expect("write");
        assert_eq!(read_app_json(dir.path()).expect("valid").len(), 1);
        std::fs::write(dir.path().join(APP_JSON), r#"{"cron": [{"command": "true", "schedule": "nope"}]}"#)
            .expect("write");
        assert!(
            matches!(read_app_json(dir.path()), Err(Error::Invalid(m)) if m.starts_with("app.json cron[0] (cron.1): "))
        );
    }

    #[test]
    fn next_times_follow_the_pattern_in_utc_or_the_zone() {
        let every_5 = Schedule::parse("*/5 * * * *", None).expect("valid");
        assert_eq!(show(every_5.next_after(at("2026-12-06T01:50:30Z")).expect("next")), "2026-12-06T01:55:00Z");
        // Strictly after: a time exactly on the pattern gives the following one.
        assert_eq!(show(every_5.next_after(at("2026-12-06T01:55:00Z")).expect("next")), "2026-12-06T02:00:00Z");
        let daily_3 = Schedule::parse("0 3 * * *", None).expect("valid");
        assert_eq!(show(daily_3.next_after(at("2026-12-06T03:00:01Z")).expect("next")), "2026-12-07T03:00:00Z");
        // 03:00 in Paris is 02:00 UTC in winter, 01:00 UTC in summer.
        let paris = Schedule::parse("0 3 * * *", Some("Europe/Paris")).expect("valid");
        assert_eq!(show(paris.next_after(at("2026-12-06T00:00:00Z")).expect("next")), "2026-12-06T02:00:00Z");
        assert_eq!(show(paris.next_after(at("2026-07-01T00:00:00Z")).expect("next")), "2026-07-01T01:00:00Z");
        let mondays = Schedule::parse("30 8 * * MON", None).expect("valid");
        // 2026-12-06 is a Sunday.
        assert_eq!(show(mondays.next_after(at("2026-12-06T12:00:00Z")).expect("next")), "2026-12-07T08:30:00Z");
    }

    #[test]
    fn a_timer_runs_at_its_times_and_skips_while_running() {
        let schedule = Schedule::parse("* * * * *", None).expect("valid");
        let mut timer = JobTimer::new(schedule, at("2026-12-06T01:50:30Z"));
        assert_eq!(timer.next(), Some(at("2026-12-06T01:51:00Z")));
        assert_eq!(timer.tick(at("2026-12-06T01:50:59Z")), None);
        assert_eq!(timer.tick(at("2026-12-06T01:51:00Z")), Some(Fire::Run(at("2026-12-06T01:51:00Z"))));
        assert_eq!(timer.tick(at("2026-12-06T01:51:30Z")), None);
        // Still running at the next time: that time is skipped, not queued.
        assert_eq!(timer.tick(at("2026-12-06T01:52:00.200Z")), Some(Fire::Skip(at("2026-12-06T01:52:00Z"))));
        timer.finished();
        assert_eq!(timer.tick(at("2026-12-06T01:52:30Z")), None);
        assert_eq!(timer.tick(at("2026-12-06T01:53:00Z")), Some(Fire::Run(at("2026-12-06T01:53:00Z"))));
    }

    #[test]
    fn missed_times_are_not_caught_up() {
        let schedule = Schedule::parse("*/10 * * * *", None).expect("valid");
        // A timer made after a server start begins after it: the times before are gone.
        let mut timer = JobTimer::new(schedule.clone(), at("2026-12-06T01:55:00Z"));
        assert_eq!(timer.next(), Some(at("2026-12-06T02:00:00Z")));
        // Not asked for 35 minutes (a stalled loop): one run, then the first time after now.
        assert_eq!(timer.tick(at("2026-12-06T02:35:10Z")), Some(Fire::Run(at("2026-12-06T02:00:00Z"))));
        assert_eq!(timer.next(), Some(at("2026-12-06T02:40:00Z")));
        timer.finished();
        assert_eq!(timer.tick(at("2026-12-06T02:39:59Z")), None);
    }

    #[test]
    fn outcome_names_round_trip() {
        for outcome in CronOutcome::ALL {
            assert_eq!(CronOutcome::parse(outcome.as_str()).ok(), Some(outcome));
        }
        assert!(CronOutcome::parse("exploded").is_err());
    }
}
