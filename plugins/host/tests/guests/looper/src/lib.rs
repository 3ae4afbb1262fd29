//! Never returns from any stage: must be stopped at its timeout.

use paastech_hook_sdk::{BuildInfo, Context, DeployInfo, Env, Hook, export_hook, log};

struct Looper;

fn spin() -> ! {
    log("looper: spinning forever");
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Hook for Looper {
    fn pre_build(_: &Context) -> Result<Env, String> {
        spin()
    }
    fn post_build(_: &Context, _: &BuildInfo) -> Result<(), String> {
        spin()
    }
    fn pre_deploy(_: &Context, _: &DeployInfo) -> Result<Env, String> {
        spin()
    }
    fn post_deploy(_: &Context) {
        spin()
    }
}

export_hook!(Looper);
