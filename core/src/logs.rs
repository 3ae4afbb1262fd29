//! Each project's log: the output of its instances and the platform's notes about it.
//! Kept on disk (bounded, rotated once), with live followers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::domain::{ProjectName, Timestamp};
use crate::drivers::LogSink;

/// Lines a slow follower may fall behind before it misses some.
const FOLLOW_BUFFER: usize = 1024;

pub struct LogHub {
    dir: PathBuf,
    max_bytes: u64,
    projects: Mutex<HashMap<ProjectName, Arc<ProjectLog>>>,
}

struct ProjectLog {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
    followers: broadcast::Sender<String>,
}

impl LogHub {
    /// Logs go to `dir/NAME.log`; past `max_bytes` the file moves to `NAME.log.1`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        LogHub { dir, max_bytes, projects: Mutex::new(HashMap::new()) }
    }

    fn project(&self, project: &ProjectName) -> Arc<ProjectLog> {
        let mut projects = self.projects.lock().expect("log hub lock is never poisoned");
        Arc::clone(projects.entry(project.clone()).or_insert_with(|| {
            Arc::new(ProjectLog {
                path: self.dir.join(format!("{project}.log")),
                max_bytes: self.max_bytes,
                file: Mutex::new(None),
                followers: broadcast::channel(FOLLOW_BUFFER).0,
            })
        }))
    }

    /// A sink whose lines are recorded as coming from `source` (`web.1`, `paastech`).
    pub fn sink(&self, project: &ProjectName, source: &str) -> Arc<dyn LogSink> {
        Arc::new(SourceSink { log: self.project(project), source: source.to_owned() })
    }

    /// Records one line from the platform itself.
    pub fn note(&self, project: &ProjectName, line: &str) {
        self.project(project).write("paastech", line);
    }

    /// The last `lines` lines, oldest first.
    pub fn tail(&self, project: &ProjectName, lines: usize) -> Vec<String> {
        let log = self.project(project);
        let _guard = log.file.lock().expect("log lock is never poisoned");
        let mut text = String::new();
        for path in [log.path.with_extension("log.1"), log.path.clone()] {
            if let Ok(mut file) = File::open(&path) {
                // Only the end of a file can hold the last lines; read at most 1 MiB of it.
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = file.seek(SeekFrom::Start(len.saturating_sub(1 << 20)));
                let mut chunk = String::new();
                let _ = file.read_to_string(&mut chunk);
                text.push_str(&chunk);
            }
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].iter().map(|l| (*l).to_owned()).collect()
    }

    /// New lines as they are written.
    pub fn follow(&self, project: &ProjectName) -> broadcast::Receiver<String> {
        self.project(project).followers.subscribe()
    }

    /// Deletes a project's log files.
    pub fn remove(&self, project: &ProjectName) {
        let log = self.projects.lock().expect("log hub lock is never poisoned").remove(project);
        let path = log.map(|l| l.path.clone()).unwrap_or_else(|| self.dir.join(format!("{project}.log")));
        let _ = std::fs::remove_file(path.with_extension("log.1"));
        let _ = std::fs::remove_file(path);
    }
}

impl ProjectLog {
    fn write(&self, source: &str, line: &str) {
        let stamp = Timestamp::now().to_rfc3339();
        let entry = format!("{stamp} {source}: {}", line.trim_end_matches(['\r', '\n']));
        let _ = self.followers.send(entry.clone());
        let mut file = self.file.lock().expect("log lock is never poisoned");
        if let Err(err) = self.append(&mut file, &entry) {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot write app log");
            *file = None;
        }
    }

    fn append(&self, file: &mut Option<(File, u64)>, entry: &str) -> std::io::Result<()> {
        if file.as_ref().is_some_and(|(_, size)| *size > self.max_bytes) {
            *file = None;
            std::fs::rename(&self.path, self.path.with_extension("log.1"))?;
        }
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let handle = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let size = handle.metadata()?.len();
            *file = Some((handle, size));
        }
        let (handle, size) = file.as_mut().expect("opened above");
        handle.write_all(entry.as_bytes())?;
        handle.write_all(b"\n")?;
        *size += entry.len() as u64 + 1;
        Ok(())
    }
}

struct SourceSink {
    log: Arc<ProjectLog>,
    source: String,
}

impl LogSink for SourceSink {
    fn line(&self, line: &str) {
        self.log.write(&self.source, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ProjectName {
        ProjectName::parse(s).expect("valid name")
    }

    #[test]
    fn lines_are_kept_tailed_and_rotated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = LogHub::new(dir.path().to_owned(), 2000);
        let sink = hub.sink(&name("blog"), "web.1");
        for i in 0..100 {
            sink.line(&format!("request {i}"));
        }
        let tail = hub.tail(&name("blog"), 3);
        assert_eq!(tail.len(), 3);
        assert!(tail[2].ends_with("web.1: request 99"), "{tail:?}");
        assert!(tail[0].ends_with("web.1: request 97"), "{tail:?}");
        // Bounded on disk: the current file and one rotated file, each about max_bytes.
        let current = std::fs::metadata(dir.path().join("blog.log")).expect("log").len();
        assert!(current <= 2100, "{current}");
        assert!(dir.path().join("blog.log.1").exists());
        assert!(hub.tail(&name("other"), 10).is_empty());
        hub.remove(&name("blog"));
        assert!(!dir.path().join("blog.log").exists());
    }

    #[tokio::test]
    async fn followers_see_new_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = LogHub::new(dir.path().to_owned(), 1 << 20);
        let mut follower = hub.follow(&name("blog"));
        hub.note(&name("blog"), "deploying v1");
        let line = follower.recv().await.expect("a line");
        assert!(line.ends_with("paastech: deploying v1"), "{line}");
    }
}
