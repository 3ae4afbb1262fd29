# Podman engine for the Podman driver's tests (sourced by scripts/test.sh; also runs on its
# own: `bash scripts/setup/30-podman.sh`). On a fresh Debian 12, as root, idempotent:
#   - installs podman, runc, catatonit and busybox-static if missing (Debian 12: Podman 4.3.1);
#     catatonit is podman's container init (`--init`), only a Recommends of the package, and
#     this script installs without recommends: without it every container with an init fails;
#     apparmor too, for kernels with AppArmor on (as for Docker);
#   - makes runc the OCI runtime and sets default ulimits nofile/nproc=1024:1024 in
#     /etc/containers/containers.conf.d/50-paastech.conf: crun fails on this cgroup setup,
#     and Podman's default ulimits exceed the hard limits of these machines;
#   - starts `podman system service` on /run/podman/podman.sock if it does not answer
#     (no systemd here), logging to /tmp/paastech-podman.log;
#   - imports the local base image localhost/paastech/busybox:latest from a busybox rootfs
#     (scripts/make-busybox-rootfs.sh, the same image the Docker setup builds): no registry
#     is reachable, so every image the tests use starts from it.
# Exports PAASTECH_PODMAN_SOCKET, which the tests read (the driver's default is the same).

paastech_podman_setup() {
    local sock=/run/podman/podman.sock
    local log=/tmp/paastech-podman.log
    local image=localhost/paastech/busybox:latest
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

    if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
        local missing=()
        local p
        for p in podman runc catatonit busybox-static apparmor; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        if ((${#missing[@]})); then
            echo "installing ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                    --no-install-recommends "${missing[@]}" >/dev/null; } || return 1
        fi
    fi
    command -v podman >/dev/null || { echo "podman is not installed" >&2; return 1; }

    # Engine-wide defaults, so that `podman build` RUN steps (which take no runtime or
    # ulimit from the API) work too; the driver also sets both on every container.
    local conf=/etc/containers/containers.conf.d/50-paastech.conf
    local wanted
    wanted='# Written by PaaSTech scripts/setup/30-podman.sh.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"'
    if [[ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]]; then
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$wanted" >"$conf"
        # A running service read the old configuration: restart it below.
        if [[ -S "$sock" ]] && [[ -n "$(paastech_podman_service_pid)" ]]; then
            kill "$(paastech_podman_service_pid)" 2>/dev/null || true
            sleep 1
        fi
    fi

    if ! paastech_podman_answers "$sock"; then
        echo "starting podman system service on $sock, log in $log"
        mkdir -p "$(dirname "$sock")"
        rm -f "$sock"
        # setsid: the service outlives this shell and is not killed with the test run's group.
        # From /tmp: conmon drops files (an `oom` marker when a container is OOM-killed) in
        # the service's working directory, which must not be the checkout.
        (cd /tmp && setsid podman system service --time=0 "unix://$sock" >>"$log" 2>&1 </dev/null &)
        local i
        for ((i = 0; i < 120; i++)); do
            paastech_podman_answers "$sock" && break
            sleep 0.5
        done
        if ! paastech_podman_answers "$sock"; then
            echo "podman system service did not answer within 60 s; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    echo "podman: $(podman version --format '{{.Server.Version}}' 2>/dev/null || podman --version)," \
        "runtime $(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)"

    if ! podman image exists "$image"; then
        local rootfs
        rootfs="$(mktemp -d /tmp/paastech-rootfs.XXXXXX)"
        "$root/scripts/make-busybox-rootfs.sh" "$rootfs" || { rm -rf "$rootfs"; return 1; }
        tar -C "$rootfs" -c . | podman import -q \
            --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$image" >/dev/null \
            || { rm -rf "$rootfs"; return 1; }
        rm -rf "$rootfs"
        echo "built $image"
    fi
    export PAASTECH_PODMAN_SOCKET="$sock"
}

# Whether the libpod API answers on the socket $1.
paastech_podman_answers() {
    timeout 10 podman --url "unix://$1" version >/dev/null 2>&1
}

# The pid of a `podman system service` serving /run/podman/podman.sock, if any.
paastech_podman_service_pid() {
    pgrep -f '^podman system service .*unix:///run/podman/podman.sock' | head -n 1
}

paastech_podman_setup
