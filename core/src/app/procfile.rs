//! The Procfile: one `name: command` line per process type.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Parses a Procfile into process type → command.
///
/// Blank lines and lines starting with `#` are skipped. A type name is
/// `[a-zA-Z0-9_-]+`; the command is everything after the first colon, trimmed, and is
/// kept verbatim (it is the app's own shell command). Errors name the 1-based line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>> {
    let mut processes = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            return Err(invalid(number, "expected `name: command` but found no colon"));
        };
        let name = name.trim();
        if !is_valid_name(name) {
            return Err(invalid(number, &format!("invalid process type {name:?}: use letters, digits, `_` and `-`")));
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(invalid(number, &format!("process type {name:?} has an empty command")));
        }
        if processes.insert(name.to_owned(), command.to_owned()).is_some() {
            return Err(invalid(number, &format!("process type {name:?} is declared twice")));
        }
    }
    if processes.is_empty() {
        return Err(Error::Invalid("Procfile declares no process types".into()));
    }
    Ok(processes)
}

/// The Procfile line that is no process type: its command runs once per new deployment
/// (a push or a config change, not a rollback), before any instance of it starts, as on
/// Heroku and Dokku.
pub const RELEASE: &str = "release";

/// Whether `name` is the release command's line rather than a process type.
pub fn is_release(name: &str) -> bool {
    name == RELEASE
}

/// `[a-zA-Z0-9_-]+`, the names Heroku and Piku accept.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn invalid(line: usize, why: &str) -> Error {
    Error::Invalid(format!("Procfile line {line}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn good_procfiles() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("web: python3 app.py", &[("web", "python3 app.py")]),
            ("web: python3 app.py\n", &[("web", "python3 app.py")]),
            (
                "# comment\n\nweb: npm start\n  worker:   node worker.js  \n",
                &[("web", "npm start"), ("worker", "node worker.js")],
            ),
            ("web:gunicorn app:app -b :$PORT", &[("web", "gunicorn app:app -b :$PORT")]),
            ("web: a\r\nclock-2_b: b\r\n", &[("web", "a"), ("clock-2_b", "b")]),
            ("   # indented comment\nWeb: x # not a comment", &[("Web", "x # not a comment")]),
        ];
        for (text, expected) in cases {
            let got = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(got, map(expected), "{text:?}");
        }
    }

    #[test]
    fn malformed_procfiles() {
        let cases = [
            ("web python3 app.py", "line 1", "no colon"),
            ("web: a\n\nworker", "line 3", "no colon"),
            ("web: a\nweb: b", "line 2", "declared twice"),
            ("web:", "line 1", "empty command"),
            ("# c\nweb:    \n", "line 2", "empty command"),
            (": run", "line 1", "invalid process type"),
            ("my web: run", "line 1", "invalid process type"),
            ("wéb: run", "line 1", "invalid process type"),
            ("web.1: run", "line 1", "invalid process type"),
            ("", "", "no process types"),
            ("# only a comment\n\n", "", "no process types"),
        ];
        for (text, line, why) in cases {
            match parse(text) {
                Err(Error::Invalid(message)) => {
                    assert!(message.contains(line), "{text:?}: {message}");
                    assert!(message.contains(why), "{text:?}: {message}");
                }
                other => panic!("{text:?}: expected an invalid error, got {other:?}"),
            }
        }
    }
}
