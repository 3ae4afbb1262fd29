#!/usr/bin/env bash
# schemathesis (PyPI), which fuzzes the API against its own OpenAPI document
# (tests/tests/openapi.rs). Installed into a venv under target/ at a pinned version;
# idempotent. Sourced by scripts/test.sh (and may be run alone). Exports
# PAASTECH_SCHEMATHESIS, which the test reads; the test fails, naming this script, when it
# is missing.
set -euo pipefail

PAASTECH_SCHEMATHESIS_VERSION=4.32.5
PAASTECH_SCHEMATHESIS_VENV="$PWD/target/tools/schemathesis"
PAASTECH_SCHEMATHESIS="$PAASTECH_SCHEMATHESIS_VENV/bin/schemathesis"

if ! "$PAASTECH_SCHEMATHESIS" --version 2>/dev/null | grep -qF "$PAASTECH_SCHEMATHESIS_VERSION"; then
    # Debian's interpreter, not whatever `python3` resolves to: a pyenv shim there picks its
    # interpreter from the directory it runs in.
    /usr/bin/python3 -m venv "$PAASTECH_SCHEMATHESIS_VENV"
    "$PAASTECH_SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$PAASTECH_SCHEMATHESIS_VERSION"
fi

export PAASTECH_SCHEMATHESIS
"$PAASTECH_SCHEMATHESIS" --version
