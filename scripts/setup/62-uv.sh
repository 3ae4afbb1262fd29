#!/usr/bin/env bash
# uv (PyPI: a static binary in its wheel), which the process builder uses for Python
# installs when the server has it on PATH (tests/tests/languages.rs runs a server with it).
# Downloaded into a venv under target/ at a pinned version, and the binary alone copied to
# /usr/local/lib/paastech-tests/uv-VERSION/: builds run as users of their own, who must
# reach it, and a checkout may sit in a directory closed to them (/root). Idempotent.
# Sourced by scripts/test.sh (and may be run alone). Exports PAASTECH_UV, which the test
# reads; the test fails, naming this script, when it is missing.
set -euo pipefail

PAASTECH_UV_VERSION=0.9.18
PAASTECH_UV_VENV="$PWD/target/tools/uv"
PAASTECH_UV="/usr/local/lib/paastech-tests/uv-$PAASTECH_UV_VERSION/uv"

if ! "$PAASTECH_UV_VENV/bin/uv" --version 2>/dev/null | grep -qF "$PAASTECH_UV_VERSION"; then
    # Debian's interpreter, not whatever `python3` resolves to (a pyenv shim here).
    /usr/bin/python3 -m venv "$PAASTECH_UV_VENV"
    "$PAASTECH_UV_VENV/bin/pip" install --quiet --disable-pip-version-check "uv==$PAASTECH_UV_VERSION"
fi

install -D -m 0755 "$PAASTECH_UV_VENV/bin/uv" "$PAASTECH_UV"
chmod 0755 /usr/local/lib/paastech-tests "$(dirname "$PAASTECH_UV")"
export PAASTECH_UV
"$PAASTECH_UV" --version
