//! The runtime conformance suite (`docs/specs/runtime.md`) on local processes.

use std::sync::Arc;

use paastech_driver_process::{ProcessRuntime, ProcessRuntimeConfig};
use paastech_tests::conformance::{AfterRestart, Target, copy_app};

fn process_target() -> Target {
    let dir = tempfile::tempdir().expect("temp dir");
    let artifact = copy_app(&dir.path().join("app"));
    Target {
        new_runtime: Box::new(|| Arc::new(ProcessRuntime::new(ProcessRuntimeConfig::default()))),
        artifact,
        after_restart: AfterRestart::Ended,
        hog_memory_bytes: 64 * 1024 * 1024,
        usage_everywhere: true,
        keep: Some(dir),
    }
}

paastech_tests::conformance_tests!(process_target());
paastech_tests::conformance_tty_tests!(process_target());
