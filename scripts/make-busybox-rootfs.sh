#!/usr/bin/env bash
# Makes a tiny root filesystem from busybox-static in DIR (created if missing), for
# `docker import` / `podman import`: /bin with busybox and a symlink per applet (sh, httpd,
# …), /tmp, and /etc/passwd and /etc/group with root and nobody. No registry needed.
#
#   scripts/make-busybox-rootfs.sh DIR
set -euo pipefail

dir="${1:?usage: make-busybox-rootfs.sh DIR}"
busybox="$(command -v busybox || true)"
[[ -x /bin/busybox ]] && busybox=/bin/busybox
if [[ -z "$busybox" ]]; then
    echo "busybox is not installed: apt-get install -y busybox-static" >&2
    exit 1
fi
# A dynamically linked busybox would need the host's libc inside the image.
linkage="$(LC_ALL=C ldd "$busybox" 2>&1 || true)"
if ! grep -qE 'not a dynamic executable|statically linked' <<<"$linkage"; then
    echo "$busybox is not statically linked: install busybox-static" >&2
    exit 1
fi

mkdir -p "$dir/bin" "$dir/tmp" "$dir/etc" "$dir/app" "$dir/proc" "$dir/sys" "$dir/dev"
chmod 1777 "$dir/tmp"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$dir/bin/$applet"
done
cat >"$dir/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$dir/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
