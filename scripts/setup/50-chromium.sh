#!/usr/bin/env bash
# Headless Chromium and its WebDriver server, for the web UI journeys (tests/tests/web_ui.rs).
# Debian's own packages; idempotent. Sourced by scripts/test.sh (and may be run alone, as root).
# Exports PAASTECH_CHROMIUM and PAASTECH_CHROMEDRIVER, which the tests read.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
        echo "chromium/chromedriver missing and SKIP_INSTALL=1: the web UI tests will fail" >&2
    else
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # fonts-dejavu-core: readable text in screenshots.
        apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core
    fi
fi

PAASTECH_CHROMIUM="$(command -v chromium || true)"
PAASTECH_CHROMEDRIVER="$(command -v chromedriver || true)"
export PAASTECH_CHROMIUM PAASTECH_CHROMEDRIVER
echo "chromium: ${PAASTECH_CHROMIUM:-missing}; chromedriver: ${PAASTECH_CHROMEDRIVER:-missing}"
