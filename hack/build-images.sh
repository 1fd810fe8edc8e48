#!/usr/bin/env bash
# OCI images for real nodes, with no registry and no daemon (buildah from Debian, overlay storage, chroot isolation):
#   docker.io/library/python:3.11-slim          a stand-in made from Debian packages (hack/images/python-base)
#   ghcr.io/dask-operator/dask-operator:<version> and :latest   the project's own Dockerfile, unchanged
#   ghcr.io/dask/dask:latest                    ghcr.io/dask/dask's entrypoint contract (hack/images/dask)
# Each is written as a docker-archive tarball that `ctr images import` takes; hack/localkube imports them into
# every real node. buildah caches each Dockerfile step, so after a code change only the wheel and its install
# are redone. The base root filesystem is cached by Debian suite.
#
# Usage: hack/build-images.sh            # prints the directory of the tarballs on its last line
# Env:   DASK_OPERATOR_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator), DEBIAN_MIRROR, DEBIAN_SUITE (bookworm)
# Needs: buildah and debootstrap (apt-get install buildah debootstrap), the project's venv (hack/python-env).
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HACK/.." && pwd)
CACHE=${DASK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dask-operator}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when hack/images/python-base changes what the root filesystem holds.
BASE_KEY="debian-${DEBIAN_SUITE}_python3_r1"
OUT="$CACHE/images"
TARBALLS="$OUT/tarballs"
BASE_IMAGE=docker.io/library/python:3.11-slim
DASK_IMAGE=ghcr.io/dask/dask:latest
OPERATOR_NAME=ghcr.io/dask-operator/dask-operator

die() { echo "build-images: $*" >&2; exit 1; }
stamp() { echo "build-images: $1 at $(( $(date +%s) - start )) s"; }

start=$(date +%s)
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-images.lock"
flock 9
command -v buildah >/dev/null 2>&1 || die "buildah is needed: apt-get install buildah"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is needed: apt-get install debootstrap"
mkdir -p "$OUT/logs" "$TARBALLS"
log="$OUT/logs/build.log"
: >"$log"
run() {
  if ! "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "step failed: $* (full log: $log)"
  fi
}

# buildah's own store lives in the cache; nothing under /var/lib/containers is touched. overlay, not vfs: a
# cached step then costs a mount instead of a copy of the whole root filesystem (a no-change rebuild ~3x faster).
bh() {
  buildah --root "$OUT/buildah/overlay" --runroot "$OUT/buildah/run-overlay" --storage-driver overlay "$@"
}
bud() {
  bh bud --isolation chroot --layers --pull-never --network host "$@"
}

# Debian bookworm's python3 is 3.11, the minor version the Dockerfile's base names.
build_base() {
  local rootfs="$OUT/base/$BASE_KEY/rootfs.tar" dir
  if [ ! -s "$rootfs" ]; then
    dir="$OUT/base/$BASE_KEY/rootfs"
    rm -rf "$dir"; mkdir -p "$dir"
    run debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    run tar --numeric-owner -C "$dir" -cf "$rootfs.part" .
    mv "$rootfs.part" "$rootfs"
    rm -rf "$dir"
    stamp "Debian ${DEBIAN_SUITE} root filesystem made"
  fi
  local ctx; ctx=$(mktemp -d)
  cp "$HACK/images/python-base/Dockerfile" "$ctx/"
  mkdir "$ctx/trust"
  echo "certificate authorities of the build host, from /usr/local/share/ca-certificates" >"$ctx/trust/README"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/trust/" 2>/dev/null || true
  ln "$rootfs" "$ctx/rootfs.tar" 2>/dev/null || cp "$rootfs" "$ctx/rootfs.tar"
  run bud -t "$BASE_IMAGE" "$ctx"
  rm -rf "$ctx"
}

# archive IMAGE FILE [NAME...]: a docker-archive tarball of IMAGE, rewritten only when the image changed. FILE.names
# lists IMAGE, then the further names of the same image, for the importer to tag (not a second tarball).
archive() {
  local image=$1 file=$2 id
  shift 2
  id=$(bh inspect --format '{{.FromImageID}}' "$image")
  printf '%s\n' "$image" "$@" >"$file.names.part"
  mv "$file.names.part" "$file.names"
  rm -f "$file.tags"
  if [ -s "$file" ] && [ "$(cat "$file.id" 2>/dev/null)" = "$id" ]; then return 0; fi
  rm -f "$file.part"
  run bh push "$image" "docker-archive:$file.part:$image"
  mv "$file.part" "$file"
  echo "$id" >"$file.id"
}

build_operator() {
  local version
  version=$(sed -n 's/^version *= *//p' "$REPO/setup.cfg")
  run bud -f "$REPO/Dockerfile" -t "$OPERATOR_NAME:$version" -t "$OPERATOR_NAME:latest" "$REPO"
  archive "$OPERATOR_NAME:$version" "$TARBALLS/dask-operator.tar" "$OPERATOR_NAME:latest"
  rm -f "$TARBALLS"/dask-operator-latest.tar*
  stamp "$OPERATOR_NAME:$version and :latest built from the Dockerfile"
}

build_dask() {
  local pins
  # The project's environment decides the versions; the image speaks the same protocol as its clients.
  pins=$(. "$HACK/python-env" && python - <<'PY'
from importlib.metadata import PackageNotFoundError, version
names = ["dask", "distributed", "cloudpickle", "msgpack", "numpy", "pandas", "lz4", "tornado", "toolz"]
pins = []
for n in names:
    try:
        pins.append(f"{n}=={version(n)}")
    except PackageNotFoundError:
        pass
print(" ".join(pins))
PY
  )
  run bud --build-arg "PIP_PACKAGES=$pins" -t "$DASK_IMAGE" "$HACK/images/dask"
  archive "$DASK_IMAGE" "$TARBALLS/dask.tar"
  stamp "$DASK_IMAGE built ($pins)"
}

build_base
build_dask
build_operator
echo "build-images: $(du -sh "$TARBALLS" | cut -f1) of tarballs in $(( $(date +%s) - start )) s (log: $log)"
echo "$TARBALLS"
