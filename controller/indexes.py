"""Cache indexes the reconcilers look objects up by, beyond the runtime's namespace/owner/label ones.

Invariant: `register` runs before the cache starts; every lookup here returns what a full scan of the
namespace with the same filter would return.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask_operator.controller.kinds import DASK_WORKER_GROUP_KIND

Obj = dict[str, Any]

# DaskWorkerGroups by the cluster they name in spec.cluster (adopted or not yet).
GROUP_CLUSTER_INDEX = "spec.cluster"


def _group_cluster(group: Obj) -> Iterable[str]:
    cluster = (group.get("spec") or {}).get("cluster")
    return (cluster,) if cluster else ()


def register(cache: Any) -> None:
    cache.add_index(DASK_WORKER_GROUP_KIND, GROUP_CLUSTER_INDEX, _group_cluster)


def groups_of_cluster(cache: Any, namespace: str, cluster: str) -> list[Obj]:
    try:
        return list(cache.by_index(DASK_WORKER_GROUP_KIND, GROUP_CLUSTER_INDEX, cluster, namespace))
    except KeyError:  # index not registered (e.g. a reconciler used on its own)
        return [
            g
            for g in cache.list(DASK_WORKER_GROUP_KIND, namespace)
            if (g.get("spec") or {}).get("cluster") == cluster
        ]
