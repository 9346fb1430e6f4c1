#!/usr/bin/env bash
# Stops a control plane started by up.sh and leaves no process behind.
#   tests/cluster/down.sh [DIR]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$(cd "$here/../.." && pwd)/.cluster}
# A real node (REAL_NODE=1) first: its kubelet must stop before the apiserver, and its
# cleanup needs containerd still running.
[ -d "$dir/node" ] && "$here/node-down.sh" "$dir"
[ -d "$dir/pids" ] || exit 0
stop_all() { # signal
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "-$1" -- "-$pid" 2>/dev/null || kill "-$1" "$pid" 2>/dev/null || true
  done
}
alive() {
  for f in "$dir"/pids/*; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && return 0
  done
  return 1
}
stop_all TERM
for _ in $(seq 1 50); do alive || break; sleep 0.1; done
alive && stop_all KILL
for _ in $(seq 1 50); do alive || break; sleep 0.1; done
rm -rf "$dir/pids" "$dir/etcd-data"
echo "cluster: down ($dir)" >&2
