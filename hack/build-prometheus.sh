#!/usr/bin/env bash
# Build a Prometheus server with Kubernetes service discovery from the Go module proxy, cached outside the
# repository and keyed by version, like hack/build-control-plane.sh. Debian's prometheus package (which
# hack/install-prometheus installs for promtool) is built without kubernetes_sd_configs, the discovery the
# README's scrape config uses, so the tests run this one. A second call with the same version costs ~0 s.
#
# Usage: hack/build-prometheus.sh      # prints the prometheus binary's path on its last line
# Env:   PROMETHEUS_MODULE_VERSION (v0.316.0, i.e. Prometheus 3.16.0),
#        DASK_OPERATOR_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator)
set -euo pipefail

MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
# Prometheus tags its Go module v0.<major*100+minor>.<patch> for release <major>.<minor>.<patch>.
minor_part=${MODULE_VERSION#v0.}; minor_part=${minor_part%%.*}
RELEASE="$(( minor_part / 100 )).$(( minor_part % 100 )).${MODULE_VERSION##*.}"
CACHE=${DASK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator}
OUT="$CACHE/prometheus-v${RELEASE}"
BIN="$OUT/bin"
PROMETHEUS="$BIN/prometheus"

die() { echo "build-prometheus: $*" >&2; exit 1; }

start=$(date +%s)
# One build at a time: parallel test runs would otherwise remove each other's work directories; a
# second run waits here and then finds the cache filled.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-prometheus.lock"
flock 9
if [ -x "$PROMETHEUS" ] && [ -f "$BIN/VERSIONS" ]; then
  echo "build-prometheus: cached (prometheus ${RELEASE}) in $(( $(date +%s) - start )) s"
  echo "$PROMETHEUS"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed; it is needed once to build Prometheus (see README, Development)."
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$OUT/logs" "$BIN"
log="$OUT/logs/build.log"
: >"$log"
echo "build-prometheus: building prometheus ${RELEASE} (log: $log); a cold build takes several minutes on 2 cores"

# Only the Kubernetes discovery: the other cloud SDKs would triple the build for nothing used here.
# Without the builtinassets tag the web UI is not embedded; the HTTP API, which the tests use, is complete.
tags="remove_all_sd,enable_kubernetes_sd"
ld="-s -w -X github.com/prometheus/common/version.Version=${RELEASE} -X github.com/prometheus/common/version.Branch=module-proxy"
ld="$ld -X github.com/prometheus/common/version.Revision=${MODULE_VERSION}"
if ! GOBIN="$BIN" go install -trimpath -tags "$tags" -ldflags "$ld" \
    "github.com/prometheus/prometheus/cmd/prometheus@${MODULE_VERSION}" >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "go install failed (full log: $log)"
fi
printf 'prometheus=%s\nmodule=%s\ntags=%s\ngo=%s\n' "$RELEASE" "$MODULE_VERSION" "$tags" "$(go env GOVERSION)" >"$BIN/VERSIONS"
"$PROMETHEUS" --version >>"$log" 2>&1 || die "the built prometheus does not run (log: $log)"
echo "build-prometheus: built prometheus ${RELEASE} in $(( $(date +%s) - start )) s; $(du -sh "$PROMETHEUS" | cut -f1)"
echo "$PROMETHEUS"
