//! pre-build: rejects a push whose source tree holds a file matching one of the globs in
//! config key `patterns` (comma-separated, e.g. `*.pem,.env,secrets/*`), naming the first
//! match. A pattern without `/` matches a file name at any depth; one with `/` matches the
//! path from the root of the tree. `*` matches within a path segment, `?` one character.

use std::path::Path;

use paastech_hook_sdk::{Context, Env, Hook, SOURCE_DIR, config_list, export_hook, log};

struct ForbidFiles;

impl Hook for ForbidFiles {
    fn pre_build(_ctx: &Context) -> Result<Env, String> {
        let patterns = config_list("patterns");
        if patterns.is_empty() {
            return Err("forbid-files: config key `patterns` is empty or missing".into());
        }
        let mut files = Vec::new();
        walk(Path::new(SOURCE_DIR), "", &mut files).map_err(|err| format!("forbid-files: reading the tree: {err}"))?;
        files.sort();
        for file in &files {
            let name = file.rsplit('/').next().unwrap_or(file);
            for pattern in &patterns {
                let subject = if pattern.contains('/') { file.as_str() } else { name };
                if glob(pattern.trim_start_matches('/').as_bytes(), subject.as_bytes()) {
                    return Err(format!("forbidden file {file} (matches {pattern:?})"));
                }
            }
        }
        log(&format!("forbid-files: {} files checked against {}", files.len(), patterns.join(", ")));
        Ok(Env::new())
    }
}

/// Collects the relative paths of every file under `dir`.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &relative, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}

/// Shell-style matching of `*` (not across `/`) and `?`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && text[0] != b'/' && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

export_hook!(ForbidFiles);

