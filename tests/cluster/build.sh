#!/usr/bin/env bash
# Builds the pinned upstream binaries from their Go modules into a cache outside the repo
# and prints the bin directory on stdout; progress goes to stderr. Skips what exists.
#
#   tests/cluster/build.sh         the control plane: kube-apiserver, kube-controller-manager,
#                                  kube-scheduler, kubectl, etcd, kwok
#                                  (~/.cache/jobkeeper/k8s-<v>-etcd-<v>-kwok-<v>/bin)
#   tests/cluster/build.sh node    the real node (REAL_NODE=1 up.sh): kubelet, kube-proxy,
#                                  containerd, containerd-shim-runc-v2, ctr, runc
#                                  (~/.cache/jobkeeper/node-k8s-<v>-containerd-<v>-runc-<v>/bin)
#
# The two caches are separate so adding the node changed neither the control plane's folder
# name nor its contents.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
mode=${1:-control-plane}
case $mode in control-plane | node) ;; *) echo "usage: $0 [node]" >&2; exit 2 ;; esac

cache_root=${JOBKEEPER_CACHE:-$HOME/.cache/jobkeeper}
if [ "$mode" = node ]; then
  bin="$cache_root/node-k8s-$KUBERNETES_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION/bin"
  want=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc)
else
  bin="$cache_root/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
  want=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
fi

have_all() {
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
}
if have_all; then
  echo "$bin"
  exit 0
fi
if [ "$mode" = node ]; then
  # versions.env names the cache folder and the version strings; the wrapper modules'
  # go.mod pick what is built. They must agree.
  pinned() { (cd "$here/gomod/$1" && go list -m -f '{{.Version}}' "$2"); }
  for check in "kubernetes k8s.io/kubernetes $KUBERNETES_VERSION" \
    "containerd github.com/containerd/containerd/v2 $CONTAINERD_VERSION" \
    "runc github.com/opencontainers/runc $RUNC_VERSION"; do
    read -r dir module version <<<"$check"
    if [ "$(pinned "$dir" "$module")" != "$version" ]; then
      echo "gomod/$dir requires $module $(pinned "$dir" "$module"), versions.env says $version" >&2
      exit 1
    fi
  done
fi
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
start=$(date +%s)

minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

k8s_ldflags=$ldflags

build() { # dir, output, package, [extra go build args...]
  local dir=$1 out=$2 pkg=$3 t=$SECONDS
  shift 3
  echo "building $out ($pkg)" >&2
  (cd "$here/gomod/$dir" && go build -trimpath -ldflags "$ldflags" "$@" -o "$bin/$out.tmp" "$pkg")
  mv "$bin/$out.tmp" "$bin/$out"
  echo "built $out in $((SECONDS - t))s" >&2
}

if [ "$mode" = node ]; then
  # containerd: no_btrfs because the btrfs snapshotter needs cgo; overlayfs is what we use.
  ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    [ -x "$bin/$cmd" ] || build containerd "$cmd" "github.com/containerd/containerd/v2/cmd/$cmd" -tags no_btrfs
  done
  # runc needs cgo (its nsenter is C) and libseccomp for seccomp profiles (RuntimeDefault).
  if [ ! -x "$bin/runc" ]; then
    if ! pkg-config --exists libseccomp 2>/dev/null; then
      echo "installing libseccomp-dev and pkg-config for runc's cgo build" >&2
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends libseccomp-dev pkg-config gcc libc6-dev >&2
    fi
    ldflags="-s -w -X main.version=${RUNC_VERSION#v}"
    (export CGO_ENABLED=1; build runc runc github.com/opencontainers/runc -tags "seccomp urfave_cli_no_docs")
  fi
  # Last: they share most packages with the control plane, so the Go build cache is warm
  # when the control plane was built first.
  ldflags=$k8s_ldflags
  for cmd in kubelet kube-proxy; do
    [ -x "$bin/$cmd" ] || build kubernetes "$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  echo "node built in $(( $(date +%s) - start ))s into $bin ($(du -sh "$bin" | cut -f1))" >&2
  echo "$bin"
  exit 0
fi

for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$bin/$cmd" ] || build kubernetes "$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
[ -x "$bin/etcd" ] || build etcd etcd go.etcd.io/etcd/server/v3
[ -x "$bin/kwok" ] || build kwok kwok sigs.k8s.io/kwok/cmd/kwok

echo "control plane built in $(( $(date +%s) - start ))s into $bin ($(du -sh "$bin" | cut -f1))" >&2
echo "$bin"
