#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok with fake nodes. Idempotent.
#
#   tests/cluster/up.sh [DIR]        DIR defaults to .cluster in the repo root
#
# Environment:
#   KWOK_NODES=1            fake nodes to create
#   KWOK_POD_START_MS=100   Pending -> Running+Ready delay for pods on fake nodes
#   KWOK_POD_RUN_MS=1000    Running -> Succeeded delay for Job pods on fake nodes
#   KCM_CONTROLLERS=...     kube-controller-manager --controllers (default: what kind runs)
#   KCM_EXTRA_ARGS / APISERVER_EXTRA_ARGS   extra flags, e.g. for the benchmark
#   AUDIT=1                 write a Metadata-level audit log to DIR/audit.log
#   REAL_NODE=1             also run a real node here (containerd, kubelet, kube-proxy; see
#                           node-up.sh): pods pinned to it with the node label
#                           jobkeeper.dev/real-node=true run real containers. Needs root.
#                           kube-apiserver then listens on all addresses and advertises
#                           eth0's (NODE_IP overrides), so pods reach it through the
#                           `kubernetes` Service.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${1:-$repo/.cluster}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

nodes=${KWOK_NODES:-1}
export KWOK_POD_START_MS=${KWOK_POD_START_MS:-100}
export KWOK_POD_RUN_MS=${KWOK_POD_RUN_MS:-1000}
controllers=${KCM_CONTROLLERS:-*,bootstrapsigner,tokencleaner}

admin="$dir/admin.kubeconfig"
say() { echo "cluster: $*" >&2; }
real_node=${REAL_NODE:-0}
if [ "$real_node" = 1 ]; then
  # The node's address: pods reach the apiserver there, and the kubelet registers it.
  node_ip=${NODE_IP:-$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1 | head -n1)}
  if [ -z "$node_ip" ]; then
    say "REAL_NODE=1: no IPv4 address on eth0; set NODE_IP"
    exit 1
  fi
fi

running() { # name
  local pid
  pid=$(cat "$dir/pids/$1" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null
}

if [ -f "$admin" ] && running etcd && running kube-apiserver && running kube-controller-manager \
  && running kube-scheduler && running kwok \
  && { [ "$real_node" != 1 ] || { running containerd && running kubelet && running kube-proxy; }; }; then
  say "already running in $dir"
  echo "export KUBECONFIG=$admin"
  exit 0
fi
# A partial cluster from an earlier run: stop what is left and start afresh.
"$here/down.sh" "$dir" >/dev/null 2>&1 || true

bin=$("$here/build.sh")
export PATH="$bin:$PATH"
mkdir -p "$dir/pids" "$dir/logs" "$dir/pki"
rm -rf "$dir/etcd-data"

# N distinct free ports below the kernel's ephemeral range: a port the kernel hands out
# (bind to port 0) can be taken by an outgoing connection before its server binds it,
# which happened to kube-controller-manager, the last to start.
# With a real node the apiserver listens on all addresses, so the ports are checked there.
free_ports() { # count
  python3 - "$1" "$([ "$real_node" = 1 ] && echo 0.0.0.0 || echo 127.0.0.1)" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < int(sys.argv[1]):
    port = random.randint(10000, low - 1) if low > 10001 else 0
    s = socket.socket()
    try:
        s.bind((sys.argv[2], port))
        port = s.getsockname()[1]
    except OSError:
        continue
    finally:
        s.close()
    if port not in ports:
        ports.append(port)
print(*ports)
PY
}
if [ "$real_node" = 1 ]; then
  read -r etcd_port etcd_peer api_port kcm_port sched_port kwok_port \
    kubelet_port kubelet_healthz_port proxy_healthz_port proxy_metrics_port < <(free_ports 10)
else
  read -r etcd_port etcd_peer api_port kcm_port sched_port kwok_port < <(free_ports 6)
fi
echo "$api_port" >"$dir/apiserver.port"

# --- certificates and identities -----------------------------------------------------
pki="$dir/pki"
san='subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc'
if [ "$real_node" = 1 ]; then
  # Pods dial the apiserver at the kubernetes Service's ClusterIP (the first address of the
  # Service range), which kube-proxy forwards to the node's address.
  san+=",IP:$node_ip,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default"
fi
if [ ! -f "$pki/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=jobkeeper-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi
# (Re)issued when the names it must carry change, e.g. a folder reused with REAL_NODE=1.
if [ ! -f "$pki/serving.crt" ] || [ "$(cat "$pki/san.ext" 2>/dev/null)" != "$san" ]; then
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/serving.key" -out "$pki/serving.csr" 2>/dev/null
  printf '%s\n' "$san" >"$pki/san.ext"
  openssl x509 -req -in "$pki/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/san.ext" -out "$pki/serving.crt" 2>/dev/null
fi
token() { openssl rand -hex 16; }
if [ ! -f "$pki/tokens.csv" ]; then
  # token,user,uid,"groups"
  {
    echo "$(token),admin,admin,\"system:masters\""
    echo "$(token),system:kube-controller-manager,kcm,\"\""
    echo "$(token),system:kube-scheduler,scheduler,\"\""
    echo "$(token),kwok,kwok,\"system:masters\""
    # The controller's identity is its in-cluster ServiceAccount's name, so the RBAC in
    # deploy/ that binds that ServiceAccount applies to it unchanged.
    echo "$(token),system:serviceaccount:jobkeeper-system:jobkeeper,jobkeeper,\"system:serviceaccounts,system:serviceaccounts:jobkeeper-system,system:authenticated\""
    echo "$(token),system:serviceaccount:jobkeeper-system:jobkeeper-bench-ceiling,ceiling,\"system:masters\""
  } >"$pki/tokens.csv"
fi
if [ "$real_node" = 1 ] && ! grep -q ',system:kube-proxy,' "$pki/tokens.csv"; then
  # The built-in system:node-proxier binding grants this user what kube-proxy reads.
  echo "$(token),system:kube-proxy,kube-proxy,\"\"" >>"$pki/tokens.csv"
fi
token_of() { grep ",$1," "$pki/tokens.csv" | cut -d, -f1; }

kubeconfig() { # file user
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    token: $(token_of "$2")
contexts:
- name: local
  context: {cluster: local, user: $2, namespace: default}
current-context: local
KC
}
kubeconfig "$admin" admin
kubeconfig "$dir/kcm.kubeconfig" system:kube-controller-manager
kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler
kubeconfig "$dir/kwok.kubeconfig" kwok
kubeconfig "$dir/jobkeeper.kubeconfig" system:serviceaccount:jobkeeper-system:jobkeeper
kubeconfig "$dir/ceiling.kubeconfig" system:serviceaccount:jobkeeper-system:jobkeeper-bench-ceiling

# Each component's command line goes to DIR/cmd/NAME (shell-quoted), so restart.sh can
# start it again exactly as it was.
start() { # name args...
  local name=$1; shift
  mkdir -p "$dir/cmd"
  printf '%q ' "$@" >"$dir/cmd/$name"
  setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name"
}

wait_for() { # what seconds command...
  local what=$1 secs=$2; shift 2
  local until=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $until ]; then
      say "$what did not come up in ${secs}s; last log lines:"
      tail -n 30 "$dir/logs/$what.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# --- etcd ------------------------------------------------------------------------------
start etcd etcd --data-dir "$dir/etcd-data" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "default=http://127.0.0.1:$etcd_peer" --quota-backend-bytes 8589934592 \
  --log-level warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

# --- kube-apiserver ---------------------------------------------------------------------
audit_args=()
if [ "${AUDIT:-0}" = 1 ]; then
  cat >"$dir/audit-policy.yaml" <<AP
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
AP
  audit_args=(--audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log"
    --audit-log-format json --audit-log-mode batch --audit-log-maxsize 0)
fi
api_args=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
if [ "$real_node" = 1 ]; then
  # Pods reach the apiserver at the node's address (the `kubernetes` Service's endpoint,
  # which the lease reconciler publishes), the admin tools still at 127.0.0.1. It dials
  # kubelets at their InternalIP (there is no DNS for node names), checks their serving
  # certs against the cluster CA and authenticates with its own client cert.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/apiserver-kubelet-client.key" -out "$pki/apiserver-kubelet-client.csr" 2>/dev/null
  echo "extendedKeyUsage=clientAuth" >"$pki/client.ext"
  openssl x509 -req -in "$pki/apiserver-kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/client.ext" -out "$pki/apiserver-kubelet-client.crt" 2>/dev/null
  api_args=(--bind-address 0.0.0.0 --advertise-address "$node_ip" --endpoint-reconciler-type lease
    --kubelet-preferred-address-types InternalIP --kubelet-certificate-authority "$pki/ca.crt"
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key "$pki/apiserver-kubelet-client.key"
    --enable-admission-plugins NodeRestriction)
fi
# shellcheck disable=SC2086
start kube-apiserver kube-apiserver \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  "${api_args[@]}" --secure-port "$api_port" \
  --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged \
  --cert-dir "$dir/pki/apiserver" \
  "${audit_args[@]}" ${APISERVER_EXTRA_ARGS:-}
ready() { curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $(token_of admin)" \
  "https://127.0.0.1:$api_port/readyz" | grep -q ok; }
wait_for kube-apiserver 120 ready

# --- kube-controller-manager and kube-scheduler ------------------------------------------
# shellcheck disable=SC2086
start kube-controller-manager kube-controller-manager \
  --kubeconfig "$dir/kcm.kubeconfig" --authentication-kubeconfig "$dir/kcm.kubeconfig" \
  --authorization-kubeconfig "$dir/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$dir/pki/kcm" \
  --leader-elect=false --controllers "$controllers" \
  --use-service-account-credentials \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  ${KCM_EXTRA_ARGS:-}
start kube-scheduler kube-scheduler \
  --kubeconfig "$dir/scheduler.kubeconfig" --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --cert-dir "$dir/pki/scheduler" \
  --leader-elect=false

# --- kwok and its fake nodes ------------------------------------------------------------
envsubst_stages() { # expand ${KWOK_POD_*_MS} only
  sed -e "s/\${KWOK_POD_START_MS}/$KWOK_POD_START_MS/" -e "s/\${KWOK_POD_RUN_MS}/$KWOK_POD_RUN_MS/" \
    "$here/kwok-stages.yaml"
}
envsubst_stages >"$dir/kwok-stages.yaml"
start kwok kwok --kubeconfig "$dir/kwok.kubeconfig" --config "$dir/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-label-selector type=kwok \
  --server-address "127.0.0.1:$kwok_port" --node-lease-duration-seconds 0 --cidr 10.244.0.0/16 \
  --node-ip 10.0.0.1

k() { kubectl --kubeconfig "$admin" "$@"; }
for i in $(seq 0 $((nodes - 1))); do
  k apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux}
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
spec: {}
NODE
done
# The controller's RBAC, exactly as deploy/ grants it in-cluster.
if [ -f "$repo/deploy/base/rbac.yaml" ]; then
  k apply -f "$repo/deploy/base/namespace.yaml" -f "$repo/deploy/base/rbac.yaml" >/dev/null
fi

nodes_ready() { [ "$(k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" -ge "$nodes" ]; }
wait_for kwok 60 nodes_ready
wait_for kube-controller-manager 60 k get serviceaccount default -n default
if [ "$real_node" = 1 ]; then
  # shellcheck source=node-up.sh
  source "$here/node-up.sh"
fi
say "up in $dir (apiserver https://127.0.0.1:$api_port, $nodes kwok node(s)$([ "$real_node" = 1 ] && echo ", real node $node_name"))"
echo "export KUBECONFIG=$admin"
