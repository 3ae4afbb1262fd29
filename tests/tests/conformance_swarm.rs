//! The runtime conformance suite (`docs/specs/runtime.md`) on a two-node Docker Swarm:
//! the one `scripts/setup/85-swarm.sh` makes (two engines in network namespaces, node 1
//! the manager). The conformance image is built by the Docker builder on the manager's
//! engine and pushed to the registry the nodes pull from, as a swarm server's builds are.
//! Without the cluster these tests fail, saying so.

use std::sync::Arc;

use paastech_tests::conformance::{AfterRestart, Target};
use paastech_tests::swarm::{conformance_image, runtime};

fn swarm_target() -> Target {
    Target {
        // A namespace of this test's own: a case that removes what another server left
        // (stray one-offs) must not see the other tests' services.
        new_runtime: Box::new(|| Arc::new(runtime(&format!("conformance-{}", std::process::id())))),
        artifact: conformance_image().clone(),
        after_restart: AfterRestart::Adopted,
        hog_memory_bytes: 64 * 1024 * 1024,
        // The manager's engine has the figures of its own node's containers only.
        usage_everywhere: false,
        keep: None,
    }
}

paastech_tests::conformance_tests!(swarm_target());
