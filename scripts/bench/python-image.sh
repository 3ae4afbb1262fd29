#!/usr/bin/env bash
# A base image with Python for the container runtimes' cold-start bench (the generated
# Dockerfile of the Python example needs python3; no registry with one is reachable here):
# a minimal Debian 12 made by debootstrap with python3 and python3-venv, plus busybox's
# httpd (the static example's web server). Imported into the Docker engine, Podman, and
# the swarm manager's engine when PAASTECH_SWARM_SOCKET is set; idempotent (an engine
# that has the image is left alone). Usage: scripts/bench/python-image.sh [WORKDIR]
set -euo pipefail

IMAGE=paastech/python:bookworm
WORK="${1:-${TMPDIR:-/tmp}/paastech-python-image}"
ROOTFS="$WORK/rootfs"
TARBALL="$WORK/rootfs.tar"

engines=("docker")
command -v podman >/dev/null && engines+=("podman")
[[ -n "${PAASTECH_SWARM_SOCKET:-}" ]] && engines+=("swarm")

has_image() {
    case "$1" in
        docker) docker image inspect "$IMAGE" >/dev/null 2>&1 ;;
        podman) podman --url unix:///run/podman/podman.sock image exists "localhost/$IMAGE" ;;
        swarm) docker -H "unix://$PAASTECH_SWARM_SOCKET" image inspect "$IMAGE" >/dev/null 2>&1 ;;
    esac
}

missing=()
for engine in "${engines[@]}"; do has_image "$engine" || missing+=("$engine"); done
((${#missing[@]})) || exit 0

if [[ ! -f "$TARBALL" ]]; then
    need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v busybox >/dev/null || need+=(busybox-static)
    if ((${#need[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
    if [[ ! -x "$ROOTFS/usr/bin/python3" ]]; then
        rm -rf "$ROOTFS"
        mkdir -p "$WORK"
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOTFS" http://deb.debian.org/debian >&2
    fi
    # The static example's server: busybox httpd, from the host's static busybox.
    install -m 0755 "$(command -v busybox)" "$ROOTFS/usr/local/bin/busybox"
    ln -sf busybox "$ROOTFS/usr/local/bin/httpd"
    rm -rf "$ROOTFS/var/cache/apt/archives"/*.deb "$ROOTFS/var/lib/apt/lists"/*
    tar -C "$ROOTFS" -cf "$TARBALL.partial" . && mv "$TARBALL.partial" "$TARBALL"
fi

for engine in "${missing[@]}"; do
    case "$engine" in
        docker) docker import "$TARBALL" "$IMAGE" >&2 ;;
        podman) podman --url unix:///run/podman/podman.sock import "$TARBALL" "localhost/$IMAGE" >&2 ;;
        swarm) docker -H "unix://$PAASTECH_SWARM_SOCKET" import "$TARBALL" "$IMAGE" >&2 ;;
    esac
done
