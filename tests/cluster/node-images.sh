#!/usr/bin/env bash
# Builds the real node's two images as OCI archives, without a registry or Docker engine:
#   OUT/pause.tar    jobkeeper.dev/pause:1             the pod sandbox (images/pause.c)
#   OUT/busybox.tar  docker.io/library/busybox:1.35    Debian's busybox-static, for test pods
# Prints "ARCHIVE NAME:TAG" lines on stdout for the importer; progress goes to stderr.
# Installs gcc and busybox-static with apt-get when missing.
#
#   tests/cluster/node-images.sh OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: $0 OUT}
mkdir -p "$out"

PAUSE_IMAGE=jobkeeper.dev/pause:1
BUSYBOX_IMAGE=docker.io/library/busybox:1.35

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "node-images: installing ${need[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# pause: one static binary and nothing else.
mkdir -p "$work/pause"
gcc -static -Os -s -Wall -Wextra -Werror -o "$work/pause/pause" "$here/images/pause.c"
"$here/oci-image.sh" "$here/images/pause.spec" "$work/pause" "$PAUSE_IMAGE" "$out/pause.tar"
echo "$out/pause.tar $PAUSE_IMAGE"

# busybox: the static binary plus one symlink per applet, all in /bin (the image's PATH
# covers it), a world-writable /tmp, and root/nobody in /etc/passwd and /etc/group.
# Debian's build links glibc statically: wget and other name lookups crash without NSS
# libraries, but sh, nc, sleep and the like work.
rootfs=$work/busybox
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
"$here/oci-image.sh" "$here/images/busybox.spec" "$rootfs" "$BUSYBOX_IMAGE" "$out/busybox.tar"
echo "$out/busybox.tar $BUSYBOX_IMAGE"
