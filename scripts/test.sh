#!/usr/bin/env bash
# Runs every test of PaaSTech on a fresh Debian 12 machine, as root: installs what the
# tests need, starts the services they use (a throwaway PostgreSQL), builds, checks
# formatting and lints, and runs the whole workspace's tests.
#
#   sudo scripts/test.sh
#
# Environment: SKIP_INSTALL=1 skips apt-get (when everything is installed already).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    step "installing system packages"
    # gcc: the C compiler and linker Rust links with (rustup does not bring one; C build
    # scripts need it). busybox-static: the process driver's conformance apps (busybox httpd).
    # sqlite3: the secrets journey reads the store's database file as an attacker would.
    # python3-prometheus-client: the metrics test parses /metrics with Prometheus's own parser.
    # wrk: the load the lifecycle journey restarts an app under.
    # python3-aiosmtpd: the SMTP server on loopback the mail journeys send to.
    # systemd: `systemd-analyze verify` of the packaged unit (the package journey); it is
    # not started (no systemd runs as init on these machines). Without recommends it pulls
    # only libraries (libsystemd-shared, libseccomp2, libcryptsetup12, …) and `mount`, not
    # dbus or systemd-timesyncd. adduser: the package's postinst makes the `paastech` user.
    packages=(git openssh-client postgresql libpq-dev libsqlite3-dev sqlite3 pkg-config libssl-dev gcc python3-aiosmtpd
              python3 python3-venv python3-prometheus-client util-linux procps psmisc ca-certificates busybox-static
              wrk systemd adduser)
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    # Node.js may come from another repository than Debian's; only add Debian's if absent.
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if ((${#missing[@]})); then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

command -v cargo >/dev/null || { echo "cargo is not installed: install Rust (rustup) first" >&2; exit 1; }

step "starting a throwaway PostgreSQL"
PAASTECH_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
export PAASTECH_TEST_POSTGRES_URL
echo "PostgreSQL at $PAASTECH_TEST_POSTGRES_URL"
trap 'scripts/start-postgres.sh --stop >/dev/null 2>&1 || true' EXIT

# Each file in scripts/setup/ installs and starts one thing some tests need (a container
# engine, a browser, a WASM target) and exports where to find it. They run in order.
for setup in scripts/setup/*.sh; do
    [[ -e "$setup" ]] || continue
    step "setup: $(basename "$setup")"
    # shellcheck source=/dev/null
    source "$setup"
done

step "checking formatting"
cargo fmt --all -- --check

step "building"
cargo build --workspace --all-targets --locked

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
step "done"
