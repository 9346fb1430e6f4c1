#!/usr/bin/env bash
# Stops the real node node-up.sh started in DIR and removes everything it left on the
# machine: containers and their shims, mounts under DIR/node, the pod bridge and veths, the
# iptables chains of kube-proxy, the kubelet and CNI, the kubepods cgroups, the files in
# fixed places (/run/containerd, /var/lib/cni, /var/log/containers) and the sysctls the
# components changed. Run by down.sh before it stops the control plane.
#
#   tests/cluster/node-down.sh DIR
#
# Best effort like down.sh (no -e): a step that fails must not keep the later ones from
# running. Every step is safe to repeat.
set -uo pipefail
dir=${1:?usage: $0 DIR}
node="$dir/node"
[ -d "$node" ] || exit 0
bridge=cni-jobkeeper
owner=/run/jobkeeper-real-node
say() { echo "cluster: $*" >&2; }
nodebin=$(cat "$node/bin" 2>/dev/null || true)

stop() { # component: TERM its process group, KILL it after 10 s
  local f="$dir/pids/$1" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  rm -f "$f"
}
alive() { [ -f "$dir/pids/$1" ] && kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null; }

# 1. The kubelet first, so nothing restarts the containers; kube-proxy with it.
stop kubelet
stop kube-proxy

# 2. The containers, through containerd while it runs: the shims then unmount the rootfs
#    and exit on their own.
if alive containerd && [ -x "$nodebin/ctr" ]; then
  ctr() { timeout 20 "$nodebin/ctr" --address "$node/containerd.sock" -n k8s.io "$@"; }
  for id in $(ctr tasks ls -q 2>/dev/null); do
    ctr tasks rm -f "$id" >/dev/null 2>&1
  done
fi
# Whatever still runs in the pods' cgroups (a shim that did not answer, say).
kill_cgroup_procs() {
  local found=1
  for _ in $(seq 1 50); do
    found=0
    for procs in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/**/cgroup.procs; do
      [ -f "$procs" ] || continue
      while read -r pid; do
        found=1
        kill -KILL "$pid" 2>/dev/null
      done <"$procs"
    done
    [ $found = 0 ] && return 0
    sleep 0.1
  done
}
shopt -s globstar nullglob
kill_cgroup_procs
stop containerd
# Shims of this node that outlived containerd: our shim binary, started with its socket.
for exe in /proc/[0-9]*/exe; do
  [ "$(readlink "$exe" 2>/dev/null)" = "$nodebin/containerd-shim-runc-v2" ] || continue
  pid=${exe#/proc/}; pid=${pid%/exe}
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$node/containerd.sock" \
    && kill -KILL "$pid" 2>/dev/null
done
kill_cgroup_procs

# 3. Mounts under DIR/node (overlay rootfs, shm, network namespaces, volumes), deepest first.
#    A network namespace goes with its last mount and process, and its veth pair with it.
unmount_all() {
  findmnt -rn -o TARGET | grep -F "$node/" | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
  done
}
unmount_all
unmount_all

# 4. The pod network: veths still on the bridge, the bridge.
for veth in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$veth" 2>/dev/null
done
ip link del "$bridge" 2>/dev/null

# 5. iptables: kube-proxy's own cleanup, then every KUBE-* and CNI-* chain that is left (the
#    kubelet's canaries, the bridge plugin's masquerade chains, portmap's) and the rules in
#    other chains that jump to them.
if [ -x "$nodebin/kube-proxy" ]; then
  "$nodebin/kube-proxy" --cleanup >"$dir/logs/kube-proxy-cleanup.log" 2>&1
fi
for cmd in iptables ip6tables; do
  command -v "$cmd" >/dev/null || continue
  for table in filter nat mangle raw; do
    rules=$("$cmd" -w -t "$table" -S 2>/dev/null) || continue
    grep -E '^-A ' <<<"$rules" | grep -vE '^-A (KUBE|CNI)-' | grep -E -- '-j (KUBE|CNI)-' \
      | sed 's/^-A /-D /' | while read -r rule; do
        eval "$cmd -w -t $table $rule" 2>/dev/null
      done
    chains=$(awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}' <<<"$rules")
    for c in $chains; do "$cmd" -w -t "$table" -F "$c" 2>/dev/null; done
    for c in $chains; do "$cmd" -w -t "$table" -X "$c" 2>/dev/null; done
  done
done

# 6. The cgroups the kubelet and runc made, leaves first.
for root in /sys/fs/cgroup/*/kubepods; do
  find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 7. Files in fixed places: CNI's result cache for our network, the kubelet's container log
#    links into DIR/node and its device-plugin socket, libmount's lock folder, and the shim
#    sockets (/run/containerd/s) when /run/containerd is ours alone.
preexisting() { grep -qx "$1" "$node/preexisting" 2>/dev/null; }
rm -f /var/lib/cni/results/jobkeeper-*
preexisting /var/lib/cni || rm -rf /var/lib/cni
for link in /var/log/containers/*; do
  [ -L "$link" ] && [[ $(readlink "$link") == "$node/"* ]] && rm -f "$link"
done
preexisting /var/log/containers || rmdir /var/log/containers 2>/dev/null
preexisting /run/containerd || rm -rf /run/containerd
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
preexisting /var/lib/kubelet || rm -rf /var/lib/kubelet
preexisting /run/mount || rmdir /run/mount 2>/dev/null

# 8. The sysctls, as they were before node-up.sh.
if [ -f "$node/sysctl.saved" ]; then
  while IFS= read -r line; do
    [ "$(sysctl -n "${line%%=*}" 2>/dev/null)" = "${line#*=}" ] || sysctl -q -w "$line" >/dev/null 2>&1
  done <"$node/sysctl.saved"
fi

# 9. DIR/node itself, once nothing is mounted under it (rm must not cross into a mount).
if findmnt -rn -o TARGET | grep -qF "$node/"; then
  say "mounts left under $node; not removing it"
else
  rm -rf "$node"
fi
[ "$(cat "$owner" 2>/dev/null)" = "$dir" ] && rm -f "$owner"
say "real node down ($dir)"
exit 0
