#!/usr/bin/env bash
# The ACME journeys' CA (tests/tests/acme.rs): Debian's pebble, a test-only ACME server,
# with pebble-challtestsrv as its DNS (the same package), and curl (with HTTP/2, through
# libnghttp2) as the HTTPS client the journeys check certificates with. Each test starts
# its own pebble on free ports, pointed at its own server's ingress ports. Idempotent;
# sourced by scripts/test.sh (and may be run alone). Exports PAASTECH_PEBBLE and
# PAASTECH_CHALLTESTSRV, which the tests read.
set -euo pipefail

missing=()
command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null || missing+=(pebble)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PAASTECH_PEBBLE="$(command -v pebble)"
PAASTECH_CHALLTESTSRV="$(command -v pebble-challtestsrv)"
export PAASTECH_PEBBLE PAASTECH_CHALLTESTSRV
echo "pebble at $PAASTECH_PEBBLE, its DNS at $PAASTECH_CHALLTESTSRV"
curl --version | head -1
