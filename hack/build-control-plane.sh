#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager and kube-scheduler from the Go module proxy and cache them
# outside the repository, keyed by version. A second call with the same versions costs ~0 s.
#
# Usage: hack/build-control-plane.sh            # prints the bin directory on its last line
# Env:   K8S_VERSION (v1.37.2), ETCD_VERSION (v3.6.16),
#        DASK_OPERATOR_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${DASK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator}
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}"
OUT="$CACHE/control-plane/$KEY"
BIN="$OUT/bin"
WANT=(etcd kube-apiserver kube-controller-manager kube-scheduler)

die() { echo "build-control-plane: $*" >&2; exit 1; }

have_all() {
  [ -f "$BIN/VERSIONS" ] || return 1
  for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done
}

start=$(date +%s)
# One build at a time: parallel test runs would otherwise remove each other's work directories; a
# second run waits here and then finds the cache filled.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-control-plane.lock"
flock 9
if have_all; then
  echo "build-control-plane: cached ($KEY) in $(( $(date +%s) - start )) s"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed; it is needed once to build the control plane (see README, Development)."
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$OUT/logs" "$BIN"
log="$OUT/logs/build.log"
: >"$log"
echo "build-control-plane: building $KEY (log: $log); a cold build takes tens of minutes on 2 cores"

run() {  # run a step, appending to the log; on failure print the tail and the log path
  if ! "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "step failed: $* (full log: $log)"
  fi
}
# The staging-module mapping and version stamps hack/build-node.sh shares, so kubelet and API server match.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/k8s-module.sh"

build_etcd() {
  local mod="$OUT/etcd-mod"
  [ -x "$BIN/etcd" ] && return 0
  rm -rf "$mod"; mkdir -p "$mod"
  (cd "$mod" &&
    run go mod init localbuild/etcd &&
    run go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" &&
    run go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  echo "build-control-plane: etcd ${ETCD_VERSION} built at $(( $(date +%s) - start )) s"
}

build_kube() {
  local mod="$OUT/k8s-mod"
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kube-scheduler" ] && return 0
  rm -rf "$mod"; mkdir -p "$mod"
  cd "$mod"
  k8s_module_init "$K8S_VERSION" localbuild/k8s
  run go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@${K8S_VERSION}" "k8s.io/kubernetes/cmd/kube-controller-manager@${K8S_VERSION}" "k8s.io/kubernetes/cmd/kube-scheduler@${K8S_VERSION}"
  run go build -trimpath -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
  echo "build-control-plane: kube-apiserver, kube-controller-manager and kube-scheduler ${K8S_VERSION} built at $(( $(date +%s) - start )) s"
}

build_etcd
(build_kube)
printf 'kubernetes=%s\netcd=%s\ngo=%s\n' "$K8S_VERSION" "$ETCD_VERSION" "$(go env GOVERSION)" >"$BIN/VERSIONS"
have_all || die "binaries missing after build (log: $log)"
echo "build-control-plane: built $KEY in $(( $(date +%s) - start )) s; bin $(du -sh "$BIN" | cut -f1), go caches $(du -sh "$(go env GOMODCACHE)" "$(go env GOCACHE)" 2>/dev/null | cut -f1 | paste -sd+)"
echo "$BIN"
