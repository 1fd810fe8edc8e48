"""kubernetes.dask.org/v1: the four kinds served by the operator."""

from __future__ import annotations

GROUP = "kubernetes.dask.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
