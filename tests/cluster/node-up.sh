# shellcheck shell=bash disable=SC2154  # sourced by up.sh, whose variables it uses
# The real node of the local cluster (REAL_NODE=1): containerd, a kubelet and kube-proxy on
# this machine, next to kwok's fake nodes. Sourced by up.sh once the control plane is up;
# uses its variables (dir, pki, bin, node_ip, k8s ports) and helpers (start, wait_for, k,
# token_of, say). tests/cluster/node-down.sh undoes everything this does.
#
# Layout: everything lives in DIR/node (containerd's root and state, the kubelet's root, pod
# logs, CNI config and IP allocations, runc's state) except what the components put in fixed
# places, which node-down.sh cleans up by name: shim sockets in /run/containerd/s, CNI's cache
# in /var/lib/cni, the kubelet's /var/log/containers links and device-plugin socket
# (/var/lib/kubelet/device-plugins, whatever --root-dir says), libmount's /run/mount, the
# cgroups under kubepods, the pod bridge, the kube-proxy/CNI iptables chains and the sysctls
# the kubelet and kube-proxy set.
#
# One real node per machine: the bridge, the iptables chains and the kubepods cgroups are
# machine-wide. /run/jobkeeper-real-node names the cluster folder that owns them.

node_name=real-node-0
node_label=jobkeeper.dev/real-node
pod_subnet=10.245.0.0/24  # kwok's fake pods take 10.244.0.0/16; Services 10.96.0.0/16
bridge=cni-jobkeeper      # <= 15 characters, and down.sh deletes it by this name
owner=/run/jobkeeper-real-node
node="$dir/node"

if [ "$(id -u)" != 0 ]; then
  say "REAL_NODE=1 needs root (mounts, network namespaces, iptables, cgroups)"
  exit 1
fi
if [ -f "$owner" ] && [ "$(cat "$owner")" != "$dir" ] && [ -d "$(cat "$owner")/pids" ]; then
  say "a real node already runs for $(cat "$owner"); stop it first (tests/cluster/down.sh $(cat "$owner"))"
  exit 1
fi
echo "$dir" >"$owner"

# --- packages the node needs from Debian ---------------------------------------------------
need=()
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
# (No conntrack tool: kube-proxy 1.37 clears stale flows over netlink itself.)
command -v umoci >/dev/null || need+=(umoci)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

nodebin=$("$here/build.sh" node)
# up.sh ran down.sh first, which unmounts everything under DIR/node; rm must not cross a mount.
if findmnt -rn -o TARGET | grep -qF "$node/"; then
  say "mounts left under $node; run tests/cluster/down.sh $dir"
  exit 1
fi
rm -rf "$node"
mkdir -p "$node"/{containerd,state,kubelet,pod-logs,cni-conf,cni-ipam,runc,images}
echo "$nodebin" >"$node/bin"  # for node-down.sh, which must not build anything

# The kernel settings the kubelet (overcommit, panic) and kube-proxy (conntrack, route_localnet)
# and the bridge plugin (ip_forward) may change: node-down.sh puts them back.
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
for s in "${sysctls[@]}"; do
  v=$(sysctl -n "$s" 2>/dev/null) && echo "$s=$v"
done >"$node/sysctl.saved"
# Fixed places shared with the machine: remember which ones existed, so down removes only
# what we created.
for d in /run/containerd /var/lib/cni /var/log/containers /var/lib/kubelet /run/mount; do
  [ -e "$d" ] && echo "$d"
done >"$node/preexisting"

# --- certificates: the kubelet's identity and serving cert, the apiserver's kubelet client --
sign() { # name subject ext-line
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
# The node authorizer knows a kubelet by this name and group.
sign kubelet-client "/O=system:nodes/CN=system:node:$node_name" "extendedKeyUsage=clientAuth"
sign kubelet-serving "/CN=$node_name" \
  "subjectAltName=IP:$node_ip,DNS:$node_name
extendedKeyUsage=serverAuth"

cat >"$node/kubelet.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $node_name
  user: {client-certificate: "$pki/kubelet-client.crt", client-key: "$pki/kubelet-client.key"}
contexts:
- name: local
  context: {cluster: local, user: $node_name}
current-context: local
KC
kubeconfig "$node/kube-proxy.kubeconfig" system:kube-proxy

# --- CNI: one bridge with host-local addresses, plus portmap for hostPorts --------------------
# The IP allocations go to DIR/node; the bridge plugin masquerades pod traffic leaving the
# subnet and lets a pod reach itself through a Service (hairpin).
cat >"$node/cni-conf/10-jobkeeper.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "jobkeeper",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$node/cni-ipam",
               "ranges": [[{"subnet": "$pod_subnet"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI

# --- containerd ------------------------------------------------------------------------------
# Own root, state and socket under DIR/node. restrict_oom_score_adj: this VM refuses to lower
# oom_score_adj (the kubelet asks -998 for sandboxes), which runc otherwise fails on.
# cgroup v1 here, so cgroupfs paths (SystemdCgroup = false). The sandbox image is our own,
# imported below: nothing is pulled. The opt and NRI plugins would write to /opt/containerd
# and /var/run/nri; nothing here uses them. (Shim sockets still go to /run/containerd/s.)
cat >"$node/containerd.toml" <<TOML
version = 4
root = "$node/containerd"
state = "$node/state"
imports = []
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"]

[plugins.'io.containerd.server.v1.grpc']
  address = "$node/containerd.sock"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "$node/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "jobkeeper.dev/pause:1"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "$nodebin/runc"
  Root = "$node/runc"
  SystemdCgroup = false
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "$node/cni-conf"
TOML
# The runc shim is found on containerd's PATH.
start containerd env PATH="$nodebin:$PATH" "$nodebin/containerd" --config "$node/containerd.toml"
ctr() { "$nodebin/ctr" --address "$node/containerd.sock" "$@"; }
wait_for containerd 60 ctr version

"$here/node-images.sh" "$node/images" | while read -r archive ref; do
  "$here/load-image.sh" "$dir" "$archive" "$ref" 2>/dev/null
done

# --- kubelet ---------------------------------------------------------------------------------
# Authn: client certs from the cluster CA (the apiserver's kubelet client) and bearer tokens
# checked with the apiserver; authz: SubjectAccessReviews. No cluster DNS. cgroup v1 with
# cgroupfs. No eviction and no image GC: the disk is shared with everything else and a
# DiskPressure taint would only confuse the tests.
cat >"$node/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$node_ip"
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$node/containerd.sock"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
podLogsDir: "$node/pod-logs"
serializeImagePulls: false
KUBELET
start kubelet "$nodebin/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
  --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" \
  --hostname-override "$node_name" --node-ip "$node_ip" \
  --node-labels "$node_label=true" --v 1

# --- kube-proxy ------------------------------------------------------------------------------
# iptables mode programs the ClusterIPs (the kubernetes Service included). Its conntrack
# settings are left as the kernel has them, and NodePorts are not opened on localhost (that
# needs route_localnet).
cat >"$node/kube-proxy.yaml" <<PROXY
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$node/kube-proxy.kubeconfig"}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $pod_subnet
healthzBindAddress: "127.0.0.1:$proxy_healthz_port"
metricsBindAddress: "127.0.0.1:$proxy_metrics_port"
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
PROXY
start kube-proxy "$nodebin/kube-proxy" --config "$node/kube-proxy.yaml"

node_ready() {
  [ "$(k get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for kubelet 120 node_ready
wait_for kube-proxy 60 curl -sf "http://127.0.0.1:$proxy_healthz_port/healthz"
say "real node $node_name Ready ($node_ip, pods $pod_subnet, label $node_label=true)"
