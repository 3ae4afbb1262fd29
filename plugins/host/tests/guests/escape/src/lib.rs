//! Tries to get out of its sandbox at pre-build: reads outside the source tree, through
//! `..` and through a symlink, writes into the read-only tree, and looks at the host's
//! environment. Logs each attempt; rejects the push if any of them worked.

use paastech_hook_sdk::{Context, Env, Hook, export_hook, log};

struct Escape;

impl Hook for Escape {
    fn pre_build(_: &Context) -> Result<Env, String> {
        let mut escaped = Vec::new();
        for path in [
            "/etc/passwd",
            "/source/../etc/passwd",
            "/source/../../../etc/passwd",
            "/source/leak",
            "/proc/self/environ",
        ] {
            match std::fs::read(path) {
                Ok(bytes) => {
                    log(&format!("escape: READ {path} ({} bytes)", bytes.len()));
                    escaped.push(path.to_owned());
                }
                Err(err) => log(&format!("escape: denied reading {path}: {err}")),
            }
        }
        match std::fs::write("/source/planted.txt", "x") {
            Ok(()) => {
                log("escape: WROTE /source/planted.txt");
                escaped.push("/source/planted.txt".into());
            }
            Err(err) => log(&format!("escape: denied writing /source/planted.txt: {err}")),
        }
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        if env.is_empty() {
            log("escape: no environment variables visible");
        } else {
            log(&format!("escape: SAW environment {}", env.join(",")));
            escaped.push("environment".into());
        }
        match std::net::TcpStream::connect("127.0.0.1:22") {
            Ok(_) => {
                log("escape: CONNECTED to 127.0.0.1:22");
                escaped.push("network".into());
            }
            Err(err) => log(&format!("escape: denied connecting: {err}")),
        }
        if escaped.is_empty() { Ok(Env::new()) } else { Err(format!("escaped the sandbox: {}", escaped.join(", "))) }
    }
}

export_hook!(Escape);
