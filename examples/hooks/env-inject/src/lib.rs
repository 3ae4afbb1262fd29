//! pre-deploy: adds every config key as an env var of each instance.

use paastech_hook_sdk::{Context, DeployInfo, Env, Hook, config_entries, export_hook, log};

struct EnvInject;

impl Hook for EnvInject {
    fn pre_deploy(_ctx: &Context, _deploy: &DeployInfo) -> Result<Env, String> {
        let env = config_entries();
        let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
        log(&format!("env-inject: adding {}", names.join(", ")));
        Ok(env)
    }
}

export_hook!(EnvInject);
