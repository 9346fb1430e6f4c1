#!/usr/bin/env bash
# `make run`: jobkeeper the way its users run it. A local cluster whose one node is real
# (containerd, kubelet, kube-proxy: no kwok node, so every pod runs real containers),
# jobkeeper's image built and loaded into that node as `kind load docker-image` would,
# `kubectl apply -k deploy/` exactly as the README gives it, the sample Jobs, and then the
# leader's logs, followed until Ctrl-C. The cluster stays up until `make cluster-down`.
#
#   tests/cluster/run.sh DIR IMAGE_ARCHIVE [NAME:TAG]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${1:?usage: $0 DIR IMAGE_ARCHIVE [NAME:TAG]} archive=${2:?} ref=${3:-jobkeeper:dev}
say() { echo "run: $*" >&2; }

REAL_NODE=1 KWOK_NODES=0 "$here/up.sh" "$dir" >/dev/null
"$here/jobkeeper-image.sh" "$archive" "$ref"
"$here/load-image.sh" "$dir" "$archive" "$ref"

k() { "$("$here/build.sh")/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"; }
cd "$repo"
installed=$(k -n jobkeeper-system get deploy/jobkeeper -o name 2>/dev/null || true)
k apply -k deploy/
# A reinstall with a new image under the same tag: the pods must start from the new one.
[ -z "$installed" ] || k -n jobkeeper-system rollout restart deploy/jobkeeper >/dev/null
k -n jobkeeper-system rollout status deploy/jobkeeper --timeout=180s
k apply -f deploy/examples/

# The Lease names the leader's process, `<pod name>_<random>`.
leader=""
for _ in $(seq 1 120); do
  holder=$(k -n jobkeeper-system get lease jobkeeper -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  if [ -n "$holder" ] && k -n jobkeeper-system get pod "${holder%_*}" >/dev/null 2>&1; then
    leader=${holder%_*}
    break
  fi
  sleep 0.5
done
[ -n "$leader" ] || { say "no replica of jobkeeper-system/jobkeeper took the Lease"; exit 1; }
cat >&2 <<MSG
run: jobkeeper runs in-cluster; the leader is $leader. In another shell:
  export KUBECONFIG=$dir/admin.kubeconfig PATH=$("$here/build.sh"):\$PATH
  kubectl get jobs -w
  kubectl -n jobkeeper-system logs deploy/jobkeeper     (any replica; the leader logs the decisions)
run: following the leader's logs (Ctrl-C stops following; the cluster stays up until make cluster-down)
MSG
exec "$("$here/build.sh")/kubectl" --kubeconfig "$dir/admin.kubeconfig" \
  -n jobkeeper-system logs -f "$leader"
