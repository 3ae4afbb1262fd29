//! pre-build: writes a Procfile when the source tree has none. Every config key is a
//! process type and its value the command, e.g. `web = "python3 -m http.server $PORT"`.

use std::path::Path;

use paastech_hook_sdk::{Context, Env, Hook, OUT_DIR, SOURCE_DIR, config_entries, export_hook, log};

struct ProcfileGen;

impl Hook for ProcfileGen {
    fn pre_build(_ctx: &Context) -> Result<Env, String> {
        if Path::new(SOURCE_DIR).join("Procfile").exists() {
            log("procfile-gen: the project has a Procfile; leaving it");
            return Ok(Env::new());
        }
        let entries = config_entries();
        if entries.is_empty() {
            return Err("procfile-gen: no process types configured (config keys like web = \"CMD\")".into());
        }
        let mut procfile = String::new();
        for (process, command) in &entries {
            if command.contains('\n') {
                return Err(format!("procfile-gen: the command of {process} spans lines"));
            }
            procfile.push_str(&format!("{process}: {command}\n"));
        }
        std::fs::write(Path::new(OUT_DIR).join("Procfile"), procfile)
            .map_err(|err| format!("procfile-gen: writing the Procfile: {err}"))?;
        let names: Vec<&str> = entries.iter().map(|(process, _)| process.as_str()).collect();
        log(&format!("procfile-gen: wrote a Procfile with {}", names.join(", ")));
        Ok(Env::new())
    }
}

export_hook!(ProcfileGen);
