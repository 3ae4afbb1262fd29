#!/usr/bin/env bash
# Builds the Debian package: target/debian/paastech_VERSION_amd64.deb
#
#   scripts/package-deb.sh                        # builds the release binary first (slow: ~17 min on 2 cores)
#   scripts/package-deb.sh --binary PATH          # packages that binary as it is (a test's debug build, CI's)
#   scripts/package-deb.sh --binary PATH --out DIR
#
# Plain dpkg-deb over a staged tree (no cargo-deb to build or install): the binary as
# /usr/bin/paastech (server and CLI are the one binary), the systemd unit, a commented
# config in /etc/paastech (a conffile: kept on upgrade, removed on purge), and the
# maintainer scripts of scripts/debian/ (the `paastech` system user, /var/lib/paastech).
# VERSION is paastech-cli's version in Cargo.toml. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="${CARGO_TARGET_DIR:-target}/debian"
while (($#)); do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "package-deb: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# path+file:///…/cli#paastech-cli@0.1.0
version=$(cargo pkgid -p paastech-cli --offline 2>/dev/null || cargo pkgid -p paastech-cli)
version=${version##*@}
version=${version##*#}
[[ "$version" =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || { echo "package-deb: unexpected version '$version'" >&2; exit 1; }

if [[ -z "$binary" ]]; then
    echo "package-deb: building the release binary (cargo build --release)" >&2
    cargo build --release --locked -p paastech-cli --bin paastech >&2
    binary="${CARGO_TARGET_DIR:-target}/release/paastech"
fi
[[ -x "$binary" ]] || { echo "package-deb: $binary is not an executable" >&2; exit 1; }

arch=$(dpkg --print-architecture)
name="paastech_${version}_${arch}"
mkdir -p "$out"
stage=$(mktemp -d "$out/.stage-XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"

install -D -m 0755 "$binary" "$root/usr/bin/paastech"
install -D -m 0644 scripts/debian/paastech.service "$root/lib/systemd/system/paastech.service"
install -D -m 0644 scripts/debian/paastech.toml "$root/etc/paastech/paastech.toml"
install -D -m 0644 README.md "$root/usr/share/doc/paastech/README.md"
install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "scripts/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/paastech/paastech.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: paastech
Version: $version
Architecture: $arch
Maintainer: PaaSTech developers <paastech@localhost>
Installed-Size: $size
Depends: adduser, git, util-linux
Recommends: python3, python3-venv, nodejs, npm
Suggests: docker.io, podman, postgresql
Section: admin
Priority: optional
Description: self-hosted platform as a service (git push, build, run)
 PaaSTech receives git pushes over its own SSH server, builds the code, runs it
 as local processes or containers (Docker, Podman, Swarm) and serves it through
 its own ingress, with a CLI, a REST API and a web UI.
CONTROL

# Root-owned files whatever user builds the package; gzip: fast on a 200 MB debug binary.
dpkg-deb --root-owner-group -Zgzip -z3 --build "$root" "$out/$name.deb" >&2
echo "$out/$name.deb"
