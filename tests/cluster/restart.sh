#!/usr/bin/env bash
# Restarts one component of a running control plane started by up.sh: stops it by its pid
# file (SIGTERM, then SIGKILL after 10 s) and starts it again with the command line up.sh
# saved in DIR/cmd, then waits until it serves again. The chaos run uses it.
#
#   tests/cluster/restart.sh DIR etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok
#
# RESTART_TIMEOUT=300   seconds to wait for it to serve again (a loaded apiserver with
#                       thousands of objects takes minutes to turn ready on 2 cores)
set -euo pipefail
dir=$(cd "${1:?usage: restart.sh DIR COMPONENT}" && pwd)
name=${2:?usage: restart.sh DIR COMPONENT}
say() { echo "cluster: $*" >&2; }
[ -f "$dir/cmd/$name" ] || { say "no saved command line $dir/cmd/$name (cluster started by an older up.sh?)"; exit 1; }
pid=$(cat "$dir/pids/$name")

stop() {
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  say "$name (pid $pid) did not stop"
  exit 1
}
stop
bin=$("$(dirname "$0")/build.sh")
export PATH="$bin:$PATH"
eval "setsid $(cat "$dir/cmd/$name") >>\"\$dir/logs/\$name.log\" 2>&1 </dev/null &"
echo $! >"$dir/pids/$name"

pki="$dir/pki"
serving() {
  case $name in
    etcd) curl -sf "$(grep -o 'http://127.0.0.1:[0-9]*' "$dir/cmd/etcd" | head -n1)/health" ;;
    kube-apiserver)
      curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $(grep ',admin,' "$pki/tokens.csv" | cut -d, -f1)" \
        "https://127.0.0.1:$(cat "$dir/apiserver.port")/readyz" | grep -q ok ;;
    *) kill -0 "$(cat "$dir/pids/$name")" ;;
  esac
}
timeout=${RESTART_TIMEOUT:-300}
until=$((SECONDS + timeout))
until serving >/dev/null 2>&1; do
  if [ $SECONDS -ge $until ]; then
    say "$name did not come back in $timeout s; last log lines:"
    tail -n 30 "$dir/logs/$name.log" >&2 || true
    exit 1
  fi
  sleep 0.2
done
say "$name restarted (pid $(cat "$dir/pids/$name"))"
