//! Which interpreter version an app asks for, as Heroku's buildpacks read it: Python's
//! `.python-version` (or the older `runtime.txt`, `python-3.12.4`), Node's `engines.node`
//! in `package.json` (an npm range). Reading those files and matching what they ask
//! against the interpreters a builder found (`Interpreter`) is pure logic, tested here;
//! finding the interpreters on the machine is the builder's.

use std::fmt;
use std::path::{Path, PathBuf};

use semver::{Version, VersionReq};

use crate::{Error, Result};

/// A file of the app larger than this is not a version file.
const MAX_VERSION_FILE_BYTES: u64 = 64 * 1024;

/// An interpreter found on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub version: Version,
    /// What to run (for Python, `python3.X` or an absolute path; for Node, the `node`
    /// binary, whose directory also holds its `npm`).
    pub path: PathBuf,
}

/// A Python version an app asks for: `3.12` (any 3.12.x, the newest found) or `3.12.4`
/// (exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonWanted {
    pub major: u64,
    pub minor: u64,
    pub patch: Option<u64>,
    /// The file that asked.
    pub file: &'static str,
}

impl PythonWanted {
    pub fn matches(&self, version: &Version) -> bool {
        version.major == self.major
            && version.minor == self.minor
            && self.patch.is_none_or(|patch| version.patch == patch)
            && version.pre.is_empty()
    }
}

impl fmt::Display for PythonWanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(patch) => write!(f, "{}.{}.{patch}", self.major, self.minor),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

/// The Python version the app in `dir` asks for, if it asks: `.python-version` first (what
/// pyenv, uv and Heroku read), else `runtime.txt`. A file that asks for something else than
/// a CPython version is an error naming it.
pub fn python_wanted(dir: &Path) -> Result<Option<PythonWanted>> {
    if let Some(text) = read_small(dir, ".python-version")? {
        let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')) else {
            return Err(Error::Invalid(".python-version is empty: write a version such as 3.12".into()));
        };
        return parse_python(line, ".python-version").map(Some);
    }
    if let Some(text) = read_small(dir, "runtime.txt")? {
        let line = text.trim();
        let Some(version) = line.strip_prefix("python-") else {
            return Err(Error::Invalid(format!(
                "runtime.txt asks for {line:?}: write python-3.12 (or python-3.12.4), or use .python-version"
            )));
        };
        return parse_python(version, "runtime.txt").map(Some);
    }
    Ok(None)
}

fn parse_python(text: &str, file: &'static str) -> Result<PythonWanted> {
    let refuse = || {
        Error::Invalid(format!("{file} asks for {text:?}: only CPython versions such as 3.12 or 3.12.4 are supported"))
    };
    let parts: Vec<&str> = text.split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(refuse());
    }
    let number = |part: &str| -> Result<u64> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 6 {
            return Err(refuse());
        }
        part.parse().map_err(|_| refuse())
    };
    let major = number(parts[0])?;
    if major != 3 {
        return Err(Error::Invalid(format!("{file} asks for Python {text}: only Python 3 is supported")));
    }
    Ok(PythonWanted { major, minor: number(parts[1])?, patch: parts.get(2).map(|p| number(p)).transpose()?, file })
}

/// A Node range an app asks for in `package.json`'s `engines.node`, read as npm reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWanted {
    /// As written.
    pub asked: String,
    /// Any one of these (npm's `||`).
    pub alternatives: Vec<VersionReq>,
}

impl NodeWanted {
    pub fn matches(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|req| req.matches(version))
    }
}

/// The Node range `package.json` in `dir` asks for, if it has `engines.node`.
pub fn node_wanted(dir: &Path) -> Result<Option<NodeWanted>> {
    let Some(text) = read_small(dir, "package.json")? else { return Ok(None) };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| Error::Invalid(format!("package.json is not valid JSON: {err}")))?;
    let Some(asked) = json.get("engines").and_then(|engines| engines.get("node")) else {
        return Ok(None);
    };
    let Some(asked) = asked.as_str() else {
        return Err(Error::Invalid(format!(
            "package.json engines.node must be a string such as \">=20\", not {asked}"
        )));
    };
    parse_npm_range(asked).map(Some).map_err(|why| {
        Error::Invalid(format!("package.json engines.node {asked:?} is not a range this server reads: {why}"))
    })
}

/// An npm range (`>=18`, `^20.1`, `18.x`, `18 || 20`, `>=18 <21`, `18 - 20`) as semver
/// requirements, one per `||` alternative. A bare version is npm's X-range (`18.1` means
/// `18.1.x`, `18.1.2` exactly that), not Cargo's caret.
fn parse_npm_range(asked: &str) -> std::result::Result<NodeWanted, String> {
    let mut alternatives = Vec::new();
    for alternative in asked.split("||") {
        let alternative = alternative.trim();
        let comparators: Vec<String> = if alternative.is_empty() || matches!(alternative, "*" | "x" | "X") {
            vec!["*".to_owned()]
        } else if let Some((low, high)) = alternative.split_once(" - ") {
            vec![format!(">={}", partial(low.trim())?), format!("<={}", partial(high.trim())?)]
        } else {
            // `>= 18` is `>=18`: an operator alone joins the version after it.
            let mut tokens: Vec<String> = Vec::new();
            let mut operator = String::new();
            for token in alternative.split_whitespace() {
                if token.chars().all(|c| matches!(c, '<' | '>' | '=' | '~' | '^')) {
                    operator.push_str(token);
                } else {
                    tokens.push(format!("{operator}{token}"));
                    operator.clear();
                }
            }
            if !operator.is_empty() {
                return Err(format!("{operator:?} has no version after it"));
            }
            tokens.iter().map(|token| comparator(token)).collect::<std::result::Result<_, _>>()?
        };
        let req = VersionReq::parse(&comparators.join(", ")).map_err(|err| err.to_string())?;
        alternatives.push(req);
    }
    Ok(NodeWanted { asked: asked.to_owned(), alternatives })
}

/// One npm comparator as a semver one.
fn comparator(token: &str) -> std::result::Result<String, String> {
    let split = token.find(|c: char| !matches!(c, '<' | '>' | '=' | '~' | '^')).unwrap_or(token.len());
    let (operator, version) = token.split_at(split);
    let version = version.strip_prefix('v').unwrap_or(version);
    if version.is_empty() {
        return Err(format!("{token:?} has no version"));
    }
    match operator {
        // A bare (or `=`) version: npm's X-range.
        "" | "=" => {
            let parts = version.split('.').count();
            let wild = version.split('.').any(|p| matches!(p, "x" | "X" | "*"));
            Ok(match (parts, wild) {
                (3, false) => format!("={version}"),
                (_, true) => version.replace(['x', 'X'], "*"),
                (_, false) => format!("{version}.*"),
            })
        }
        "<" | "<=" | ">" | ">=" | "~" | "^" => Ok(format!("{operator}{}", version.replace(['x', 'X'], "*"))),
        other => Err(format!("unknown operator {other:?}")),
    }
}

/// A version of a hyphen range's end (`18`, `18.1`, `18.1.2`), as written.
fn partial(version: &str) -> std::result::Result<String, String> {
    let version = version.strip_prefix('v').unwrap_or(version);
    if version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        Ok(version.to_owned())
    } else {
        Err(format!("{version:?} is not a version"))
    }
}

/// The newest of `found` that `matches`, or an error naming what `file` asked and what
/// the server has.
pub fn choose<'a>(
    language: &str,
    asked: &str,
    file: &str,
    found: &'a [Interpreter],
    matches: impl Fn(&Version) -> bool,
) -> Result<&'a Interpreter> {
    if let Some(best) = found.iter().filter(|i| matches(&i.version)).max_by(|a, b| a.version.cmp(&b.version)) {
        return Ok(best);
    }
    let mut versions: Vec<String> = found.iter().map(|i| i.version.to_string()).collect();
    versions.sort();
    versions.dedup();
    let has = if versions.is_empty() { "none".to_owned() } else { versions.join(", ") };
    Err(Error::Invalid(format!(
        "{file} asks for {language} {asked}, which this server does not have (it has: {has}); ask for one of those, or ask the operator to install it"
    )))
}

/// A small regular file of the app (never a symlink: it may point anywhere on the server).
pub(crate) fn read_small(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    let Ok(meta) = std::fs::symlink_metadata(&path) else { return Ok(None) };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_VERSION_FILE_BYTES {
        return Err(Error::Invalid(format!("{name} is larger than {MAX_VERSION_FILE_BYTES} bytes")));
    }
    std::fs::read_to_string(&path).map(Some).map_err(|err| Error::Invalid(format!("{name} cannot be read: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    fn v(text: &str) -> Version {
        Version::parse(text).expect("version")
    }

    fn found(versions: &[&str]) -> Vec<Interpreter> {
        versions
            .iter()
            .map(|text| Interpreter { version: v(text), path: PathBuf::from(format!("/py/{text}")) })
            .collect()
    }

    #[test]
    fn python_versions_are_read_from_python_version_then_runtime_txt() {
        type Files<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Files, Option<&str>)] = &[
            (&[], None),
            (&[(".python-version", "3.12\n")], Some("3.12 .python-version")),
            (&[(".python-version", "# pinned\n\n 3.12.4 \n")], Some("3.12.4 .python-version")),
            (&[("runtime.txt", "python-3.11.2\n")], Some("3.11.2 runtime.txt")),
            (&[(".python-version", "3.13"), ("runtime.txt", "python-3.11")], Some("3.13 .python-version")),
        ];
        for (files, expected) in cases {
            let dir = dir_with(files);
            let wanted = python_wanted(dir.path()).expect("read");
            assert_eq!(wanted.map(|w| format!("{w} {}", w.file)).as_deref(), *expected, "{files:?}");
        }
    }

    #[test]
    fn unsupported_python_versions_are_refused_naming_the_file() {
        let cases: &[(&str, &str, &str)] = &[
            (".python-version", "pypy3.10", ".python-version asks for \"pypy3.10\""),
            (".python-version", "system", ".python-version asks for \"system\""),
            (".python-version", "2.7.18", "only Python 3"),
            (".python-version", "3", ".python-version asks for \"3\""),
            (".python-version", "", ".python-version is empty"),
            ("runtime.txt", "3.12", "runtime.txt asks for \"3.12\""),
            ("runtime.txt", "python-3.x", "runtime.txt asks for \"3.x\""),
        ];
        for (file, text, message) in cases {
            let dir = dir_with(&[(file, text)]);
            let err = python_wanted(dir.path()).expect_err(text).to_string();
            assert!(err.contains(message), "{file} {text:?}: {err}");
        }
    }

    #[test]
    fn the_newest_matching_python_is_chosen_and_a_missing_one_named() {
        let found = found(&["3.11.2", "3.11.7", "3.12.1", "3.13.0"]);
        let want = |major, minor, patch| PythonWanted { major, minor, patch, file: ".python-version" };
        let pick = |w: PythonWanted| {
            choose("Python", &w.to_string(), w.file, &found, |version| w.matches(version))
                .map(|i| i.version.to_string())
        };
        assert_eq!(pick(want(3, 11, None)).expect("3.11"), "3.11.7");
        assert_eq!(pick(want(3, 11, Some(2))).expect("3.11.2"), "3.11.2");
        assert_eq!(pick(want(3, 13, None)).expect("3.13"), "3.13.0");
        let err = pick(want(3, 14, None)).expect_err("3.14").to_string();
        assert!(err.contains(".python-version asks for Python 3.14"), "{err}");
        assert!(err.contains("it has: 3.11.2, 3.11.7, 3.12.1, 3.13.0"), "{err}");
        let err = pick(want(3, 11, Some(9))).expect_err("3.11.9").to_string();
        assert!(err.contains("Python 3.11.9"), "{err}");
        let err = choose("Python", "3.12", ".python-version", &[], |_| true).expect_err("none").to_string();
        assert!(err.contains("it has: none"), "{err}");
    }

    #[test]
    fn npm_ranges_match_as_npm_reads_them() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (">=18", &["18.0.0", "20.20.2", "22.1.0"], &["16.20.0"]),
            (">= 18", &["18.19.0"], &["17.9.1"]),
            ("18.x", &["18.0.0", "18.19.0"], &["19.0.0", "17.0.0"]),
            ("18", &["18.19.0"], &["19.0.0"]),
            ("18.1", &["18.1.5"], &["18.2.0"]),
            ("18.1.2", &["18.1.2"], &["18.1.3"]),
            ("^20.1", &["20.1.0", "20.20.2"], &["21.0.0", "20.0.9"]),
            ("~18.2", &["18.2.9"], &["18.3.0"]),
            ("18 || 20", &["18.5.0", "20.0.0"], &["19.0.0"]),
            (">=18 <21", &["18.0.0", "20.99.0"], &["21.0.0"]),
            ("18 - 20", &["18.0.0", "20.0.0"], &["21.0.0", "17.9.9"]),
            ("*", &["4.0.0"], &[]),
            ("v20", &["20.1.0"], &["18.0.0"]),
        ];
        for (asked, good, bad) in cases {
            let dir = dir_with(&[("package.json", &format!(r#"{{"engines": {{"node": "{asked}"}}}}"#))]);
            let wanted = node_wanted(dir.path()).expect(asked).expect("asked");
            for version in *good {
                assert!(wanted.matches(&v(version)), "{asked} should match {version}");
            }
            for version in *bad {
                assert!(!wanted.matches(&v(version)), "{asked} should not match {version}");
            }
        }
    }

    #[test]
    fn node_without_engines_asks_nothing_and_bad_ranges_name_package_json() {
        assert_eq!(node_wanted(dir_with(&[("package.json", "{}")]).path()).expect("read"), None);
        assert_eq!(node_wanted(dir_with(&[]).path()).expect("read"), None);
        for (json, message) in [
            (r#"{"engines": {"node": ">= "}}"#, "package.json engines.node \">= \""),
            (r#"{"engines": {"node": "latest"}}"#, "package.json engines.node \"latest\""),
            (r#"{"engines": {"node": 20}}"#, "engines.node must be a string"),
            ("{", "package.json is not valid JSON"),
        ] {
            let err = node_wanted(dir_with(&[("package.json", json)]).path()).expect_err(json).to_string();
            assert!(err.contains(message), "{json}: {err}");
        }
    }
}
