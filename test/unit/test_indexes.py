"""controller/indexes.py: the cache keeps a Pod's metadata and status, and of its spec only hostNetwork."""

from __future__ import annotations

import copy
from typing import Any

from support.runtime_offline import offline_cache

from dask_operator.controller import indexes
from dask_operator.runtime.kinds import POD

POD_OBJ: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "w", "namespace": "ns", "uid": "w-uid", "resourceVersion": "3",
                 "labels": {"dask.org/cluster-name": "c"}},
    "spec": {"hostNetwork": True, "containers": [{"name": "worker", "image": "dask", "args": ["dask", "worker"]}],
             "volumes": [{"name": "token", "projected": {"sources": []}}], "nodeName": "n1"},
    "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}], "hostIP": "10.1.0.1",
               "qosClass": "BestEffort", "conditions": [{"type": "Ready", "status": "True"}],
               "containerStatuses": [{"name": "worker", "restartCount": 0, "state": {"running": {}}}]},
}  # fmt: skip


def test_the_cache_keeps_what_planners_read_of_a_pod() -> None:
    cache = offline_cache()
    indexes.register(cache)
    cache.informer(POD).replace([copy.deepcopy(POD_OBJ)], "3")
    (stored,) = cache.informer(POD).store.list()
    assert stored["metadata"] == POD_OBJ["metadata"]
    assert stored["spec"] == {"hostNetwork": True}
    assert stored["status"] == {
        k: v for k, v in POD_OBJ["status"].items() if k not in indexes.POD_STATUS_UNREAD
    }
