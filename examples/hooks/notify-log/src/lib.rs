//! post-deploy: logs one line naming the version that went live. Config key `prefix`
//! (optional) starts the line.

use paastech_hook_sdk::{Context, Hook, config, export_hook, log};

struct NotifyLog;

impl Hook for NotifyLog {
    fn post_deploy(ctx: &Context) {
        let prefix = config("prefix").unwrap_or_else(|| "notify-log".into());
        let commit = ctx.commit.as_deref().map(|c| &c[..c.len().min(7)]).unwrap_or("no commit");
        log(&format!("{prefix}: {} v{} is live ({commit})", ctx.project, ctx.version));
    }
}

export_hook!(NotifyLog);
