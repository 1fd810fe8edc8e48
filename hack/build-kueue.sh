#!/usr/bin/env bash
# Build Kueue's manager from the Go module proxy and cache it outside the repository, keyed by version, with the
# CRDs and webhook configuration of the same release beside it (test/support/kueue.py installs them on the local
# plane). A second call with the same version costs ~0 s.
#
# Usage: hack/build-kueue.sh            # prints the cache directory (bin/kueue, crd/, webhook/) on its last line
# Env:   KUEUE_VERSION (v0.17.0), DASK_OPERATOR_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator)
set -euo pipefail

KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}
CACHE=${DASK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator}
OUT="$CACHE/kueue-${KUEUE_VERSION}"
BIN="$OUT/bin"
KUEUE="$BIN/kueue"

die() { echo "build-kueue: $*" >&2; exit 1; }

start=$(date +%s)
# One build at a time: parallel test runs would otherwise remove each other's work directories; a
# second run waits here and then finds the cache filled.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-kueue.lock"
flock 9
if [ -x "$KUEUE" ] && [ -f "$BIN/VERSIONS" ] && [ -f "$OUT/crd/kueue.x-k8s.io_workloads.yaml" ]; then
  echo "build-kueue: cached (kueue ${KUEUE_VERSION}) in $(( $(date +%s) - start )) s"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed; it is needed once to build Kueue (see README, Development)."
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$OUT/logs" "$BIN"
log="$OUT/logs/build.log"
: >"$log"
echo "build-kueue: building kueue ${KUEUE_VERSION} (log: $log); a cold build takes several minutes on 2 cores"

src=$(go mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" 2>>"$log" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
  || die "cannot download sigs.k8s.io/kueue@${KUEUE_VERSION} from the module proxy (log: $log)"
# Kueue's Makefile stamps its version the same way; `kueue --version`-like log lines and metrics report it.
ld="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"
# `go install module@version` builds with Kueue's own go.mod (it has no replace directives): the dependency set it
# releases with.
if ! GOBIN="$BIN" go install -trimpath -ldflags "$ld" "sigs.k8s.io/kueue/cmd/kueue@${KUEUE_VERSION}" >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "go install failed (full log: $log)"
fi
# The release's own manifests, copied out of the read-only module cache so that the plane does not depend on it.
rm -rf "$OUT/crd" "$OUT/webhook"
mkdir -p "$OUT/crd" "$OUT/webhook"
cp "$src"/config/components/crd/bases/*.yaml "$OUT/crd/"
cp "$src"/config/components/webhook/manifests.yaml "$OUT/webhook/manifests.yaml"
chmod -R u+w "$OUT/crd" "$OUT/webhook"
printf 'kueue=%s\ngo=%s\n' "$KUEUE_VERSION" "$(go env GOVERSION)" >"$BIN/VERSIONS"
"$KUEUE" --help >>"$log" 2>&1 || die "the built kueue does not run (log: $log)"
echo "build-kueue: built kueue ${KUEUE_VERSION} in $(( $(date +%s) - start )) s; $(du -sh "$KUEUE" | cut -f1)"
echo "$OUT"
