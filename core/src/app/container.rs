//! What is sent to the engine to build: the source tree as a tar stream, and, for an app
//! without a `Dockerfile`, one generated from detection and the configured base image.
//! Pure logic, tested without an engine.
//! Shared by the container engines' builders, so a project builds the same way on each.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::detect::{Detected, Language};
use crate::domain::EnvVars;
use crate::{Error, Result};

/// The name under which a generated Dockerfile is added to the build context; a name no
/// app uses, so the app's own files are sent unchanged.
pub const GENERATED_DOCKERFILE: &str = ".paastech.Dockerfile";

/// Where the app's files are in an image built from a generated Dockerfile.
pub const APP_DIR: &str = "/app";

/// A generated Dockerfile and the processes an image built from it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub dockerfile: String,
    pub processes: BTreeMap<String, String>,
    /// The tool the base image must have (`python3`, `npm`, …), checked by the first step,
    /// and what to tell the pusher when it is missing.
    pub needs: Option<(&'static str, String)>,
}

/// The hint given when the base image lacks what the app's language needs.
pub fn missing_tool_hint(language: &str, tool: &str, base_image: &str) -> String {
    format!(
        "this is a {language} app and the base image {base_image} has no {tool}: add a Dockerfile to the \
         repository, or set [build] base_image to an image that has {tool}"
    )
}

/// The Dockerfile for an app without one. Static sites are served by the base image's
/// busybox `httpd`; apps with a Procfile run its commands; languages are built with the
/// toolchain the base image must carry (the first step checks, so a push to a base image
/// without it fails with a message saying so).
pub fn generate(detected: &Detected, base_image: Option<&str>) -> Result<Generated> {
    let Some(base) = base_image else {
        return Err(Error::Invalid(
            "there is no Dockerfile at the top of the repository: add one, or ask the operator to set \
             [build] base_image so that PaaSTech can generate one for this app"
                .into(),
        ));
    };
    if base.is_empty() || base.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!("[build] base_image {base:?} is not an image reference")));
    }
    let mut lines = vec![format!("FROM {base}"), format!("WORKDIR {APP_DIR}")];
    let mut processes = detected.processes.clone();
    let mut needs = None;
    let mut check = |tool: &'static str, language: Language| {
        let hint = missing_tool_hint(language.as_str(), tool, base);
        needs = Some((tool, hint.clone()));
        // The echo reaches the build log; the failing step's text names the tool.
        lines.push(format!("RUN command -v {tool} >/dev/null 2>&1 || {{ echo 'paastech: {hint}'; exit 1; }}"));
    };
    let mut after = Vec::new();
    match detected.language {
        None => {}
        Some(Language::Static) => {
            processes.insert("web".into(), format!("httpd -f -p \"$PORT\" -h {APP_DIR}"));
        }
        Some(Language::Python) => {
            check("python3", Language::Python);
            after.push(
                "RUN python3 -m venv .venv && if [ -f requirements.txt ]; then .venv/bin/pip install \
                 --disable-pip-version-check -r requirements.txt; else .venv/bin/pip install \
                 --disable-pip-version-check .; fi"
                    .to_owned(),
            );
            after.push(format!("ENV PATH={APP_DIR}/.venv/bin:$PATH"));
        }
        Some(Language::Node) => {
            check("npm", Language::Node);
            after.push(
                "RUN if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit \
                 --no-fund; fi"
                    .to_owned(),
            );
            after.push(format!("ENV PATH={APP_DIR}/node_modules/.bin:$PATH"));
        }
        Some(Language::Rust) => {
            check("cargo", Language::Rust);
            after.push("RUN cargo build --release".to_owned());
        }
        Some(Language::Go) => {
            check("go", Language::Go);
            after.push("RUN go build -o bin/app .".to_owned());
        }
    }
    lines.push(format!("COPY . {APP_DIR}"));
    lines.extend(after);
    if processes.is_empty() {
        return Err(Error::Invalid("the app defines no process types: add a Procfile".into()));
    }
    Ok(Generated { dockerfile: lines.join("\n") + "\n", processes, needs })
}

/// What a container engine is asked to build.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The Dockerfile's name in the context.
    pub dockerfile: &'static str,
    /// A Dockerfile generated from detection, added to the context as [`GENERATED_DOCKERFILE`].
    pub generated: Option<Generated>,
    pub processes: BTreeMap<String, String>,
    /// The build arguments the engine is given: the vars of the build env that the
    /// repository's Dockerfile declares with `ARG`, and nothing for a generated one. Any
    /// other var would be on its way into the engine's request, its logs and (for a
    /// declared one) the image's history, so only what the Dockerfile asks for goes.
    pub build_args: EnvVars,
    /// One line for the push output, saying which of the two it is.
    pub describe: String,
}

impl BuildPlan {
    /// Tells the pusher what is built: which Dockerfile, and a generated one in full.
    pub fn announce(&self, log: &dyn crate::drivers::LogSink) {
        log.line(&self.describe);
        if !self.build_args.is_empty() {
            // Names only: the values may be secrets.
            let names: Vec<&str> = self.build_args.keys().map(String::as_str).collect();
            log.line(&format!("-----> Build arguments the Dockerfile declares: {}", names.join(", ")));
        }
        if let Some(generated) = &self.generated {
            for line in generated.dockerfile.lines() {
                log.line(&format!("       {line}"));
            }
        }
    }
}

/// What to build: the repository's Dockerfile, or one generated from detection and the
/// base image. `env` is the build env (the project's vars and what pre-build hooks added):
/// only the vars a repository's Dockerfile declares are passed on, and none to a generated
/// Dockerfile.
pub fn plan(source: &Path, base_image: Option<&str>, env: &EnvVars) -> Result<BuildPlan> {
    let is_file = |name: &str| source.join(name).symlink_metadata().is_ok_and(|m| m.file_type().is_file());
    if is_file("Dockerfile") {
        let text = std::fs::read(source.join("Dockerfile"))
            .map_err(|e| Error::internal("reading the repository's Dockerfile", e))?;
        let build_args = super::dockerfile::build_args(&String::from_utf8_lossy(&text), env);
        // The image's own command is `web` unless a Procfile says otherwise.
        let (processes, describe) = if is_file("Procfile") {
            let mut processes = super::detect::detect(source)?.processes;
            // A Procfile with only a `release:` line keeps the image's own command as `web`.
            if processes.keys().all(|p| super::procfile::is_release(p)) {
                processes.insert("web".to_owned(), String::new());
            }
            (processes, "-----> Building the Dockerfile; commands from the Procfile".to_owned())
        } else {
            (BTreeMap::from([("web".to_owned(), String::new())]), "-----> Building the Dockerfile".to_owned())
        };
        return Ok(BuildPlan { dockerfile: "Dockerfile", generated: None, processes, build_args, describe });
    }
    let detected = super::detect::detect(source).map_err(|err| match err {
        Error::Invalid(message) => Error::Invalid(format!("{message}; or add a Dockerfile")),
        other => other,
    })?;
    let generated = generate(&detected, base_image)?;
    let language = detected.language.map_or("Procfile", |l| l.as_str());
    let describe =
        format!("-----> No Dockerfile: generated one for a {language} app from {}", base_image.unwrap_or_default());
    Ok(BuildPlan {
        dockerfile: GENERATED_DOCKERFILE,
        processes: generated.processes.clone(),
        generated: Some(generated),
        build_args: EnvVars::new(),
        describe,
    })
}

/// The build context: every file of `source` (symlinks kept as links, never followed, so
/// a link cannot bring the server's files into an image), plus `extra` files.
pub fn tar_context<W: io::Write>(out: W, source: &Path, extra: &[(&str, &[u8])]) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", source)?;
    for (name, contents) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, *contents)?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(language: Option<Language>, processes: &[(&str, &str)]) -> Detected {
        Detected {
            language,
            procfile: !processes.is_empty(),
            processes: processes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn static_sites_are_served_by_httpd() {
        let generated = generate(&detected(Some(Language::Static), &[]), Some("localhost/paastech/busybox:latest"))
            .expect("a static site on busybox");
        assert!(generated.dockerfile.starts_with("FROM localhost/paastech/busybox:latest\nWORKDIR /app\n"));
        assert!(generated.dockerfile.contains("COPY . /app\n"));
        assert_eq!(generated.processes["web"], "httpd -f -p \"$PORT\" -h /app");
        assert_eq!(generated.needs, None);
    }

    #[test]
    fn procfile_apps_run_their_commands() {
        let generated =
            generate(&detected(None, &[("web", "./serve"), ("worker", "./work")]), Some("base")).expect("procfile");
        assert_eq!(generated.processes.len(), 2);
        assert!(!generated.dockerfile.contains("RUN"), "{}", generated.dockerfile);
    }

    #[test]
    fn a_dockerfile_with_a_release_only_procfile_keeps_the_images_command_as_web() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM base\n").expect("Dockerfile");
        std::fs::write(dir.path().join("Procfile"), "release: ./migrate\n").expect("Procfile");
        let only_release = plan(dir.path(), None, &EnvVars::new()).expect("a plan");
        let expected: BTreeMap<String, String> =
            [("release", "./migrate"), ("web", "")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(only_release.processes, expected);
        // A Procfile that names its process types keeps exactly them.
        std::fs::write(dir.path().join("Procfile"), "worker: ./work\nrelease: ./migrate\n").expect("Procfile");
        let named = plan(dir.path(), None, &EnvVars::new()).expect("a plan");
        assert_eq!(named.processes.keys().collect::<Vec<_>>(), ["release", "worker"]);
    }

    #[test]
    fn languages_check_their_tool_first() {
        let generated = generate(&detected(Some(Language::Python), &[("web", "python3 app.py")]), Some("py:3"))
            .expect("python with a base image");
        assert_eq!(generated.needs.as_ref().map(|n| n.0), Some("python3"));
        let check = generated.dockerfile.find("command -v python3").expect("a tool check");
        let copy = generated.dockerfile.find("COPY").expect("copy");
        assert!(check < copy, "the check runs before anything is copied:\n{}", generated.dockerfile);
        assert!(generated.dockerfile.contains("base image py:3 has no python3"));
    }

    #[test]
    fn without_a_base_image_a_dockerfile_is_needed() {
        let err = generate(&detected(Some(Language::Static), &[]), None).expect_err("no base image");
        assert!(err.to_string().contains("add one") && err.to_string().contains("Dockerfile"), "{err}");
        let err = generate(&detected(Some(Language::Static), &[]), Some("two words")).expect_err("bad image");
        assert!(err.to_string().contains("not an image reference"), "{err}");
    }

    #[test]
    fn only_a_repository_dockerfile_gets_build_args_and_only_those_it_declares() {
        let env: EnvVars = [("SECRET", "s3cr3t"), ("NPM_TOKEN", "t0k3n")].map(|(k, v)| (k.into(), v.into())).into();
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("index.html"), "hi").expect("file");
        let generated = plan(dir.path(), Some("base"), &env).expect("a generated Dockerfile");
        assert!(generated.generated.is_some());
        assert!(generated.build_args.is_empty(), "a generated Dockerfile gets no var: {:?}", generated.build_args);

        std::fs::write(dir.path().join("Dockerfile"), "FROM base\narg NPM_TOKEN\nRUN make\n").expect("Dockerfile");
        let own = plan(dir.path(), None, &env).expect("the repository's Dockerfile");
        assert_eq!(own.dockerfile, "Dockerfile");
        let want: EnvVars = [("NPM_TOKEN".to_owned(), "t0k3n".to_owned())].into();
        assert_eq!(own.build_args, want);
    }

    #[test]
    fn the_context_keeps_symlinks_as_links() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("index.html"), "hi").expect("file");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        std::fs::write(dir.path().join("sub/a.txt"), "a").expect("file");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).expect("symlink");
        let bytes = tar_context(Vec::new(), dir.path(), &[(GENERATED_DOCKERFILE, b"FROM x\n")]).expect("tar");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            if path == "./leak" || path == "leak" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
                assert_eq!(entry.size(), 0, "the link's target file is not read");
            }
            seen.push(path.trim_start_matches("./").to_owned());
        }
        for name in ["index.html", "sub/a.txt", "leak", GENERATED_DOCKERFILE] {
            assert!(seen.iter().any(|p| p == name), "{name} in {seen:?}");
        }
    }
}
