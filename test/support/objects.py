"""Test builders for the four kinds, in Cluster API's builder style, on top of `dask_operator.api.v1`'s spec
builders: `DaskClusterBuilder("ns", "c").with_workers(2).build()` is the DaskCluster the API server would
store for that spec (defaults applied, a uid, generation 1).

Unit, e2e and chaos tests build the objects they need here instead of writing dicts by hand: `build()` as the
cache shows them, `manifest()` as a user applies them; each returns a fresh copy, so a test may change it.
"""

from __future__ import annotations

import copy
from typing import Any

from dask_operator.api.v1 import (
    API_VERSION,
    DASK_AUTOSCALER,
    DASK_CLUSTER,
    DASK_JOB,
    DASK_WORKER_GROUP,
    make_cluster_spec,
    make_worker_spec,
)
from dask_operator.api.v1.defaults import with_defaults
from dask_operator.api.v1.names import default_worker_group_name

Obj = dict[str, Any]


class _Builder:
    kind = ""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.labels: dict[str, str] = {}
        self.annotations: dict[str, str] = {}
        self.owner: Obj | None = None
        self.uid: str | None = None

    def with_labels(self, **labels: str) -> Any:
        self.labels.update(labels)
        return self

    def with_annotations(self, annotations: dict[str, str]) -> Any:
        self.annotations.update(annotations)
        return self

    def with_uid(self, uid: str) -> Any:
        self.uid = uid
        return self

    def owned_by(self, owner: Obj) -> Any:
        """Controlled by `owner` (ownerReferences, controller=true)."""
        self.owner = owner
        return self

    def spec(self) -> Obj:
        raise NotImplementedError

    def manifest(self) -> Obj:
        """What a user applies: name (and labels, annotations) and the spec as written, no server fields."""
        meta: Obj = {"name": self.name}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": meta,
            "spec": copy.deepcopy(self.spec()),
        }

    def build(self) -> Obj:
        meta: Obj = {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid or f"{self.name}-uid",
            "generation": 1,
            "resourceVersion": "1",
        }
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.owner is not None:
            owner = self.owner["metadata"]
            meta["ownerReferences"] = [
                {"apiVersion": self.owner["apiVersion"], "kind": self.owner["kind"], "name": owner["name"],
                 "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}
            ]  # fmt: skip
        obj = {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": meta,
            "spec": copy.deepcopy(self.spec()),
        }
        return with_defaults(obj)


class DaskClusterBuilder(_Builder):
    kind = DASK_CLUSTER.kind

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(namespace, name)
        self.workers = 1
        self.idle_timeout = 0

    def with_workers(self, replicas: int) -> DaskClusterBuilder:
        self.workers = replicas
        return self

    def with_idle_timeout(self, seconds: int) -> DaskClusterBuilder:
        self.idle_timeout = seconds
        return self

    def spec(self) -> Obj:
        spec: Obj = make_cluster_spec(self.name, n_workers=self.workers)["spec"]
        spec["idleTimeout"] = self.idle_timeout
        return spec


class DaskWorkerGroupBuilder(_Builder):
    kind = DASK_WORKER_GROUP.kind

    def __init__(self, namespace: str, name: str, cluster: str) -> None:
        super().__init__(namespace, name)
        self.cluster = cluster
        self.replicas = 1

    @classmethod
    def default_of(cls, cluster: Obj) -> DaskWorkerGroupBuilder:
        """The default group a cluster makes, owned by it."""
        meta = cluster["metadata"]
        group = cls(meta["namespace"], default_worker_group_name(meta["name"]), meta["name"])
        return group.owned_by(cluster).with_replicas(int(cluster["spec"]["worker"].get("replicas", 1)))  # type: ignore[no-any-return]

    def with_replicas(self, replicas: int) -> DaskWorkerGroupBuilder:
        self.replicas = replicas
        return self

    def spec(self) -> Obj:
        worker: Obj = make_worker_spec(n_workers=self.replicas)
        return {"cluster": self.cluster, "worker": worker}


class DaskAutoscalerBuilder(_Builder):
    kind = DASK_AUTOSCALER.kind

    def __init__(self, namespace: str, name: str, cluster: str) -> None:
        super().__init__(namespace, name)
        self.cluster, self.minimum, self.maximum = cluster, 1, 10
        self.options: Obj = {}

    def with_bounds(self, minimum: int, maximum: int) -> DaskAutoscalerBuilder:
        self.minimum, self.maximum = minimum, maximum
        return self

    def with_group(self, group: str) -> DaskAutoscalerBuilder:
        self.options["workerGroup"] = group
        return self

    def with_intervals(self, cooldown: int, scale_down_delay: int) -> DaskAutoscalerBuilder:
        self.options.update(cooldownSeconds=cooldown, scaleDownDelaySeconds=scale_down_delay)
        return self

    def spec(self) -> Obj:
        return {"cluster": self.cluster, "minimum": self.minimum, "maximum": self.maximum, **self.options}


class DaskJobBuilder(_Builder):
    kind = DASK_JOB.kind

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(namespace, name)
        self.command = ["python", "-c", "print('hello')"]

    def with_command(self, *command: str) -> DaskJobBuilder:
        self.command = list(command)
        return self

    def spec(self) -> Obj:
        cluster = make_cluster_spec(self.name, n_workers=1)["spec"]
        runner = {"spec": {"containers": [{"name": "job", "image": "ghcr.io/dask/dask:latest",
                                           "args": self.command}]}}  # fmt: skip
        return {"job": runner, "cluster": {"spec": cluster}}
