#!/usr/bin/env bash
# Packs a root filesystem folder and an image config into a one-layer OCI image archive
# (an OCI layout in a tar) that `ctr images import --base-name NAME` imports as NAME:TAG.
# No Docker engine: umoci (Debian's, installed on first use) writes the layout, tar packs it.
#
#   tests/cluster/oci-image.sh SPEC ROOTFS NAME:TAG OUT.tar
#
# SPEC is a bash file of image config values, so one file holds them for every user of the
# image (e.g. tests/cluster/images/jobkeeper.spec). Each is optional:
#   IMAGE_USER=65532:65532    IMAGE_WORKDIR=/
#   IMAGE_ENTRYPOINT=(/app)   IMAGE_CMD=(run)      IMAGE_ENV=(K=V ...)
#   IMAGE_PORTS=(8080/tcp)    IMAGE_LABELS=(key=value ...)
# The archive's index names the image by TAG only (OCI's org.opencontainers.image.ref.name);
# the importer adds NAME, as `ctr images import --base-name NAME` does.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 SPEC ROOTFS NAME:TAG OUT.tar" >&2
  exit 2
fi
spec=$1 rootfs=$2 ref=$3 out=$4
tag=${ref##*:}
if [ "$tag" = "$ref" ] || [[ $tag == */* ]]; then
  echo "oci-image: $ref has no tag" >&2
  exit 2
fi
[ -d "$rootfs" ] || { echo "oci-image: $rootfs is not a folder" >&2; exit 2; }

IMAGE_USER='' IMAGE_WORKDIR=''
IMAGE_ENTRYPOINT=() IMAGE_CMD=() IMAGE_ENV=() IMAGE_PORTS=() IMAGE_LABELS=()
# shellcheck source=/dev/null
source "$spec"

if ! command -v umoci >/dev/null; then
  echo "oci-image: installing umoci" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends umoci >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
image=$layout:$tag

umoci init --layout "$layout"
umoci new --image "$image"
# One layer with the whole folder at /: unpack the empty image into a bundle, copy the
# folder in, repack. (umoci 0.4.7's `insert` writes a layer tar cut short of its end, which
# a strict reader such as containerd's rejects; repack's layers are whole.) Ownership and
# modes are kept as they are on disk, so the caller prepares them.
umoci unpack --image "$image" "$work/bundle" >/dev/null
cp -a "$rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$image" --history.created_by "oci-image.sh: $(basename "$rootfs")" \
  "$work/bundle"

# The config, in one umoci call; lists (entrypoint, cmd, ...) take one flag per element.
args=()
[ -n "$IMAGE_USER" ] && args+=(--config.user "$IMAGE_USER")
[ -n "$IMAGE_WORKDIR" ] && args+=(--config.workingdir "$IMAGE_WORKDIR")
for v in "${IMAGE_ENTRYPOINT[@]}"; do args+=(--config.entrypoint "$v"); done
for v in "${IMAGE_CMD[@]}"; do args+=(--config.cmd "$v"); done
for v in "${IMAGE_ENV[@]}"; do args+=(--config.env "$v"); done
for v in "${IMAGE_PORTS[@]}"; do args+=(--config.exposedports "$v"); done
for v in "${IMAGE_LABELS[@]}"; do args+=(--config.label "$v"); done
if [ ${#args[@]} -gt 0 ]; then
  umoci config --image "$image" --history.created_by "oci-image.sh: config" "${args[@]}"
fi
umoci gc --layout "$layout"

# An OCI archive is the layout's files at the tar's root. Sorted, root-owned entries so
# the same input gives the same tar listing.
mkdir -p "$(dirname "$out")"
tar -C "$layout" --sort=name --owner=0 --group=0 --numeric-owner \
  -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "oci-image: $ref -> $out ($(du -h "$out" | cut -f1))" >&2
