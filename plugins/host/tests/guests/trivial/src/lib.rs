//! Does nothing at every stage: measures the host's per-call overhead.

use paastech_hook_sdk::{Hook, export_hook};

struct Trivial;

impl Hook for Trivial {}

export_hook!(Trivial);
