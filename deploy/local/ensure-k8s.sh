#!/usr/bin/env bash
# Provision a Kubernetes control plane for tests/k8s without containers or downloads of binaries:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and helm built from their Go modules
# (deploy/local/k8s-tools pins them), kwok (simulated nodes and pods), Dapr's sidecar injector, sentry
# and operator built from the same Dapr module as the runtime, and the Dapr and KEDA CRDs. Everything
# lands in ~/.cache/pgmeta/k8s-bin, stamped with the versions; a second run with the same stamp is a no-op.
set -euo pipefail

KUBERNETES_VERSION=1.34.4
HELM_VERSION=3.19.5   # the newest helm 3 whose k8s.io libraries are 0.34: it shares the apiserver's build
KWOK_VERSION=0.8.0
KEDA_VERSION=2.21.0
DAPR_RUNTIME_VERSION="${DAPR_RUNTIME_VERSION:-1.18.2}"
K8S_BIN="${PGMETA_K8S_BIN:-$HOME/.cache/pgmeta/k8s-bin}"
DAPR_BUILD_ROOT="${DAPR_BUILD_ROOT:-$HOME/.cache/pgmeta/dapr-build}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="$HERE/k8s-tools"
GO_SUM_HASH=$(sha256sum "$TOOLS/go.sum" "$TOOLS/go.mod" "$TOOLS/etcd/main.go" | sha256sum | cut -c1-12)
STAMP_TEXT="kubernetes=$KUBERNETES_VERSION helm=$HELM_VERSION kwok=$KWOK_VERSION keda=$KEDA_VERSION dapr=$DAPR_RUNTIME_VERSION tools=$GO_SUM_HASH"
STAMP="$K8S_BIN/.pgmeta-k8s-versions"
PROGRAMS=(etcd kube-apiserver kube-controller-manager kube-scheduler helm kwok injector sentry operator)

say() { echo "[k8s] $*"; }

installed_ok() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] || return 1
  for p in "${PROGRAMS[@]}"; do [ -x "$K8S_BIN/$p" ] || return 1; done
  [ -f "$K8S_BIN/crds/dapr/components.yaml" ] && [ -f "$K8S_BIN/crds/keda/keda.sh_scaledobjects.yaml" ] &&
    [ -f "$K8S_BIN/kwok-stages.yaml" ]
}

module_dir() {  # the read-only module cache folder of one module version
  go mod download -json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))'
}

if installed_ok; then
  say "control plane ($STAMP_TEXT) already in $K8S_BIN"
  exit 0
fi
command -v go >/dev/null 2>&1 || { say "ERROR: Go is needed to build the control plane and was not found"; exit 1; }
mkdir -p "$K8S_BIN/crds/dapr" "$K8S_BIN/crds/keda"
rm -f "$STAMP"
started=$(date +%s)
k8s_minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
# Version stamps as the release build sets them: helm and kubectl read the server's version.
ldflags_k8s="-s -w -X k8s.io/component-base/version.gitVersion=v$KUBERNETES_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor \
  -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"

say "building etcd, kube-apiserver, kube-controller-manager, kube-scheduler, helm (first time only; ~20 min on 2 cores)"
(cd "$TOOLS" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags_k8s" -o "$K8S_BIN/" \
  ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler helm.sh/helm/v3/cmd/helm)

say "building kwok $KWOK_VERSION"
# kwok's module has no replace directives, so `go install` of the tagged version works as is.
GOBIN="$K8S_BIN" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
# The kwok binary plays only the stages it is given (kwokctl normally writes them): nodes become Ready and
# keep a heartbeat; scheduled pods become Running and Ready, and deleted pods go away.
kwok_dir=$(module_dir "sigs.k8s.io/kwok@v$KWOK_VERSION")
for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
  echo "---"; cat "$kwok_dir/kustomize/stage/$stage.yaml"
done > "$K8S_BIN/kwok-stages.yaml"

say "building Dapr's injector, sentry, operator $DAPR_RUNTIME_VERSION"
dapr_src="$DAPR_BUILD_ROOT/dapr-$DAPR_RUNTIME_VERSION"
if [ ! -f "$dapr_src/go.mod" ]; then
  # Same writable copy ensure-dapr.sh makes (dapr's go.mod has replace directives: no `go install`).
  src_dir=$(module_dir "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION")
  mkdir -p "$DAPR_BUILD_ROOT"; cp -r "$src_dir" "$dapr_src"; chmod -R u+w "$dapr_src"
fi
(cd "$dapr_src" && CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_RUNTIME_VERSION" \
  -o "$K8S_BIN/" ./cmd/injector ./cmd/sentry ./cmd/operator)
cp "$dapr_src"/charts/dapr/crds/*.yaml "$K8S_BIN/crds/dapr/"

keda_dir=$(module_dir "github.com/kedacore/keda/v2@v$KEDA_VERSION")
cp "$keda_dir"/config/crd/bases/*.yaml "$K8S_BIN/crds/keda/"
chmod u+w "$K8S_BIN"/crds/*/*.yaml

echo "$STAMP_TEXT" > "$STAMP"
installed_ok || { say "ERROR: the build did not produce every program in $K8S_BIN"; exit 1; }
say "built into $K8S_BIN in $(( $(date +%s) - started )) s"
