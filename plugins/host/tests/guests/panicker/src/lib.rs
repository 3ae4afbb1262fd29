//! Prints a line, then panics at pre-build: the push must fail with the panic's message.

use paastech_hook_sdk::{Context, Env, Hook, export_hook};

struct Panicker;

impl Hook for Panicker {
    fn pre_build(ctx: &Context) -> Result<Env, String> {
        println!("panicker: about to panic for {}", ctx.project);
        panic!("hook panicked on purpose");
    }
}

export_hook!(Panicker);
