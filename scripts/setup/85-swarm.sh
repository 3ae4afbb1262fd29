#!/usr/bin/env bash
# A two-node Docker Swarm on this one machine, for the swarm driver's tests
# (tests/tests/conformance_swarm.rs and the swarm journeys). Sourced by scripts/test.sh
# after 20-docker.sh and 80-registry.sh; also runs on its own:
#
#   bash scripts/setup/85-swarm.sh              # bring the cluster up (or check it), print the exports
#   bash scripts/setup/85-swarm.sh stop-node 2  # stop node 2's dockerd (a node lost)
#   bash scripts/setup/85-swarm.sh start-node 2 # start it again; returns once it is Ready again
#   bash scripts/setup/85-swarm.sh down         # remove the cluster, its namespaces and state
#
# What it makes (as root, idempotent: a cluster already up is only checked):
#   - a bridge ptswarm0 (10.231.0.1/24 on the host side) and two network namespaces
#     ptswarm-1 (10.231.0.11) and ptswarm-2 (10.231.0.12), each joined to it by a veth pair,
#     with FORWARD accepted on the bridge (the host's dockerd sets that policy to DROP);
#   - a dockerd in each namespace, started with `nsenter --net` (`ip netns exec` remounts
#     /sys and hides the cgroups, and dockerd then refuses to start), state under
#     /tmp/paastech-swarm/N, with `--no-new-privileges` (the service API of Docker 20.10,
#     API 1.41, cannot ask for it per service: the engine's default is what makes it so)
#     and the test registry as an insecure (plain-HTTP) one;
#   - a swarm: node 1 the manager, node 2 a worker. Both nodes share the host's hostname
#     (one UTS namespace): tell them apart by node id or address, never by hostname;
#   - a registry the nodes reach, at 10.231.0.1:5000: Debian's docker-registry (installed by
#     80-registry.sh) with a config and storage of its own (the one of 80-registry.sh listens
#     on loopback, which a namespace cannot reach), deletes enabled;
#   - paastech/busybox:latest imported into each node's engine (the base image builds start
#     FROM; builds for the swarm run on the manager's engine and are pushed to the registry).
# Exports:
#   PAASTECH_SWARM_SOCKET        node 1's (the manager's) API socket
#   PAASTECH_SWARM_NODE2_SOCKET  node 2's API socket
#   PAASTECH_SWARM_NODE2_PID     node 2's dockerd pid (stop-node/start-node handle it)
#   PAASTECH_SWARM_REGISTRY      the registry the nodes pull from (host:port)
#   PAASTECH_SWARM_SETUP         this script (tests run it with stop-node / start-node)

PAASTECH_SWARM_STATE=/tmp/paastech-swarm
PAASTECH_SWARM_BRIDGE=ptswarm0
PAASTECH_SWARM_NET=10.231.0

# Debian's client matches Debian's engine; another docker earlier in PATH may not.
paastech_swarm_docker() {
    local node="$1"
    shift
    local docker=docker
    [[ -x /usr/bin/docker ]] && docker=/usr/bin/docker
    "$docker" -H "unix://$PAASTECH_SWARM_STATE/$node/docker.sock" "$@"
}

paastech_swarm_answers() {
    paastech_swarm_docker "$1" info >/dev/null 2>&1
}

# The network of node N: its namespace, its veth pair, its address, a route out.
paastech_swarm_network() {
    local i="$1" ns="ptswarm-$1" net="$PAASTECH_SWARM_NET" br="$PAASTECH_SWARM_BRIDGE"
    if ! ip link show "$br" >/dev/null 2>&1; then
        ip link add "$br" type bridge
        ip addr add "$net.1/24" dev "$br"
    fi
    ip link set "$br" up
    [[ -e "/run/netns/$ns" ]] || ip netns add "$ns"
    if ! ip -n "$ns" link show "ptsw$i-n" >/dev/null 2>&1; then
        # A host side left by a namespace deleted under it.
        ip link del "ptsw$i-h" >/dev/null 2>&1 || true
        ip link add "ptsw$i-h" type veth peer name "ptsw$i-n"
        ip link set "ptsw$i-h" master "$br" up
        ip link set "ptsw$i-n" netns "$ns"
        ip -n "$ns" addr add "$net.1$i/24" dev "ptsw$i-n"
        ip -n "$ns" link set "ptsw$i-n" up
        ip -n "$ns" link set lo up
        ip -n "$ns" route add default via "$net.1"
    fi
    local dir
    for dir in -i -o; do
        iptables -C FORWARD "$dir" "$br" -j ACCEPT 2>/dev/null || iptables -I FORWARD "$dir" "$br" -j ACCEPT
    done
}

# Whether overlayfs mounts here (overlay2 needs it; else vfs).
paastech_swarm_storage_driver() {
    local probe
    probe="$(mktemp -d /tmp/paastech-overlay.XXXXXX)" || { echo vfs; return 0; }
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay2
    else
        echo vfs
    fi
    rm -rf "$probe"
}

# Starts node N's dockerd in its namespace unless it answers; waits until it does.
paastech_swarm_start_node() {
    local i="$1" dir="$PAASTECH_SWARM_STATE/$1"
    if paastech_swarm_answers "$i"; then
        # Started by an older copy of this script, which kept no pid of its own.
        if [[ ! -s "$dir/node.pid" ]]; then
            pgrep -f -x "dockerd --data-root $dir/data .*" >"$dir/node.pid" || true
        fi
        return 0
    fi
    paastech_swarm_network "$i"
    mkdir -p "$dir"
    rm -f "$dir/docker.sock" "$dir/docker.pid" "$dir/node.pid"
    local driver
    driver="$(paastech_swarm_storage_driver)"
    echo "starting node $i's dockerd in ptswarm-$i ($driver), log in $dir/dockerd.log"
    # setsid: the engine outlives this shell and the test run's process group. Its own
    # stdout and stderr go to its log, so no pipe of the caller stays open.
    # `$!` is dockerd itself (setsid and nsenter exec it in place), kept in a file of
    # ours: dockerd's own pid file is removed by an engine on its way out, which may be
    # after the next one wrote it.
    (
        cd /tmp || exit 1
        setsid nsenter --net="/run/netns/ptswarm-$i" dockerd \
            --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
            -H "unix://$dir/docker.sock" --storage-driver "$driver" \
            --insecure-registry "$PAASTECH_SWARM_NET.1:5000" --no-new-privileges \
            >>"$dir/dockerd.log" 2>&1 </dev/null &
        echo $! >"$dir/node.pid"
    ) >/dev/null 2>&1
    local t
    for ((t = 0; t < 120; t++)); do
        paastech_swarm_answers "$i" && return 0
        sleep 0.5
    done
    echo "node $i's dockerd did not answer within 60 s; last lines of $dir/dockerd.log:" >&2
    tail -n 30 "$dir/dockerd.log" >&2
    return 1
}

# Stops node N's dockerd: SIGTERM, then SIGKILL after 10 s (a manager whose namespace
# went may never exit on SIGTERM). Its containers' shims go with a kill of the whole
# session: node's containers are that node's, nothing else runs in it.
paastech_swarm_stop_node() {
    local i="$1" dir="$PAASTECH_SWARM_STATE/$1" pid
    pid="$(cat "$dir/node.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || { echo "node $i's dockerd is not running"; return 0; }
    kill "$pid" 2>/dev/null || true
    local t
    for ((t = 0; t < 20; t++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "node $i's dockerd ignored SIGTERM: killing it"
        kill -9 "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    echo "stopped node $i's dockerd (pid $pid)"
}

# Waits until the manager sees every node Ready (a restarted node rejoins a moment after
# its engine answers).
paastech_swarm_wait_ready() {
    local t
    for ((t = 0; t < 120; t++)); do
        if paastech_swarm_answers 1 && [[ "$(paastech_swarm_docker 1 node ls -q | wc -l)" -ge 2 ]] \
            && ! paastech_swarm_docker 1 node ls --format '{{.Status}}' | grep -qv Ready; then
            return 0
        fi
        sleep 0.5
    done
    echo "the swarm's nodes are not all Ready after 60 s:" >&2
    paastech_swarm_docker 1 node ls >&2 || true
    return 1
}

paastech_swarm_registry() {
    local addr="$PAASTECH_SWARM_NET.1:5000" dir="$PAASTECH_SWARM_STATE/registry"
    if curl -fsS --max-time 2 "http://$addr/v2/" >/dev/null 2>&1; then
        return 0
    fi
    command -v docker-registry >/dev/null || {
        echo "docker-registry is not installed: scripts/setup/80-registry.sh installs it" >&2
        return 1
    }
    mkdir -p "$dir/storage"
    cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $addr
YAML
    echo "starting docker-registry on $addr, log in $dir/registry.log"
    # `$!` is the registry itself: setsid, not a group leader here, execs it in place.
    (
        cd /tmp || exit 1
        setsid docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
        echo $! >"$dir/registry.pid"
    ) >/dev/null 2>&1
    local t
    for ((t = 0; t < 60; t++)); do
        curl -fsS --max-time 2 "http://$addr/v2/" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "docker-registry did not answer on $addr within 30 s; last lines of $dir/registry.log:" >&2
    tail -n 30 "$dir/registry.log" >&2
    return 1
}

paastech_swarm_base_image() {
    local i="$1" root
    paastech_swarm_docker "$i" image inspect paastech/busybox:latest >/dev/null 2>&1 && return 0
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    local rootfs
    rootfs="$(mktemp -d /tmp/paastech-rootfs.XXXXXX)"
    if ! "$root/scripts/make-busybox-rootfs.sh" "$rootfs"; then
        rm -rf "$rootfs"
        return 1
    fi
    if ! tar -C "$rootfs" -c . | paastech_swarm_docker "$i" import \
        --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - paastech/busybox:latest >/dev/null; then
        rm -rf "$rootfs"
        return 1
    fi
    rm -rf "$rootfs"
    echo "imported paastech/busybox:latest into node $i"
}

paastech_swarm_up() {
    local net="$PAASTECH_SWARM_NET" i
    if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
        # ip, iptables and nsenter; docker.io and docker-registry come from 20- and 80-.
        local missing=() p
        for p in iproute2 iptables util-linux curl; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        if ((${#missing[@]})); then
            echo "installing ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                    --no-install-recommends "${missing[@]}" >/dev/null; } || return 1
        fi
    fi
    for i in 1 2; do
        paastech_swarm_network "$i" || return 1
        paastech_swarm_start_node "$i" || return 1
    done
    if [[ "$(paastech_swarm_docker 1 info -f '{{.Swarm.LocalNodeState}}')" != active ]]; then
        echo "initializing the swarm on node 1 ($net.11)"
        paastech_swarm_docker 1 swarm init --advertise-addr "$net.11" --listen-addr "$net.11:2377" \
            --task-history-limit 10 >/dev/null || return 1
    fi
    if [[ "$(paastech_swarm_docker 2 info -f '{{.Swarm.LocalNodeState}}')" != active ]]; then
        local token
        token="$(paastech_swarm_docker 1 swarm join-token -q worker)" || return 1
        echo "joining node 2 ($net.12) as a worker"
        paastech_swarm_docker 2 swarm join --token "$token" --advertise-addr "$net.12" "$net.11:2377" >/dev/null \
            || return 1
    fi
    # Both nodes Ready before anything is scheduled (a join is reported a moment later).
    paastech_swarm_wait_ready || return 1
    paastech_swarm_registry || return 1
    for i in 1 2; do
        paastech_swarm_base_image "$i" || return 1
    done
    PAASTECH_SWARM_SOCKET="$PAASTECH_SWARM_STATE/1/docker.sock"
    PAASTECH_SWARM_NODE2_SOCKET="$PAASTECH_SWARM_STATE/2/docker.sock"
    PAASTECH_SWARM_NODE2_PID="$(cat "$PAASTECH_SWARM_STATE/2/node.pid" 2>/dev/null || true)"
    PAASTECH_SWARM_REGISTRY="$net.1:5000"
    PAASTECH_SWARM_SETUP="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
    export PAASTECH_SWARM_SOCKET PAASTECH_SWARM_NODE2_SOCKET PAASTECH_SWARM_NODE2_PID PAASTECH_SWARM_REGISTRY \
        PAASTECH_SWARM_SETUP
    echo "swarm of 2 nodes: manager at $PAASTECH_SWARM_SOCKET ($net.11), worker $net.12, registry $PAASTECH_SWARM_REGISTRY"
}

paastech_swarm_down() {
    local i
    for i in 1 2; do
        # The swarm's containers first, while the engine can still stop them.
        if paastech_swarm_answers "$i"; then
            paastech_swarm_docker "$i" swarm leave --force >/dev/null 2>&1 || true
        fi
        paastech_swarm_stop_node "$i"
        # Mounts the engine left under its state (a killed one does not unmount).
        grep -o " $PAASTECH_SWARM_STATE/$i/[^ ]*" /proc/mounts | sort -r | while read -r mnt; do
            umount -l "$mnt" 2>/dev/null || true
        done
        ip netns del "ptswarm-$i" 2>/dev/null || true
        ip link del "ptsw$i-h" 2>/dev/null || true
    done
    local pid
    pid="$(cat "$PAASTECH_SWARM_STATE/registry/registry.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    ip link del "$PAASTECH_SWARM_BRIDGE" 2>/dev/null || true
    rm -rf "$PAASTECH_SWARM_STATE"
    echo "the swarm test cluster is down"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-up}" in
        up) paastech_swarm_up ;;
        stop-node) paastech_swarm_stop_node "${2:?stop-node needs a node number}" ;;
        start-node)
            paastech_swarm_start_node "${2:?start-node needs a node number}"
            paastech_swarm_wait_ready
            ;;
        down) paastech_swarm_down ;;
        *) echo "usage: $0 [up | stop-node N | start-node N | down]" >&2; exit 2 ;;
    esac
else
    paastech_swarm_up
fi
