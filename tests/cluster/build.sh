#!/usr/bin/env bash
# Builds the pinned control-plane binaries from upstream Go modules into a cache outside
# the repo (default ~/.cache/jobkeeper/<versions>/bin). Skips the build when they exist.
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${JOBKEEPER_CACHE:-$HOME/.cache/jobkeeper}
bin="$cache_root/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
want=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

have_all() {
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
}
if have_all; then
  echo "$bin"
  exit 0
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

build() { # dir, output, package
  echo "building $2 ($3)" >&2
  (cd "$here/gomod/$1" && go build -trimpath -ldflags "$ldflags" -o "$bin/$2.tmp" "$3")
  mv "$bin/$2.tmp" "$bin/$2"
}
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$bin/$cmd" ] || build kubernetes "$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
[ -x "$bin/etcd" ] || build etcd etcd go.etcd.io/etcd/server/v3
[ -x "$bin/kwok" ] || build kwok kwok sigs.k8s.io/kwok/cmd/kwok

echo "control plane built in $(( $(date +%s) - start ))s into $bin ($(du -sh "$bin" | cut -f1))" >&2
echo "$bin"
