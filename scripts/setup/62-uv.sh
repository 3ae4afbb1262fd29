#!/usr/bin/env bash
# uv (PyPI: a static binary in its wheel), which the process builder uses for Python
# installs when the server has it on PATH (tests/tests/languages.rs runs a server with it).
# Installed into a venv under target/ at a pinned version; idempotent. Sourced by
# scripts/test.sh (and may be run alone). Exports PAASTECH_UV, which the test reads; the
# test fails, naming this script, when it is missing.
set -euo pipefail

PAASTECH_UV_VERSION=0.9.18
PAASTECH_UV_VENV="$PWD/target/tools/uv"
PAASTECH_UV="$PAASTECH_UV_VENV/bin/uv"

if ! "$PAASTECH_UV" --version 2>/dev/null | grep -qF "$PAASTECH_UV_VERSION"; then
    # Debian's interpreter, not whatever `python3` resolves to (a pyenv shim here).
    /usr/bin/python3 -m venv "$PAASTECH_UV_VENV"
    "$PAASTECH_UV_VENV/bin/pip" install --quiet --disable-pip-version-check "uv==$PAASTECH_UV_VERSION"
fi

export PAASTECH_UV
"$PAASTECH_UV" --version
