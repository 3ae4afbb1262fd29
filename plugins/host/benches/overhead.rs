//! The cost of one trivial hook per push once it is compiled: a fresh store, instantiation
//! and one call (plus the hop to a blocking thread and back), as the orchestrator pays it.
//!
//!   bash scripts/setup/40-wasm.sh && cargo bench -p paastech-plugins --bench overhead
//!
//! Target: under 5 ms per call.
//!
//! Only stages whose failure is an error are timed (pre-deploy, pre-build): post-deploy
//! only logs a failure, so a hook that trapped or could not start there would be timed
//! as a fast success. Any failed call stops the bench with an error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paastech_core::ProjectName;
use paastech_core::drivers::LogSink;
use paastech_core::hooks::{BuildHooks, HookContext};
use paastech_plugins::{HookHost, HookLimits, HookSpec, HostOptions, Stage};

struct Discard;

impl LogSink for Discard {
    fn line(&self, _: &str) {}
}

fn main() {
    let dir = std::env::var_os("PAASTECH_HOOK_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/hooks/wasm32-wasip2/release"));
    let path = dir.join("guest_trivial.wasm");
    if !path.exists() {
        eprintln!("{} is missing: run `bash scripts/setup/40-wasm.sh` first", path.display());
        std::process::exit(1);
    }
    let spec = HookSpec {
        name: "trivial".into(),
        path,
        stages: Stage::ALL.to_vec(),
        config: Default::default(),
        // A trivial call takes milliseconds: a hook that hangs fails the bench at once
        // rather than after 300 calls of the default 10 s.
        limits: HookLimits { timeout: Duration::from_secs(2), ..HookLimits::default() },
    };
    let started = Instant::now();
    let host = HookHost::new(vec![spec], HostOptions { project_hooks: false, ..HostOptions::default() })
        .expect("compiling the trivial hook");
    println!("compile (once, at server start): {:.1} ms", ms(started.elapsed()));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let source = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let ctx = HookContext {
        project: ProjectName::parse("bench").expect("name"),
        version: 1,
        commit: None,
        source: Some(source.path().to_owned()),
    };
    // Without a source tree nothing is preopened (and only operator hooks run).
    let bare = HookContext { source: None, ..ctx.clone() };
    let process_types = ["web".to_owned()];
    runtime.block_on(async {
        for (stage, runs) in [("pre-deploy (no preopens)", 300), ("pre-build (source + out preopened)", 300)] {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let started = Instant::now();
                let called = if stage.starts_with("pre-build") {
                    host.pre_build(&ctx, out.path(), &Discard).await
                } else {
                    host.pre_deploy(&bare, &[], &process_types, &Discard).await
                };
                let elapsed = started.elapsed();
                if let Err(err) = called {
                    eprintln!("{stage}: the trivial hook failed, so there is no overhead to report: {err}");
                    std::process::exit(1);
                }
                times.push(elapsed);
            }
            // The first calls warm caches; report the steady state.
            let mut steady: Vec<Duration> = times[10..].to_vec();
            steady.sort();
            let mean = steady.iter().sum::<Duration>() / steady.len() as u32;
            println!(
                "{stage}: instantiate + call per hook: mean {:.3} ms, median {:.3} ms, p99 {:.3} ms ({} runs)",
                ms(mean),
                ms(steady[steady.len() / 2]),
                ms(steady[steady.len() * 99 / 100]),
                steady.len(),
            );
        }
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
