//! Issue #13 registry journeys on Docker (`scripts/setup/20-docker.sh`,
//! `scripts/setup/80-registry.sh`): see `registry/mod.rs`.

mod registry;

use registry::Engine;

const DOCKER: Engine = Engine {
    driver: "docker",
    cli: "docker",
    local: "paastech/",
    prefix: "rd",
    ping: &["info", "--format", "{{.ServerVersion}}"],
    setup: "scripts/setup/20-docker.sh",
};

/// A Dockerfile app pushed over git+SSH with a registry configured: the build is pushed
/// (its progress in the push), the deployment runs it by digest, the app answers; builds
/// pruned past `keep_builds` are deleted from the registry; a build no longer on the
/// engine is pulled back by digest for a rollback.
#[test]
fn builds_are_pushed_run_by_digest_pruned_from_the_registry_and_pulled_back() {
    registry::pushed_by_digest_pruned_and_pulled_back(&DOCKER);
}

/// A registry that is down fails the push with a message naming it, and the previous
/// deployment keeps serving.
#[test]
fn a_registry_that_is_down_fails_the_push_naming_it_and_the_old_version_serves() {
    registry::a_registry_that_is_down_fails_the_push(&DOCKER);
}
