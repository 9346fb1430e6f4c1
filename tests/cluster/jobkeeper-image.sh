#!/usr/bin/env bash
# Builds jobkeeper's container image as an OCI archive without a Docker engine (`make image`):
# a static jobkeeper binary, /etc/passwd and /etc/group naming UID/GID 65532 `nonroot` (as
# distroless does), and the config in images/jobkeeper.spec, packed by oci-image.sh.
#
#   tests/cluster/jobkeeper-image.sh OUT.tar [NAME:TAG]     NAME:TAG defaults to jobkeeper:dev
#
# The binary: the Dockerfile builds for x86_64-unknown-linux-musl, which cannot be installed
# here (no rustup downloads), so this is a static glibc build instead: crt-static on the gnu
# target. An explicit --target keeps RUSTFLAGS off build scripts and proc macros. jobkeeper
# needs no name lookups in a cluster (the apiserver is KUBERNETES_SERVICE_HOST, an IP), which
# is the one thing static glibc cannot do without NSS libraries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: $0 OUT.tar [NAME:TAG]}
ref=${2:-jobkeeper:dev}
target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}

(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --bin jobkeeper)
binary=$target_dir/$target/release/jobkeeper

# Static, or the image (which has no libc) cannot run it.
if ! file -b "$binary" | grep -Eq 'static(-pie)? linked'; then
  echo "jobkeeper-image: $binary is not static: $(file -b "$binary")" >&2
  exit 1
fi
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "jobkeeper-image: $binary links shared libraries" >&2
  exit 1
fi
"$binary" --version >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/jobkeeper
mkdir -p "$rootfs/etc" "$rootfs/home/nonroot"
install -m 0755 "$binary" "$rootfs/jobkeeper"
strip "$rootfs/jobkeeper"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chown 65532:65532 "$rootfs/home/nonroot"
chmod 0700 "$rootfs/home/nonroot"
"$here/oci-image.sh" "$here/images/jobkeeper.spec" "$rootfs" "$ref" "$out"
