//! Detection: what kind of app a source tree is and which processes it runs.
//!
//! A pure function of the directory's contents, so it is tested with temp dirs and no
//! toolchain. The Procfile, when present, wins for the commands; the language decides the
//! build steps.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::{Error, Result};

use super::procfile;
use super::shell::shell_quote;

/// Every file detection looks at, in the order it looks.
pub const MARKERS: &[&str] =
    &["Procfile", "requirements.txt", "pyproject.toml", "package.json", "Cargo.toml", "go.mod", "index.html"];

/// A Procfile larger than this is not a Procfile.
const MAX_PROCFILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Node,
    Rust,
    Go,
    /// An `index.html` and no Procfile: served by the platform's static file server.
    Static,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
            Language::Rust => "rust",
            Language::Go => "go",
            Language::Static => "static",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// `None` when only a Procfile was found: nothing to build, just run its commands.
    pub language: Option<Language>,
    /// Whether the commands came from a Procfile.
    pub procfile: bool,
    /// Process type → command. Empty for [`Language::Static`]: the builder adds `web`,
    /// because the static server's command line is the operator's configuration.
    pub processes: BTreeMap<String, String>,
}

/// Detects the app in `dir`. Only regular files count as markers: an exported tree may
/// hold symlinks pointing anywhere on the server, and those must not be read.
pub fn detect(dir: &Path) -> Result<Detected> {
    let has = |name: &str| is_regular_file(&dir.join(name));

    let procfile = if has("Procfile") { Some(read_procfile(dir)?) } else { None };

    let language = if has("requirements.txt") || has("pyproject.toml") {
        Some(Language::Python)
    } else if has("package.json") {
        Some(Language::Node)
    } else if has("Cargo.toml") {
        Some(Language::Rust)
    } else if has("go.mod") {
        Some(Language::Go)
    } else if procfile.is_none() && has("index.html") {
        Some(Language::Static)
    } else {
        None
    };

    if let Some(processes) = procfile {
        return Ok(Detected { language, procfile: true, processes });
    }
    let Some(language) = language else {
        return Err(Error::Invalid(format!(
            "cannot tell how to build and run this app: none of {} was found at the top of the repository",
            MARKERS.join(", ")
        )));
    };
    let web = match language {
        Language::Python => return Err(no_default(language, "web: python3 app.py")),
        Language::Node => Some("npm start".to_owned()),
        Language::Rust => rust_binary(dir)?.map(|name| format!("target/release/{}", shell_quote(&name))),
        Language::Go => Some("bin/app".to_owned()),
        Language::Static => None,
    };
    let processes = match (language, web) {
        (Language::Static, _) => BTreeMap::new(),
        (_, Some(web)) => BTreeMap::from([("web".to_owned(), web)]),
        (_, None) => return Err(no_default(language, "web: target/release/my-app")),
    };
    Ok(Detected { language: Some(language), procfile: false, processes })
}

fn no_default(language: Language, example: &str) -> Error {
    Error::Invalid(format!(
        "detected a {} app but found no Procfile and there is no default command to run it: \
         add a Procfile at the top of the repository with a line like `{example}`",
        language.as_str()
    ))
}

fn is_regular_file(path: &Path) -> bool {
    path.symlink_metadata().is_ok_and(|m| m.file_type().is_file())
}

fn read_procfile(dir: &Path) -> Result<BTreeMap<String, String>> {
    let path = dir.join("Procfile");
    let len = path.symlink_metadata().map_err(|e| read_error("Procfile", e))?.len();
    if len > MAX_PROCFILE_BYTES {
        return Err(Error::Invalid(format!("Procfile is {len} bytes; the limit is {MAX_PROCFILE_BYTES}")));
    }
    let bytes = std::fs::read(&path).map_err(|e| read_error("Procfile", e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Invalid("Procfile is not valid UTF-8".into()))?;
    procfile::parse(&text)
}

/// The binary `cargo build --release` makes by default: the only `[[bin]]` if there is
/// exactly one, else the package name. `None` for a workspace without a package.
fn rust_binary(dir: &Path) -> Result<Option<String>> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| read_error("Cargo.toml", e))?;
    let manifest: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| Error::Invalid(format!("Cargo.toml is not valid TOML: {}", e.message())))?;
    let bins = manifest.get("bin").and_then(|b| b.as_array());
    if let Some([bin]) = bins.map(Vec::as_slice)
        && let Some(name) = bin.get("name").and_then(|n| n.as_str())
    {
        return Ok(Some(name.to_owned()));
    }
    Ok(manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).map(str::to_owned))
}

fn read_error(what: &str, err: io::Error) -> Error {
    Error::internal(format!("reading {what}"), err)
}

/// Whether `package.json` declares a `build` script: the process builder runs
/// `npm run build` after installing, as Heroku's Node buildpack does.
pub fn has_npm_build(dir: &Path) -> Result<bool> {
    let Some(text) = super::versions::read_small(dir, "package.json")? else { return Ok(false) };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| Error::Invalid(format!("package.json is not valid JSON: {err}")))?;
    Ok(json.get("scripts").and_then(|scripts| scripts.get("build")).is_some_and(|build| build.is_string()))
}

/// Whether the app is a Django project: `manage.py` at its root and Django among its
/// requirements (`requirements.txt` or `pyproject.toml`). Such an app gets
/// `manage.py collectstatic --noinput` at build time, as on Heroku.
pub fn is_django(dir: &Path) -> Result<bool> {
    if !is_regular_file(&dir.join("manage.py")) {
        return Ok(false);
    }
    let read = |file| super::versions::read_small(dir, file).map(|text| text.unwrap_or_default().to_ascii_lowercase());
    // `Django==5.1` on a line of its own; `"django>=5"` in pyproject's dependencies.
    let requirements = read("requirements.txt")?;
    let pyproject = read("pyproject.toml")?;
    Ok(requirements.lines().any(|line| line.trim_start().starts_with("django")) || pyproject.contains("\"django"))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Files<'a> = &'a [(&'a str, &'a str)];
    /// Files in the tree, expected language, whether from a Procfile, expected processes.
    type Case<'a> = (Files<'a>, Option<Language>, bool, Files<'a>);

    fn tree(files: Files) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        dir
    }

    fn procs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn detects_apps() {
        let cases: &[Case] = &[
            (
                &[("requirements.txt", ""), ("Procfile", "web: python3 app.py")],
                Some(Language::Python),
                true,
                &[("web", "python3 app.py")],
            ),
            (
                &[("pyproject.toml", "[project]\nname='x'"), ("Procfile", "web: x\nworker: y")],
                Some(Language::Python),
                true,
                &[("web", "x"), ("worker", "y")],
            ),
            (&[("package.json", "{}")], Some(Language::Node), false, &[("web", "npm start")]),
            (
                &[("package.json", "{}"), ("Procfile", "worker: node w.js")],
                Some(Language::Node),
                true,
                &[("worker", "node w.js")],
            ),
            (
                &[("Cargo.toml", "[package]\nname = \"my-app\"\nversion = \"0.1.0\"")],
                Some(Language::Rust),
                false,
                &[("web", "target/release/my-app")],
            ),
            (
                &[("Cargo.toml", "[package]\nname = \"pkg\"\n[[bin]]\nname = \"server\"\npath = \"src/main.rs\"")],
                Some(Language::Rust),
                false,
                &[("web", "target/release/server")],
            ),
            (
                &[("Cargo.toml", "[package]\nname = \"it's\"")],
                Some(Language::Rust),
                false,
                &[("web", "target/release/'it'\\''s'")],
            ),
            (&[("go.mod", "module x")], Some(Language::Go), false, &[("web", "bin/app")]),
            (&[("index.html", "<p>hi")], Some(Language::Static), false, &[]),
            (&[("index.html", "<p>hi"), ("Procfile", "web: ./serve")], None, true, &[("web", "./serve")]),
            (&[("Procfile", "web: ./run.sh")], None, true, &[("web", "./run.sh")]),
            // Python is checked before Node: a Python app with a JS asset toolchain.
            (
                &[("requirements.txt", ""), ("package.json", "{}"), ("Procfile", "web: a")],
                Some(Language::Python),
                true,
                &[("web", "a")],
            ),
        ];
        for (files, language, procfile, processes) in cases {
            let dir = tree(files);
            let got = detect(dir.path()).unwrap_or_else(|e| panic!("{files:?}: {e}"));
            assert_eq!(
                got,
                Detected { language: *language, procfile: *procfile, processes: procs(processes) },
                "{files:?}"
            );
        }
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let cases: &[(Files, &[&str])] = &[
            (
                &[],
                &[
                    "Procfile",
                    "requirements.txt",
                    "pyproject.toml",
                    "package.json",
                    "Cargo.toml",
                    "go.mod",
                    "index.html",
                ],
            ),
            (&[("README.md", "hi")], &["none of"]),
            (&[("requirements.txt", "flask")], &["python", "add a Procfile"]),
            (&[("pyproject.toml", "")], &["python", "add a Procfile"]),
            (&[("Cargo.toml", "[workspace]\nmembers = []")], &["rust", "add a Procfile"]),
            (&[("Cargo.toml", "[package")], &["Cargo.toml is not valid TOML"]),
            (&[("requirements.txt", ""), ("Procfile", "web python3 app.py")], &["Procfile line 1"]),
            (&[("Procfile", "# nothing\n")], &["no process types"]),
            (&[("Procfile", "web: a\nweb: b")], &["line 2", "twice"]),
        ];
        for (files, needles) in cases {
            let dir = tree(files);
            match detect(dir.path()) {
                Err(Error::Invalid(message)) => {
                    for needle in *needles {
                        assert!(message.contains(needle), "{files:?}: {message:?} lacks {needle:?}");
                    }
                }
                other => panic!("{files:?}: expected an invalid error, got {other:?}"),
            }
        }
    }

    #[test]
    fn django_apps_and_npm_build_scripts_are_recognised() {
        for (files, django) in [
            (&[("manage.py", ""), ("requirements.txt", "gunicorn\nDjango==5.1\n")][..], true),
            (&[("manage.py", ""), ("pyproject.toml", "dependencies = [\"django>=5\"]")][..], true),
            (&[("manage.py", ""), ("requirements.txt", "flask\n")][..], false),
            (&[("requirements.txt", "django\n")][..], false),
        ] {
            assert_eq!(is_django(tree(files).path()).expect("read"), django, "{files:?}");
        }
        for (json, build) in [
            (r#"{"scripts": {"build": "vite build", "start": "node ."}}"#, true),
            (r#"{"scripts": {"start": "node ."}}"#, false),
            ("{}", false),
        ] {
            assert_eq!(has_npm_build(tree(&[("package.json", json)]).path()).expect("read"), build, "{json}");
        }
        assert!(!has_npm_build(tree(&[]).path()).expect("no package.json"));
        assert!(has_npm_build(tree(&[("package.json", "{")]).path()).is_err());
    }

    #[test]
    fn ignores_symlinked_markers() {
        let dir = tree(&[("real", "web: cat /etc/shadow")]);
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("Procfile")).expect("symlink");
        std::fs::create_dir(dir.path().join("package.json")).expect("dir");
        let err = detect(dir.path()).expect_err("a symlink or a directory is not a marker");
        assert!(err.to_string().contains("none of"), "{err}");
    }
}
