# Docker engine for the Docker driver's tests (sourced by scripts/test.sh; also runs on its
# own: `bash scripts/setup/20-docker.sh`). On a fresh Debian 12, as root, idempotent:
#   - installs docker.io, busybox-static and apparmor if missing (apparmor_parser is only a
#     Recommends of docker.io; on a kernel with AppArmor on, Debian's stock one, Docker 20.10
#     cannot start a container without it);
#   - starts dockerd if /var/run/docker.sock does not answer (no systemd here), logging to
#     /tmp/paastech-dockerd.log, with overlay2 when the kernel mounts overlayfs, else vfs;
#   - builds the local base image paastech/busybox:latest (`docker import` of a busybox
#     rootfs): no registry is reachable, so every image the tests use starts from it.
# Exports nothing: the driver and the tests find the engine at its standard socket.

paastech_docker_setup() {
    local sock=/var/run/docker.sock
    local log=/tmp/paastech-dockerd.log
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

    if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
        local missing=()
        local p
        for p in docker.io busybox-static apparmor; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        if ((${#missing[@]})); then
            echo "installing ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                    --no-install-recommends "${missing[@]}" >/dev/null; } || return 1
        fi
    fi

    # Debian's client matches Debian's engine; another docker earlier in PATH may not.
    local docker=docker
    [[ -x /usr/bin/docker ]] && docker=/usr/bin/docker

    if ! "$docker" -H "unix://$sock" info >/dev/null 2>&1; then
        local driver=vfs
        if paastech_overlay_works; then
            driver=overlay2
        fi
        echo "starting dockerd (storage driver $driver), log in $log"
        # setsid: the engine outlives this shell and is not killed with the test run's group.
        # Not from the checkout: a daemon's working directory is no place for the tests' files.
        (cd /tmp && setsid dockerd --host "unix://$sock" --storage-driver "$driver" >>"$log" 2>&1 </dev/null &)
        local i
        for ((i = 0; i < 120; i++)); do
            "$docker" -H "unix://$sock" info >/dev/null 2>&1 && break
            sleep 0.5
        done
        if ! "$docker" -H "unix://$sock" info >/dev/null 2>&1; then
            echo "dockerd did not answer within 60 s; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    echo "docker engine: $("$docker" -H "unix://$sock" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

    if ! "$docker" -H "unix://$sock" image inspect paastech/busybox:latest >/dev/null 2>&1; then
        local rootfs
        rootfs="$(mktemp -d /tmp/paastech-rootfs.XXXXXX)"
        "$root/scripts/make-busybox-rootfs.sh" "$rootfs" || { rm -rf "$rootfs"; return 1; }
        tar -C "$rootfs" -c . | "$docker" -H "unix://$sock" import \
            --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - paastech/busybox:latest >/dev/null \
            || { rm -rf "$rootfs"; return 1; }
        rm -rf "$rootfs"
        echo "built paastech/busybox:latest"
    fi
}

# Whether this kernel and filesystem can mount overlayfs (overlay2 needs it).
paastech_overlay_works() {
    local probe
    probe="$(mktemp -d /tmp/paastech-overlay.XXXXXX)" || return 1
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    local ok=1
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        ok=0
    fi
    rm -rf "$probe"
    return "$ok"
}

paastech_docker_setup
