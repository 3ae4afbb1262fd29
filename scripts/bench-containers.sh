#!/usr/bin/env bash
# The benchmark of issues #4 and #13 (a script, not a test; not part of scripts/test.sh or CI).
#
# Push-to-live of examples/dockerfile-hello on each container engine (Docker, Podman, Swarm), first
# deploy and redeploy after a one-line change, from `git push` start until the ingress serves
# the new page, beside the floor: `docker run` / `podman run` of the same image until it
# answers HTTP (Swarm: `docker service create` of it). With --node-loss (Swarm), also the time
# from a node's loss until no request fails. Prints a table: total, the engine's build, total minus build, the floor, and
# the ratio (minus build / floor) against the target of 1.5x, then where the time goes.
# Builds paastech in release, starts one server per engine on free loopback ports with a temp
# data dir, and removes every server, container and image it started. See
# scripts/bench/containers.py for the method.
#
# Usage: [PAASTECH_BENCH_BIN=BIN] scripts/bench-containers.sh [--rounds N] [--engines docker,podman,swarm]
#                         [--poll-ms MS] [--json FILE] [--keep] [--verbose] [--node-loss] [--watch-secs S]
set -euo pipefail

cd "$(dirname "$0")/.."

for tool in git ssh ssh-keygen python3; do
    command -v "$tool" >/dev/null || { echo "bench-containers: $tool is needed" >&2; exit 1; }
done

# PAASTECH_BENCH_BIN=/path/to/paastech measures that binary instead of building one.
bin="${PAASTECH_BENCH_BIN:-}"
if [ -z "$bin" ]; then
    echo "bench-containers: building paastech (release)" >&2
    cargo build --release --quiet -p paastech-cli
    bin="$PWD/target/release/paastech"
fi

echo "bench-containers: uptime: $(uptime)" >&2
exec python3 scripts/bench/containers.py --paastech "$bin" "$@"
