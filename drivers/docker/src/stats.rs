//! What a container uses, from the engine's stats API (one reading, not a stream): shared
//! by the Docker runtime and the swarm runtime (for the tasks on its manager's engine).

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use paastech_core::Result;
use paastech_core::drivers::Usage;

use crate::engine::{engine_error, status_of};

/// The figures of container `id`; `None` when the engine has no such container.
pub async fn container_usage(docker: &Docker, id: &str) -> Result<Option<Usage>> {
    let mut stream = docker.stats(id, Some(StatsOptions { stream: false, one_shot: true }));
    match stream.next().await {
        Some(Ok(stats)) => Ok(Some(usage_of(&stats))),
        Some(Err(err)) if status_of(&err) == Some(404) => Ok(None),
        Some(Err(err)) => Err(engine_error(format!("reading the stats of container {}", &id[..id.len().min(12)]), err)),
        None => Ok(None),
    }
}

/// As `docker stats` counts memory: the usage without the page cache the kernel can drop
/// (`inactive_file`, `total_inactive_file` on cgroup v1). A container that is not running
/// reports no memory and no CPU.
fn usage_of(stats: &ContainerStatsResponse) -> Usage {
    let memory = stats.memory_stats.as_ref();
    let inactive = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied())
        .unwrap_or(0);
    Usage {
        cpu_ns: stats.cpu_stats.as_ref().and_then(|c| c.cpu_usage.as_ref()).and_then(|u| u.total_usage),
        memory_bytes: memory.and_then(|m| m.usage).map(|usage| usage.saturating_sub(inactive)),
        memory_limit_bytes: memory.and_then(|m| m.limit).filter(|&limit| limit > 0),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    use super::*;

    #[test]
    fn memory_leaves_out_the_droppable_page_cache_as_docker_stats_does() {
        let stats = ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage { total_usage: Some(42), ..Default::default() }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(150),
                limit: Some(1000),
                stats: Some(HashMap::from([("total_inactive_file".to_owned(), 50)])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            usage_of(&stats),
            Usage { cpu_ns: Some(42), memory_bytes: Some(100), memory_limit_bytes: Some(1000) }
        );
        assert_eq!(usage_of(&ContainerStatsResponse::default()), Usage::default());
    }
}
