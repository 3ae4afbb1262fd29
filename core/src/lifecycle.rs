//! What `paastech stop` left stopped of a project: the whole project, or some of its
//! process types. Stored (`Store::stopped`), so a server start leaves it stopped, and read
//! by every path that starts instances (a push, an env change, a rollback, scale, restore):
//! only `paastech start` starts a stopped process type again.

use std::collections::BTreeSet;

/// The stopped part of a project. The default is nothing stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    /// The whole project: every process type, also one a later push adds.
    all: bool,
    /// Process types stopped one by one; empty when `all`.
    types: BTreeSet<String>,
}

impl Stopped {
    /// How the store writes "the whole project": no process type can be named so (the
    /// Procfile allows letters, digits, `_` and `-`).
    pub const ALL: &'static str = "*";

    /// The whole project stopped.
    pub fn all() -> Stopped {
        Stopped { all: true, types: BTreeSet::new() }
    }

    /// Whether the whole project is stopped.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether nothing is stopped.
    pub fn is_empty(&self) -> bool {
        !self.all && self.types.is_empty()
    }

    /// Whether instances of `process` are kept stopped.
    pub fn contains(&self, process: &str) -> bool {
        self.all || self.types.contains(process)
    }

    /// The process types stopped one by one (none when the whole project is).
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(String::as_str)
    }

    /// Stops `process`, or the whole project with `None`.
    pub fn stop(&mut self, process: Option<&str>) {
        match process {
            None => *self = Stopped::all(),
            Some(_) if self.all => {}
            Some(process) => {
                self.types.insert(process.to_owned());
            }
        }
    }

    /// Starts `process`, or everything with `None`. Starting one type of a project stopped
    /// whole leaves every other type in `known` (the live deployment's) stopped.
    pub fn start<'a>(&mut self, process: Option<&str>, known: impl IntoIterator<Item = &'a str>) {
        match process {
            None => *self = Stopped::default(),
            Some(process) => {
                if self.all {
                    self.all = false;
                    self.types = known.into_iter().map(str::to_owned).collect();
                }
                self.types.remove(process);
            }
        }
    }

    /// The store's rows: [`Self::ALL`] alone, or one per stopped type.
    pub fn to_rows(&self) -> Vec<String> {
        if self.all { vec![Self::ALL.to_owned()] } else { self.types.iter().cloned().collect() }
    }

    /// Back from the store's rows.
    pub fn from_rows(rows: impl IntoIterator<Item = String>) -> Stopped {
        let mut stopped = Stopped::default();
        for row in rows {
            if row == Self::ALL {
                return Stopped::all();
            }
            stopped.types.insert(row);
        }
        stopped
    }

    /// `plan` (process type → instance count) with the stopped types at zero.
    pub fn apply(&self, plan: Vec<(String, u32)>) -> Vec<(String, u32)> {
        plan.into_iter()
            .map(|(process, count)| if self.contains(&process) { (process, 0) } else { (process, count) })
            .collect()
    }

    /// What the API shows: the stopped types of those `known`, in order.
    pub fn of<'a>(&self, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out: Vec<String> = known.into_iter().filter(|p| self.contains(p)).map(str::to_owned).collect();
        // A type stopped one by one that the live deployment no longer has is still shown.
        for process in &self.types {
            if !out.contains(process) {
                out.push(process.clone());
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_and_starts() {
        let known = ["web", "worker", "clock"];
        // (steps, stopped web, stopped worker, stopped clock, whole project)
        type Step = (&'static str, Option<&'static str>);
        let cases: &[(&[Step], [bool; 3], bool)] = &[
            (&[], [false, false, false], false),
            (&[("stop", None)], [true, true, true], true),
            (&[("stop", Some("worker"))], [false, true, false], false),
            (&[("stop", Some("worker")), ("stop", None)], [true, true, true], true),
            (&[("stop", None), ("stop", Some("worker"))], [true, true, true], true),
            (&[("stop", None), ("start", None)], [false, false, false], false),
            (&[("stop", None), ("start", Some("web"))], [false, true, true], false),
            (&[("stop", Some("worker")), ("start", Some("worker"))], [false, false, false], false),
            (&[("stop", Some("worker")), ("start", Some("web"))], [false, true, false], false),
            (&[("stop", Some("worker")), ("stop", Some("web")), ("start", None)], [false, false, false], false),
        ];
        for (steps, expected, all) in cases {
            let mut stopped = Stopped::default();
            for (verb, process) in *steps {
                match *verb {
                    "stop" => stopped.stop(*process),
                    _ => stopped.start(*process, known),
                }
            }
            let got = known.map(|p| stopped.contains(p));
            assert_eq!(&got, expected, "{steps:?}");
            assert_eq!(stopped.is_all(), *all, "{steps:?}");
            assert_eq!(Stopped::from_rows(stopped.to_rows()), stopped, "{steps:?} survives the store");
        }
    }

    #[test]
    fn a_stopped_type_runs_no_instance() {
        let mut stopped = Stopped::default();
        stopped.stop(Some("worker"));
        let plan = vec![("web".to_owned(), 2), ("worker".to_owned(), 3)];
        assert_eq!(stopped.apply(plan.clone()), vec![("web".to_owned(), 2), ("worker".to_owned(), 0)]);
        assert_eq!(Stopped::all().apply(plan), vec![("web".to_owned(), 0), ("worker".to_owned(), 0)]);
        assert_eq!(Stopped::all().of(["worker", "web"]), vec!["web", "worker"]);
        assert!(Stopped::default().is_empty());
    }
}
