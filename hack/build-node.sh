#!/usr/bin/env bash
# Build a real node's parts from upstream sources and cache them outside the repository, keyed by version:
# kubelet and kube-proxy (the control plane's Kubernetes release), containerd 2.x with its runc shim and ctr, runc,
# the CNI plugins bridge/host-local/loopback/portmap, crictl, and the pause image from Kubernetes' own pause.c.
# A second call with the same versions costs ~0 s.
#
# Usage: hack/build-node.sh            # prints the bin directory on its last line; ../cni and ../images beside it
# Env:   K8S_VERSION (v1.37.2), CONTAINERD_VERSION (v2.4.2), RUNC_VERSION (v1.5.3), CNI_VERSION (v1.10.0),
#        CRICTL_VERSION (v1.37.0), DASK_OPERATOR_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator)
# Needs: Go, gcc with a static libc (libc6-dev), libseccomp-dev and pkg-config (runc's seccomp support).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.5.3}
CNI_VERSION=${CNI_VERSION:-v1.10.0}
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
CACHE=${DASK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator}
KEY="k8s-${K8S_VERSION}_containerd-${CONTAINERD_VERSION}_runc-${RUNC_VERSION}_cni-${CNI_VERSION}_crictl-${CRICTL_VERSION}"
OUT="$CACHE/node/$KEY"
BIN="$OUT/bin"
CNI="$OUT/cni"
IMAGES="$OUT/images"
WANT=("$BIN/kubelet" "$BIN/kube-proxy" "$BIN/containerd" "$BIN/containerd-shim-runc-v2" "$BIN/ctr" "$BIN/runc"
  "$BIN/crictl" "$CNI/bridge" "$CNI/host-local" "$CNI/loopback" "$CNI/portmap" "$IMAGES/pause.tar")
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "build-node: $*" >&2; exit 1; }

have_all() {
  [ -f "$BIN/VERSIONS" ] || return 1
  for f in "${WANT[@]}"; do [ -s "$f" ] || return 1; done
}

start=$(date +%s)
# One build at a time: a second run waits here and then finds the cache filled.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-node.lock"
flock 9
if have_all; then
  echo "build-node: cached ($KEY) in $(( $(date +%s) - start )) s"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed; it is needed once to build the node (see README, Real nodes)."
command -v gcc >/dev/null 2>&1 || die "gcc is needed for runc and the pause binary: apt-get install gcc libc6-dev"
pkg-config --exists libseccomp 2>/dev/null || die "runc needs libseccomp's headers: apt-get install libseccomp-dev pkg-config"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$OUT/logs" "$BIN" "$CNI" "$IMAGES"
log="$OUT/logs/build.log"
: >"$log"
echo "build-node: building $KEY (log: $log); a cold build takes tens of minutes on 2 cores"

run() {  # run a step, appending to the log; on failure print the tail and the log path
  if ! "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "step failed: $* (full log: $log)"
  fi
}
. "$HACK/lib/k8s-module.sh"

stamp() { echo "build-node: $1 built at $(( $(date +%s) - start )) s"; }

# fresh_module NAME: an empty Go module under $OUT/NAME-mod, entered.
fresh_module() { rm -rf "$OUT/$1-mod"; mkdir -p "$OUT/$1-mod"; cd "$OUT/$1-mod"; run go mod init "localbuild/$1"; }

build_kube() {
  [ -s "$BIN/kubelet" ] && [ -s "$BIN/kube-proxy" ] && return 0
  rm -rf "$OUT/k8s-mod"; mkdir -p "$OUT/k8s-mod"; cd "$OUT/k8s-mod"
  k8s_module_init "$K8S_VERSION" localbuild/k8s-node >>"$log"
  run go get -tool "k8s.io/kubernetes/cmd/kubelet@${K8S_VERSION}" "k8s.io/kubernetes/cmd/kube-proxy@${K8S_VERSION}"
  run go build -trimpath -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$BIN/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  stamp "kubelet and kube-proxy ${K8S_VERSION}"
}

build_containerd() {
  [ -s "$BIN/containerd" ] && [ -s "$BIN/containerd-shim-runc-v2" ] && [ -s "$BIN/ctr" ] && return 0
  local m=github.com/containerd/containerd/v2 v=github.com/containerd/containerd/v2/version
  fresh_module containerd
  run go get -tool "$m/cmd/containerd@${CONTAINERD_VERSION}" "$m/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" "$m/cmd/ctr@${CONTAINERD_VERSION}"
  run go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $v.Version=${CONTAINERD_VERSION} -X $v.Revision=module-proxy -X $v.Package=$m" \
    -o "$BIN/" "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
  stamp "containerd ${CONTAINERD_VERSION}"
}

build_runc() {
  [ -s "$BIN/runc" ] && return 0
  fresh_module runc
  run go get -tool "github.com/opencontainers/runc@${RUNC_VERSION}"
  # cgo: runc's nsenter is C, and seccomp (RuntimeDefault profiles) links Debian's libseccomp.
  CGO_ENABLED=1 run go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" \
    -o "$BIN/runc" github.com/opencontainers/runc
  stamp "runc ${RUNC_VERSION}"
}

build_cni() {
  [ -s "$CNI/bridge" ] && [ -s "$CNI/host-local" ] && [ -s "$CNI/loopback" ] && [ -s "$CNI/portmap" ] && return 0
  local m=github.com/containernetworking/plugins/plugins
  fresh_module cni
  run go get -tool "$m/main/bridge@${CNI_VERSION}" "$m/ipam/host-local@${CNI_VERSION}" "$m/main/loopback@${CNI_VERSION}" "$m/meta/portmap@${CNI_VERSION}"
  run go build -trimpath -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${CNI_VERSION}" \
    -o "$CNI/" "$m/main/bridge" "$m/ipam/host-local" "$m/main/loopback" "$m/meta/portmap"
  stamp "CNI plugins ${CNI_VERSION}"
}

build_crictl() {
  [ -s "$BIN/crictl" ] && return 0
  fresh_module crictl
  run go get -tool "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}"
  run go build -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}" \
    -o "$BIN/crictl" sigs.k8s.io/cri-tools/cmd/crictl
  stamp "crictl ${CRICTL_VERSION}"
}

# The sandbox image: Kubernetes' own pause.c at this release, linked statically, as a one-layer OCI archive
# tagged with the name and tag Kubernetes' build/pause/Makefile gives it.
build_pause() {
  [ -s "$IMAGES/pause.tar" ] && return 0
  local src tag
  src=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/build/pause
  [ -f "$src/linux/pause.c" ] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@${K8S_VERSION}"
  tag=$(sed -n 's/^TAG[ ?:]*=[ ]*//p' "$src/Makefile" | head -n 1)
  [ -n "$tag" ] || die "no TAG in $src/Makefile"
  mkdir -p "$OUT/pause"
  run gcc -Os -Wall -Werror -static -DVERSION="$tag" -o "$OUT/pause/pause" "$src/linux/pause.c"
  run strip "$OUT/pause/pause"
  run python3 "$HACK/ociarchive.py" --name "registry.k8s.io/pause:${tag}" --entrypoint /pause \
    --file "$OUT/pause/pause:/pause" --out "$IMAGES/pause.tar"
  echo "registry.k8s.io/pause:${tag}" >"$IMAGES/pause.name"
  stamp "pause image ${tag}"
}

build_pause
(build_runc)
(build_cni)
(build_crictl)
(build_containerd)
(build_kube)
printf 'kubernetes=%s\ncontainerd=%s\nrunc=%s\ncni=%s\ncrictl=%s\npause=%s\ngo=%s\n' "$K8S_VERSION" "$CONTAINERD_VERSION" \
  "$RUNC_VERSION" "$CNI_VERSION" "$CRICTL_VERSION" "$(cat "$IMAGES/pause.name")" "$(go env GOVERSION)" >"$BIN/VERSIONS"
have_all || die "parts missing after build (log: $log)"
echo "build-node: built $KEY in $(( $(date +%s) - start )) s; $(du -sh "$OUT/bin" "$CNI" | cut -f1 | paste -sd+)"
echo "$BIN"
