//! The guest side of PaaSTech build hooks: implement [`Hook`] (every stage has a default
//! that does nothing), export it with [`export_hook!`], and build with
//! `cargo build --release --target wasm32-wasip2`. The `.wasm` file in
//! `target/wasm32-wasip2/release/` is the component to configure.
//!
//! ```ignore
//! use paastech_hook_sdk::{Context, Hook, export_hook, log};
//!
//! struct Hello;
//!
//! impl Hook for Hello {
//!     fn post_deploy(ctx: &Context) {
//!         log(&format!("{} v{} is live", ctx.project, ctx.version));
//!     }
//! }
//!
//! export_hook!(Hello);
//! ```
//!
//! A hook sees the source tree read-only under [`SOURCE_DIR`] (through `std::fs`) and, at
//! pre-build only, may write files into [`OUT_DIR`]; they are copied into the build tree.
//! Nothing else of the host is reachable: no network, no environment, no other path.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/since_v0.1.0",
        world: "paastech:hooks/hook@0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_hook_world",
        default_bindings_module: "paastech_hook_sdk::bindings",
    });
}

pub use bindings::paastech::hooks::types::{BuildInfo, Context, DeployInfo, PreBuildOutput};

/// Env vars as name/value pairs.
pub type Env = Vec<(String, String)>;

/// Where the source tree is mounted, read-only.
pub const SOURCE_DIR: &str = "/source";
/// Where pre-build may write files to add to the build tree.
pub const OUT_DIR: &str = "/out";

/// A build hook. Each stage's default does nothing and lets the deployment go on; return
/// `Err(message)` to veto it (the push fails with the message).
pub trait Hook {
    /// Before the build: may write into [`OUT_DIR`] and return env vars for the build.
    fn pre_build(_ctx: &Context) -> Result<Env, String> {
        Ok(Env::new())
    }
    /// After a successful build.
    fn post_build(_ctx: &Context, _build: &BuildInfo) -> Result<(), String> {
        Ok(())
    }
    /// Before the instances start: returns env vars to add to every instance.
    fn pre_deploy(_ctx: &Context, _deploy: &DeployInfo) -> Result<Env, String> {
        Ok(Env::new())
    }
    /// After the deployment went live; cannot veto.
    fn post_deploy(_ctx: &Context) {}
}

/// Writes one line to the push output and the build log.
pub fn log(line: &str) {
    bindings::paastech::hooks::host::log(line);
}

/// One of this hook's config keys.
pub fn config(key: &str) -> Option<String> {
    bindings::paastech::hooks::host::config(key)
}

/// A config key holding a comma-separated list, trimmed, without empty items.
pub fn config_list(key: &str) -> Vec<String> {
    config(key)
        .map(|value| value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// All of this hook's config keys and values, sorted by key.
pub fn config_entries() -> Vec<(String, String)> {
    bindings::paastech::hooks::host::config_entries()
}

/// Exports a [`Hook`] implementation as the component's stages.
#[macro_export]
macro_rules! export_hook {
    ($hook:ty) => {
        #[doc(hidden)]
        pub struct __PaasTechHookExport;

        impl $crate::bindings::Guest for __PaasTechHookExport {
            fn pre_build(
                ctx: $crate::Context,
                _out_dir: ::std::string::String,
            ) -> ::std::result::Result<$crate::PreBuildOutput, ::std::string::String> {
                <$hook as $crate::Hook>::pre_build(&ctx).map(|env| $crate::PreBuildOutput { env })
            }
            fn post_build(
                ctx: $crate::Context,
                build: $crate::BuildInfo,
            ) -> ::std::result::Result<(), ::std::string::String> {
                <$hook as $crate::Hook>::post_build(&ctx, &build)
            }
            fn pre_deploy(
                ctx: $crate::Context,
                deploy: $crate::DeployInfo,
            ) -> ::std::result::Result<$crate::Env, ::std::string::String> {
                <$hook as $crate::Hook>::pre_deploy(&ctx, &deploy)
            }
            fn post_deploy(ctx: $crate::Context) {
                <$hook as $crate::Hook>::post_deploy(&ctx)
            }
        }

        $crate::bindings::__export_hook_world!(__PaasTechHookExport with_types_in $crate::bindings);
    };
}
