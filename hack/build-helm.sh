#!/usr/bin/env bash
# Build helm from the Go module proxy and cache it outside the repository, keyed by version, like
# hack/build-control-plane.sh. A second call with the same version costs ~0 s.
#
# Usage: hack/build-helm.sh            # prints the helm binary's path on its last line
# Env:   HELM_VERSION (v3.22.0), DASK_OPERATOR_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator)
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${DASK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator}
OUT="$CACHE/helm-${HELM_VERSION}"
BIN="$OUT/bin"
HELM="$BIN/helm"

die() { echo "build-helm: $*" >&2; exit 1; }

start=$(date +%s)
# One build at a time: parallel test runs would otherwise remove each other's work directories; a
# second run waits here and then finds the cache filled.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-helm.lock"
flock 9
if [ -x "$HELM" ] && [ -f "$BIN/VERSIONS" ]; then
  echo "build-helm: cached (helm ${HELM_VERSION}) in $(( $(date +%s) - start )) s"
  echo "$HELM"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed; it is needed once to build helm (see README, Development)."
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$OUT/logs" "$BIN"
log="$OUT/logs/build.log"
: >"$log"
echo "build-helm: building helm ${HELM_VERSION} (log: $log); a cold build takes several minutes on 2 cores"

gomod=$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" 2>>"$log" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') \
  || die "cannot download helm.sh/helm/v3@${HELM_VERSION} from the module proxy (log: $log)"
# helm's Makefile stamps the Kubernetes version its client libraries speak (client-go v0.X.Y is
# Kubernetes 1.X); `helm lint` and `.Capabilities.KubeVersion` in `helm template` report it.
k8s_minor=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod" | cut -d. -f2)
[ -n "$k8s_minor" ] || die "no k8s.io/client-go requirement in $gomod"
ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ld="$ld -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=${k8s_minor}"
done
# `go install module@version` builds with helm's own go.mod, exactly the dependency set it releases with.
if ! GOBIN="$BIN" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "go install failed (full log: $log)"
fi
printf 'helm=%s\nkubernetes-client=1.%s\ngo=%s\n' "$HELM_VERSION" "$k8s_minor" "$(go env GOVERSION)" >"$BIN/VERSIONS"
"$HELM" version --short >>"$log" 2>&1 || die "the built helm does not run (log: $log)"
echo "build-helm: built helm ${HELM_VERSION} in $(( $(date +%s) - start )) s; $(du -sh "$HELM" | cut -f1)"
echo "$HELM"
