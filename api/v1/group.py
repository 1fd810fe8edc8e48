"""The API group and version every kind in this package belongs to."""

from __future__ import annotations

GROUP = "kubernetes.dask.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
