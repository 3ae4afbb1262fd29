#!/usr/bin/env bash
# The local container registry of the registry journeys (tests/tests/registry_*.rs):
# Debian's docker-registry (distribution 2.8), with a config of its own: listening on
# 127.0.0.1 only (Docker treats 127.0.0.0/8 registries as plain-HTTP "insecure" ones by
# default, so no certificate is needed), storage under /tmp/paastech-registry, and
# deletion enabled (pruned builds delete their manifests). Idempotent: a registry already
# answering on the address is kept. Sourced by scripts/test.sh (and may be run alone).
# Exports PAASTECH_TEST_REGISTRY (host:port), which the tests read.

paastech_registry_setup() {
    local addr="${PAASTECH_TEST_REGISTRY:-127.0.0.1:5000}"
    local dir=/tmp/paastech-registry
    local log="$dir/registry.log"

    if ! command -v docker-registry >/dev/null || ! command -v curl >/dev/null || ! command -v htpasswd >/dev/null; then
        echo "installing docker-registry curl apache2-utils"
        # docker-registry's Depends (adduser, lsb-base, libc6) are all it needs; no
        # Recommends. apache2-utils brings htpasswd (the bcrypt password file of the
        # credentials journey's registry); its Depends are libraries only.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry curl apache2-utils >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends docker-registry curl apache2-utils >/dev/null; } || return 1
    fi

    if ! curl -fsS --max-time 2 "http://$addr/v2/" >/dev/null 2>&1; then
        mkdir -p "$dir/storage"
        cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $addr
YAML
        echo "starting docker-registry on $addr, log in $log"
        # setsid: the registry outlives this shell and the test run's process group.
        (cd /tmp && setsid docker-registry serve "$dir/config.yml" >>"$log" 2>&1 </dev/null &)
        local i
        for ((i = 0; i < 60; i++)); do
            curl -fsS --max-time 2 "http://$addr/v2/" >/dev/null 2>&1 && break
            sleep 0.5
        done
        if ! curl -fsS --max-time 2 "http://$addr/v2/" >/dev/null 2>&1; then
            echo "docker-registry did not answer on $addr within 30 s; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    PAASTECH_TEST_REGISTRY="$addr"
    export PAASTECH_TEST_REGISTRY
    echo "container registry at $PAASTECH_TEST_REGISTRY"
}

paastech_registry_setup
