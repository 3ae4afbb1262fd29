//! Issue #4 journeys on Docker (`scripts/setup/20-docker.sh` starts the engine): see
//! `paastech_tests::engines`. Without an engine these tests fail, saying so.

use paastech_tests::engines::{
    Engine, dockerfile_journey, no_dockerfile_journey, release_journey, secrets_stay_out_of_images_journey,
    stop_start_restart_journey,
};

/// Labelled, never privileged, no new privileges, every capability dropped, memory, CPU and
/// pids limits, published on loopback only.
fn check_security(engine: &Engine, id: &str) {
    let inspect = engine.run(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"paastech.deployment\"}} {{index .Config.Labels \"paastech.process\"}} \
         {{.HostConfig.Privileged}} {{.HostConfig.SecurityOpt}} {{.HostConfig.CapDrop}} {{.HostConfig.Memory}} \
         {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{json .HostConfig.PortBindings}}",
        id,
    ]);
    assert!(inspect.starts_with("1 web false [no-new-privileges] [ALL] 536870912 1000000000 512 "), "{inspect}");
    assert!(inspect.contains("\"HostIp\":\"127.0.0.1\""), "{inspect}");
}

const DOCKER: Engine = Engine {
    driver: "docker",
    cli: "docker",
    base_image: "paastech/busybox:latest",
    image_prefix: "paastech/",
    build_marker: "Step 1/",
    rm_args: &["rm", "-f"],
    ps_args: &[],
    prefix: "d",
    check_security,
    limits_format: "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
    limits_expected: "134217728 500000000",
    ping: &["info", "--format", "{{.ServerVersion}}"],
    setup: "scripts/setup/20-docker.sh",
};

#[test]
fn dockerfile_app_push_replace_env_rollback_scale_broken_and_restart() {
    dockerfile_journey(&DOCKER);
}

#[test]
fn an_app_without_dockerfile_needs_one_or_a_base_image() {
    no_dockerfile_journey(&DOCKER);
}

#[test]
fn config_vars_reach_a_build_only_as_the_dockerfile_declares_them() {
    secrets_stay_out_of_images_journey(&DOCKER);
}

#[test]
fn a_release_step_runs_in_the_image_and_a_failing_one_keeps_the_previous_deployment() {
    release_journey(&DOCKER);
}

#[test]
fn a_stopped_app_keeps_no_container_over_a_restart_and_starts_and_restarts() {
    stop_start_restart_journey(&DOCKER);
}
