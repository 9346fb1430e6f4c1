#!/usr/bin/env bash
# Imports an OCI archive into the real node's containerd (the `k8s.io` namespace the kubelet
# uses), the way `kind load docker-image` does for kind: `make image-load`. NAME:TAG is
# normalized as the kubelet normalizes a pod's image, so `jobkeeper:dev` becomes
# docker.io/library/jobkeeper:dev.
#
#   tests/cluster/load-image.sh DIR ARCHIVE NAME:TAG      DIR: a cluster up with REAL_NODE=1
set -euo pipefail
dir=${1:?usage: $0 DIR ARCHIVE NAME:TAG} archive=${2:?} ref=${3:?}
nodebin=$(cat "$dir/node/bin" 2>/dev/null) || {
  echo "load-image: no real node in $dir (start it with REAL_NODE=1 tests/cluster/up.sh $dir)" >&2
  exit 1
}
first=${ref%%/*}
if [ "$first" = "$ref" ]; then
  ref=docker.io/library/$ref
elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
  ref=docker.io/$ref
fi
"$nodebin/ctr" --address "$dir/node/containerd.sock" -n k8s.io images import \
  --base-name "${ref%:*}" "$archive" >&2
"$nodebin/ctr" --address "$dir/node/containerd.sock" -n k8s.io images ls "name==$ref" | grep -qF "$ref"
echo "load-image: $ref in $dir's real node" >&2
