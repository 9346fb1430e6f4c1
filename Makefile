# jobkeeper — common tasks. `make run` and `make test` are the two set-up commands.
SHELL := /bin/bash
CLUSTER_DIR ?= $(CURDIR)/.cluster
KUBECONFIG_ADMIN := $(CLUSTER_DIR)/admin.kubeconfig
KUBECTL = $$(tests/cluster/build.sh)/kubectl --kubeconfig $(KUBECONFIG_ADMIN)
IMAGE ?= jobkeeper:dev

.PHONY: all build release test unit lint integration run run-local cluster-up cluster-down \
        control-plane node image image-load bench chaos docker-build docker-lint manifests deploy \
        undeploy clean

all: build

build:
	cargo build

release:
	cargo build --release

## Builds (or reuses) the pinned kube-apiserver, kube-controller-manager, kube-scheduler,
## kubectl, etcd and kwok in ~/.cache/jobkeeper.
control-plane:
	@tests/cluster/build.sh

## Builds (or reuses) the real node's kubelet, kube-proxy, containerd and runc in
## ~/.cache/jobkeeper/node-*: `REAL_NODE=1 make cluster-up` runs them.
node:
	@tests/cluster/build.sh node

## REAL_NODE=1 make cluster-up: also a real node (containerd, kubelet, kube-proxy) next to
## the kwok nodes; needs root. `make cluster-down` removes all of it.
cluster-up:
	@tests/cluster/up.sh $(CLUSTER_DIR)

cluster-down:
	@tests/cluster/down.sh $(CLUSTER_DIR)

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

unit:
	cargo test --lib --bins

## Integration tests start their own control planes, in $(TEST_CLUSTER) and, with a real
## node, in $(TEST_REAL_CLUSTER) (see tests/support), and stop them afterwards; KEEP_CLUSTER=1
## keeps them for the next run. tests/in_cluster.rs loads the image `make image` built
## (jobkeeper-image.sh packs anew each time, so it is built once here, not by the test).
TEST_CLUSTER ?= $(CURDIR)/target/test-cluster
TEST_REAL_CLUSTER ?= $(CURDIR)/target/test-cluster-real
integration: control-plane node image
	@status=0; JOBKEEPER_TEST_CLUSTER=$(TEST_CLUSTER) JOBKEEPER_TEST_REAL_CLUSTER=$(TEST_REAL_CLUSTER) \
	  JOBKEEPER_IMAGE_ARCHIVE=$(IMAGE_ARCHIVE) cargo test --no-fail-fast --test '*' -- --test-threads=4 || status=$$?; \
	  if [ -z "$(KEEP_CLUSTER)" ]; then tests/cluster/down.sh $(TEST_CLUSTER); \
	    tests/cluster/down.sh $(TEST_REAL_CLUSTER); \
	    for d in $(CURDIR)/target/test-cluster-*; do [ -d "$$d" ] && tests/cluster/down.sh "$$d"; done; \
	  fi; exit $$status

test: lint unit integration

## jobkeeper as users run it: a cluster with a real node (root; no kwok node), the image
## built and loaded, `kubectl apply -k deploy/`, the sample Jobs, then the leader's logs.
## Ctrl-C stops following the logs; the cluster stays up until `make cluster-down`.
run: control-plane node
	tests/cluster/run.sh $(CLUSTER_DIR) $(IMAGE_ARCHIVE) $(IMAGE)

## Quick iteration: the kwok-only cluster and the controller out of cluster, as the
## controller's own identity. Ctrl-C stops the controller.
run-local: cluster-up
	cargo build --bin jobkeeper
	$(KUBECTL) apply -f deploy/examples/
	@echo "watch with: export KUBECONFIG=$(KUBECONFIG_ADMIN); kubectl get jobs -w"
	cargo run --quiet --bin jobkeeper -- --kubeconfig $(CLUSTER_DIR)/jobkeeper.kubeconfig run \
	  --metrics-addr 127.0.0.1:8080 --health-addr 127.0.0.1:8081

## KCM's job controller vs jobkeeper vs a minimal writer, one local control plane per client
## limit; report and plots in bench/results/<date>/. Quick run: make bench BENCH_ARGS="--scale 0.1"
bench: control-plane
	cargo build --release --bin jobkeeper --bin jobkeeper-bench
	$${CARGO_TARGET_DIR:-target}/release/jobkeeper-bench $(BENCH_ARGS)

## Mixed Jobs while jobkeeper is SIGKILLed every ~10 s, kube-apiserver and etcd restart and a
## second writer causes 409s; every final status against the built-in controller's twin,
## and no over-count, duplicate pod, leaked finalizer, 422 or changed user field.
## Its last mode installs the Deployment from deploy/ (`make image`'s image) on a real node,
## which needs root. Report in chaos/results/<date>/.
## Quick run: make chaos CHAOS_ARGS="--jobs 50 --kills 5"; one mode: CHAOS_ARGS="--mode deployment"
chaos: control-plane node image
	cargo build --release --bin jobkeeper --bin jobkeeper-chaos
	$${CARGO_TARGET_DIR:-target}/release/jobkeeper-chaos --mode all $(CHAOS_ARGS)

## jobkeeper's image without a Docker engine: a static binary and the config in
## tests/cluster/images/jobkeeper.spec (the Dockerfile's final stage; tests/deploy.rs keeps
## them equal), as an OCI archive. `make image-load` imports it into the real node of
## $(CLUSTER_DIR) as docker.io/library/$(IMAGE), as `kind load docker-image` would.
IMAGE_ARCHIVE ?= $${CARGO_TARGET_DIR:-target}/image/jobkeeper.tar
image:
	tests/cluster/jobkeeper-image.sh $(IMAGE_ARCHIVE) $(IMAGE)

image-load:
	@[ -f $(IMAGE_ARCHIVE) ] || { echo "no $(IMAGE_ARCHIVE): run make image first" >&2; exit 1; }
	tests/cluster/load-image.sh $(CLUSTER_DIR) $(IMAGE_ARCHIVE) $(IMAGE)

docker-build:
	docker build -t $(IMAGE) .

docker-lint:
	tests/lint-dockerfile.sh

## deploy/jobkeeper.yaml, the one-file install (`kubectl apply -f deploy/`), is the
## kustomization rendered; tests/deploy.rs fails when the two differ.
manifests:
	@{ echo "# jobkeeper, all in one file: kubectl apply -f deploy/   (or: kubectl apply -k deploy/)"; \
	   echo "# Rendered from deploy/Kustomization by 'make manifests'; edit deploy/base/, not this file."; \
	   $(KUBECTL) kustomize deploy/; } >deploy/jobkeeper.yaml

deploy:
	kubectl apply -k deploy/

undeploy:
	kubectl delete -k deploy/

clean:
	cargo clean
	tests/cluster/down.sh $(CLUSTER_DIR); rm -rf $(CLUSTER_DIR)
	for d in .chaos-cluster/*; do [ -d "$$d" ] && tests/cluster/down.sh "$$d"; done; rm -rf .chaos-cluster
	for d in .bench-cluster-*; do [ -d "$$d" ] && tests/cluster/down.sh "$$d"; rm -rf "$$d"; done
