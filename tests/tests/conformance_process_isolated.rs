//! The runtime conformance suite (`docs/specs/runtime.md`) on local processes run as the
//! project's own uid (#17 item 2; the test runs as root, so the runtime switches users):
//! every case — env and port, logs, restarts, limits, one-offs, the ones a dead server
//! left, usage from the instance's cgroup, interactive sessions — holds when the
//! processes are another uid than the server's.

use std::sync::Arc;

use paastech_driver_process::{AppUsers, ProcessRuntime, ProcessRuntimeConfig};
use paastech_tests::conformance::{AfterRestart, Target, copy_app};

fn isolated_target() -> Target {
    let dir = tempfile::tempdir().expect("temp dir");
    let artifact = copy_app(&dir.path().join("app"));
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let users = AppUsers::shared(&data_dir, None);
    let ledger = data_dir.join("run").join("processes");
    Target {
        new_runtime: Box::new(move || {
            Arc::new(ProcessRuntime::new(ProcessRuntimeConfig {
                users: Some(Arc::clone(&users)),
                ledger: Some(ledger.clone()),
                ..ProcessRuntimeConfig::default()
            }))
        }),
        artifact,
        after_restart: AfterRestart::Ended,
        hog_memory_bytes: 64 * 1024 * 1024,
        usage_everywhere: true,
        keep: Some(dir),
    }
}

paastech_tests::conformance_tests!(isolated_target());
paastech_tests::conformance_tty_tests!(isolated_target());

/// What the suite above runs under: each project's processes are a uid of its own from
/// the range, its gid alone, no capability, `no_new_privs`.
#[tokio::test]
async fn processes_run_as_their_projects_uid_with_nothing_to_gain() {
    use paastech_core::ProjectName;
    use paastech_core::drivers::{InstanceSpec, OneOff};
    use paastech_tests::conformance::Lines;

    let target = isolated_target();
    let runtime = (target.new_runtime)();
    let mut uids = Vec::new();
    for project in ["isolated-a", "isolated-b"] {
        let spec = InstanceSpec {
            project: ProjectName::parse(project).expect("name"),
            version: 1,
            process_type: "run".to_owned(),
            index: 0,
            artifact: target.artifact.reference.clone(),
            command: String::new(),
            env: Default::default(),
            limits: Default::default(),
        };
        let script = "id -u; id -G; grep -E '^(CapEff|CapAmb|NoNewPrivs)' /proc/self/status";
        let run = OneOff {
            argv: ["sh", "-c", script].iter().map(|a| (*a).to_owned()).collect(),
            timeout: std::time::Duration::from_secs(20),
        };
        let lines = Arc::new(Lines::default());
        let code = runtime.run_once(spec, run, lines.clone()).await.expect("run_once");
        let lines = lines.all();
        assert_eq!(code, 0, "{lines:?}");
        let uid: u32 = lines[0].trim().parse().expect("a uid");
        assert!(uid >= paastech_driver_process::DEFAULT_FIRST_UID, "{lines:?}");
        assert_eq!(lines[1].trim(), uid.to_string(), "its own gid, no other group: {lines:?}");
        assert_eq!(
            lines[2..].iter().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>(),
            ["CapEff: 0000000000000000", "CapAmb: 0000000000000000", "NoNewPrivs: 1"],
            "{lines:?}"
        );
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two projects, two uids");
}
