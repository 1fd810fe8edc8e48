"""dask-operator: a level-triggered Kubernetes operator for Dask.

The public Python API lives here; `dask_operator.api` holds the kubernetes.dask.org/v1 contract
and `dask_operator.controller` the operator itself.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
