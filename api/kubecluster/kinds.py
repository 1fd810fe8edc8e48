"""The REST kinds the Python client addresses, built from the api package's names (not the operator's module).

Invariant: the same group/version/plural as the CRDs generated from `dask_operator.api.v1`, so the client and
the operator address identical resources; held by test/unit/test_kubecluster.py.
"""

from __future__ import annotations

from dask_operator.api.v1.group import GROUP, VERSION
from dask_operator.api.v1.names import DASK_AUTOSCALER, DASK_CLUSTER, DASK_WORKER_GROUP
from dask_operator.runtime.kinds import NODE, POD, SERVICE, Kind

DASK_CLUSTER_KIND = Kind(GROUP, VERSION, DASK_CLUSTER.kind, DASK_CLUSTER.plural)
DASK_WORKER_GROUP_KIND = Kind(GROUP, VERSION, DASK_WORKER_GROUP.kind, DASK_WORKER_GROUP.plural)
DASK_AUTOSCALER_KIND = Kind(GROUP, VERSION, DASK_AUTOSCALER.kind, DASK_AUTOSCALER.plural)

__all__ = [
    "DASK_AUTOSCALER_KIND",
    "DASK_CLUSTER_KIND",
    "DASK_WORKER_GROUP_KIND",
    "NODE",
    "POD",
    "SERVICE",
    "Kind",
]
