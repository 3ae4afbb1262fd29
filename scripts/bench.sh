#!/usr/bin/env bash
# The benchmark of issue #3 (a script, not a test; not part of scripts/test.sh or CI).
#
# Side by side, in one run, on this machine, all on 127.0.0.1:
#   (a) git push of a ~50 MB random-data repo and of a 10-file repo: PaaSTech's SSH server
#       vs OpenSSH's sshd + git-receive-pack;
#   (b) push-to-live of examples/static-hello and examples/python-hello (first deploy and
#       redeploys after a one-line change), until the ingress serves the new content;
#   (c) ingress requests/s and p99 (wrk at 8, 64, 256 connections) vs nginx as a reverse
#       proxy to the same nginx backend;
#   (d) a static site (1 KB index.html) vs nginx serving the same file (wrk);
#   (e) TLS with the same ECDSA P-256 certificate vs nginx (h2load): HTTPS requests/s over
#       kept-alive connections, new handshakes/s, HTTP/2 requests/s, proxied and static;
#   (f) coldstart (only with --only coldstart): the first request to a sleeping app, per
#       example and runtime, beside the warm request and the runtime's start floor.
# Prints a table with ratios against the baselines. Builds paastech in release, installs
# what it needs (as root, Debian), stops everything it started.
#
# Usage: [PAASTECH_BENCH_BIN=BIN] scripts/bench.sh [--rounds N] [--only push,live,ingress,static,tls,coldstart] [--big-mb MB]
#                         [--wrk-seconds S] [--ingress-rounds N] [--connections 8,64,256] [--keep]
#                         [--h2-clients 8,64] [--h2-streams N] [--handshake-batch N] [--json FILE]
set -euo pipefail

cd "$(dirname "$0")/.."

need=()
command -v git >/dev/null || need+=(git)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package starts services on install where an init system runs; the benchmark
# starts its own sshd and nginx on free ports and does not touch those.

# PAASTECH_BENCH_BIN=/path/to/paastech measures that binary instead of building one (e.g. a
# release build of another commit).
bin="${PAASTECH_BENCH_BIN:-}"
if [ -z "$bin" ]; then
    echo "bench: building paastech (release)" >&2
    cargo build --release --quiet -p paastech-cli
    bin="$PWD/target/release/paastech"
fi

echo "bench: uptime: $(uptime)" >&2
exec python3 scripts/bench/bench.py --paastech "$bin" "$@"
