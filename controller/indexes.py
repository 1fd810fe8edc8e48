"""What the cache holds and the indexes the reconcilers look objects up by, beyond the runtime's namespace
and owner ones: pods by `dask.org/cluster-name`, groups and autoscalers by the cluster they name.

Invariant: Pods and Services are cached only if they carry `dask.org/cluster-name` (every child the operator
makes does), so unrelated workloads cost the operator nothing; a cached Pod keeps its metadata and status
but of its spec only what a planner reads (`hostNetwork`), so every plan is the same on it as on the full
pod; `register` runs before the cache starts; every lookup here returns what a full scan of the namespace
with the same filter would return. Held by test/unit/test_runtime_store.py,
test/unit/test_planner_properties.py, test/integration/test_runtime_cache_selector.py and test/e2e/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask_operator.api.v1.names import LABEL_CLUSTER_NAME
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.kinds import DASK_AUTOSCALER_KIND, DASK_WORKER_GROUP_KIND
from dask_operator.runtime.kinds import POD, SERVICE, Kind

# The label selector each child kind is watched with (an existence selector: any cluster's children).
CACHE_SELECTORS: dict[Kind, str] = {POD: LABEL_CLUSTER_NAME, SERVICE: LABEL_CLUSTER_NAME}

# Of a Pod's spec (containers, volumes, a worker's preStop script: most of its size), the fields a planner reads.
POD_SPEC_READ = ("hostNetwork",)
# Status fields no planner reads (the rest, phase, conditions, container states, podIP, is kept).
POD_STATUS_UNREAD = ("hostIP", "hostIPs", "podIPs", "qosClass")

# DaskWorkerGroups and DaskAutoscalers by the cluster they name in spec.cluster (adopted or not yet).
GROUP_CLUSTER_INDEX = "spec.cluster"
AUTOSCALER_CLUSTER_INDEX = "spec.cluster"


def _spec_cluster(obj: Obj) -> Iterable[str]:
    cluster = (obj.get("spec") or {}).get("cluster")
    return (cluster,) if cluster else ()


def pod_for_cache(pod: Obj) -> Obj:
    """The pod as the cache keeps it: spec reduced to POD_SPEC_READ, status without POD_STATUS_UNREAD."""
    spec = pod.get("spec")
    if isinstance(spec, dict):
        pod["spec"] = {key: spec[key] for key in POD_SPEC_READ if key in spec}
    status = pod.get("status")
    if isinstance(status, dict) and any(key in status for key in POD_STATUS_UNREAD):
        pod["status"] = {key: value for key, value in status.items() if key not in POD_STATUS_UNREAD}
    return pod


def register(cache: Any) -> None:
    cache.add_transform(POD, pod_for_cache)
    cache.add_label_index(POD, LABEL_CLUSTER_NAME)  # a cluster's worker pods, whichever group made them
    cache.add_index(DASK_WORKER_GROUP_KIND, GROUP_CLUSTER_INDEX, _spec_cluster)
    cache.add_index(DASK_AUTOSCALER_KIND, AUTOSCALER_CLUSTER_INDEX, _spec_cluster)


def _naming(cache: Any, kind: Any, index: str, namespace: str, cluster: str) -> list[Obj]:
    try:
        return list(cache.by_index(kind, index, cluster, namespace))
    except KeyError:  # index not registered (e.g. a reconciler used on its own)
        return [o for o in cache.list(kind, namespace) if (o.get("spec") or {}).get("cluster") == cluster]


def groups_of_cluster(cache: Any, namespace: str, cluster: str) -> list[Obj]:
    return _naming(cache, DASK_WORKER_GROUP_KIND, GROUP_CLUSTER_INDEX, namespace, cluster)


def autoscalers_of_cluster(cache: Any, namespace: str, cluster: str) -> list[Obj]:
    return _naming(cache, DASK_AUTOSCALER_KIND, AUTOSCALER_CLUSTER_INDEX, namespace, cluster)
