"""The cache narrowed by a label selector, against the real API server: only labelled Pods enter it, a pod
that loses the label leaves it as a delete (the watch says DELETED), and the executor's create of a child
the cache cannot see puts the label back, but only on a child the same owner still controls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support.runtime_plane import direct_client
from support.wait import wait_for

from dask_operator.api.v1.names import LABEL_CLUSTER_NAME
from dask_operator.controller.executor import Executor
from dask_operator.controller.indexes import CACHE_SELECTORS
from dask_operator.runtime.applier import Applier
from dask_operator.runtime.cache import Cache
from dask_operator.runtime.client import ApiError, Client
from dask_operator.runtime.kinds import CONFIGMAP, POD

Obj = dict[str, Any]


class Deletes:
    """Every delete the cache's pod informer reports, with the labels the deleted object carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bool]] = []
        self.lock = threading.Lock()

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> None:
        pass

    def on_update(self, old: Obj, new: Obj) -> None:
        pass

    def on_delete(self, obj: Obj, state_unknown: bool) -> None:
        with self.lock:
            self.seen.append(
                (obj["metadata"]["name"], dict(obj["metadata"].get("labels") or {}), state_unknown)
            )

    def of(self, name: str) -> list[tuple[str, dict[str, str], bool]]:
        with self.lock:
            return [d for d in self.seen if d[0] == name]


def pod(namespace: str, name: str, owner: Obj, labels: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"localkube/simulated": "true"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "inf"]}]},
    }


@pytest.fixture
def server(kube_plane: Any) -> Client:
    return direct_client(kube_plane)


@pytest.fixture
def cache(server: Client, namespace: str) -> Iterator[Cache]:
    cache = Cache(server, namespace, label_selectors=CACHE_SELECTORS, sync_timeout=30)
    yield cache
    cache.stop()


def owner(server: Client, namespace: str, name: str) -> Obj:
    return server.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
    )


def test_only_labelled_pods_are_cached_and_one_that_loses_the_label_leaves(
    server: Client, cache: Cache, namespace: str
) -> None:
    deletes = Deletes()
    cache.informer(POD).add_handler(deletes)
    cache.start()
    assert cache.wait_for_sync(30)
    parent = owner(server, namespace, "parent")
    ours_labels = {LABEL_CLUSTER_NAME: "c", "app": "x"}
    server.create(pod(namespace, "unrelated", parent, {"app": "x"}))
    server.create(pod(namespace, "ours", parent, ours_labels))
    wait_for(lambda: cache.get(POD, namespace, "ours") is not None, timeout=15, message="labelled pod cached")
    # created before "ours": a watch without the selector would have delivered it already
    assert cache.get(POD, namespace, "unrelated") is None
    assert [p["metadata"]["name"] for p in cache.list(POD, namespace)] == ["ours"]

    server.patch_merge(POD, namespace, "ours", {"metadata": {"labels": {LABEL_CLUSTER_NAME: None}}})
    wait_for(lambda: cache.get(POD, namespace, "ours") is None, timeout=15, message="unlabelled pod leaves")
    wait_for(lambda: deletes.of("ours"), timeout=5, message="a delete for it")
    ((_, labels, state_unknown),) = deletes.of("ours")
    assert not state_unknown  # a watch event, not a relist's tombstone
    # the API server sends the object as it was before the change (still labelled) in the DELETED event
    assert labels.get(LABEL_CLUSTER_NAME) == "c"
    assert server.get(POD, namespace, "ours") is not None  # the pod itself is still there

    # The executor creating that child again finds it taken and puts the label back: it returns to view.
    executor = Executor(server, Applier(server, cache), recorder=None, events_enabled=False)
    executor.create(pod(namespace, "ours", parent, ours_labels))
    wait_for(lambda: cache.get(POD, namespace, "ours") is not None, timeout=15, message="relabelled pod back")
    assert cache.get(POD, namespace, "ours")["metadata"]["labels"]["app"] == "x"  # type: ignore[index]


def test_a_pod_another_owner_controls_is_not_relabelled(server: Client, cache: Cache, namespace: str) -> None:
    cache.start()
    assert cache.wait_for_sync(30)
    mine, theirs = owner(server, namespace, "mine"), owner(server, namespace, "theirs")
    server.create(pod(namespace, "taken", theirs, {"app": "x"}))
    executor = Executor(server, Applier(server, cache), recorder=None, events_enabled=False)
    executor.create(pod(namespace, "taken", mine, {LABEL_CLUSTER_NAME: "c"}))  # AlreadyExists: not ours
    live = server.get(POD, namespace, "taken")
    assert live is not None and LABEL_CLUSTER_NAME not in live["metadata"]["labels"]
    with pytest.raises(ApiError):  # the patch's test operation is what refused it
        server.patch_json(
            POD,
            namespace,
            "taken",
            [{"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": mine["metadata"]["uid"]}],
        )
    assert server.get(CONFIGMAP, namespace, "theirs") is not None
