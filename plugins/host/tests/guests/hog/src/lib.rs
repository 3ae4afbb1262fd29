//! Allocates without bound at pre-build: must be stopped at the memory cap.

use paastech_hook_sdk::{Context, Env, Hook, export_hook, log};

struct Hog;

impl Hook for Hog {
    fn pre_build(_: &Context) -> Result<Env, String> {
        log("hog: allocating without bound");
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page, so the memory is really used.
            chunks.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

export_hook!(Hog);
