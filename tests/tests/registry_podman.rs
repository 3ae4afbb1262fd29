//! Issue #13 registry journeys on Podman (`scripts/setup/30-podman.sh`,
//! `scripts/setup/80-registry.sh`): see `registry/mod.rs`.

mod registry;

use registry::Engine;

const PODMAN: Engine = Engine {
    driver: "podman",
    cli: "podman",
    local: "localhost/paastech/",
    prefix: "rp",
    ping: &["--url", "unix:///run/podman/podman.sock", "version"],
    setup: "scripts/setup/30-podman.sh",
};

/// As on Docker: pushed, run by digest (Podman pulls the registry's manifest, which is
/// not the local image's), pruned from the registry, pulled back for a rollback.
#[test]
fn builds_are_pushed_run_by_digest_pruned_from_the_registry_and_pulled_back() {
    registry::pushed_by_digest_pruned_and_pulled_back(&PODMAN);
}

/// A registry that is down fails the push with a message naming it, and the previous
/// deployment keeps serving.
#[test]
fn a_registry_that_is_down_fails_the_push_naming_it_and_the_old_version_serves() {
    registry::a_registry_that_is_down_fails_the_push(&PODMAN);
}

/// A registry that asks for credentials: `[registry] username` and `password` are used for
/// the push (and the pull); a wrong password fails the push naming the registry.
#[test]
fn registry_credentials_are_used_and_a_wrong_password_is_refused() {
    registry::credentials_are_used_and_a_wrong_password_is_refused(&PODMAN);
}
