//! Issue #4 journeys on Podman (`scripts/setup/30-podman.sh` starts its API service): see
//! `paastech_tests::engines`. Without an engine these tests fail, saying so.

use paastech_tests::engines::{
    Engine, dockerfile_journey, no_dockerfile_journey, release_journey, secrets_stay_out_of_images_journey,
};

/// Labelled, never privileged, no new privileges, only CHOWN/SETGID/SETUID, memory, CPU and
/// pids limits, the runc runtime, published on loopback only.
fn check_security(engine: &Engine, id: &str) {
    let inspect = engine.run(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"paastech.deployment\"}} {{index .Config.Labels \"paastech.process\"}} \
         {{.HostConfig.Privileged}} {{.HostConfig.SecurityOpt}} {{.HostConfig.Memory}} {{.HostConfig.CpuQuota}} \
         {{.HostConfig.PidsLimit}} {{.OCIRuntime}} {{json .EffectiveCaps}} {{json .HostConfig.PortBindings}}",
        id,
    ]);
    assert!(inspect.starts_with("1 web false [no-new-privileges] 536870912 100000 512 runc "), "{inspect}");
    assert!(inspect.contains("[\"CAP_CHOWN\",\"CAP_SETGID\",\"CAP_SETUID\"]"), "only these caps: {inspect}");
    assert!(inspect.contains("\"HostIp\":\"127.0.0.1\""), "{inspect}");
}

const PODMAN: Engine = Engine {
    driver: "podman",
    cli: "podman",
    base_image: "localhost/paastech/busybox:latest",
    image_prefix: "localhost/paastech/",
    build_marker: "STEP 1/",
    rm_args: &["rm", "-f", "-t", "0"],
    ps_args: &["--no-trunc"],
    prefix: "p",
    check_security,
    limits_format: "{{.HostConfig.Memory}} {{.HostConfig.CpuQuota}}",
    limits_expected: "134217728 50000",
    ping: &["--url", "unix:///run/podman/podman.sock", "version"],
    setup: "scripts/setup/30-podman.sh",
};

#[test]
fn dockerfile_app_push_replace_env_rollback_scale_broken_and_restart() {
    dockerfile_journey(&PODMAN);
}

#[test]
fn an_app_without_dockerfile_needs_one_or_a_base_image() {
    no_dockerfile_journey(&PODMAN);
}

#[test]
fn config_vars_reach_a_build_only_as_the_dockerfile_declares_them() {
    secrets_stay_out_of_images_journey(&PODMAN);
}

#[test]
fn a_release_step_runs_in_the_image_and_a_failing_one_keeps_the_previous_deployment() {
    release_journey(&PODMAN);
}
