#!/bin/sh
# The entrypoint contract of ghcr.io/dask/dask: extra packages from the environment, then the command.
set -e
if [ -n "${EXTRA_APT_PACKAGES:-}" ]; then
  echo "prepare.sh: apt-get install $EXTRA_APT_PACKAGES"
  apt-get update -y && apt-get install -y --no-install-recommends $EXTRA_APT_PACKAGES
fi
if [ -n "${EXTRA_CONDA_PACKAGES:-}" ]; then
  echo "prepare.sh: no conda in this image; EXTRA_CONDA_PACKAGES ignored: $EXTRA_CONDA_PACKAGES" >&2
fi
if [ -n "${EXTRA_PIP_PACKAGES:-}" ]; then
  echo "prepare.sh: pip install $EXTRA_PIP_PACKAGES"
  pip install --no-cache-dir $EXTRA_PIP_PACKAGES
fi
exec "$@"
