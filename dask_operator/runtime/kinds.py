"""Kinds the runtime can address without discovery: group, version, kind, plural and scope.

Invariant: a Kind alone determines every REST path for its objects, and the registry maps each
(apiVersion, kind) pair to exactly one Kind, so objects (dicts) can be routed by their own header.
Held by test/e2e/test_kubecluster.py, test/integration/test_runtime_client.py, test/integration/test_runtime_leader.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

_registry: dict[tuple[str, str], Kind] = {}
_registry_lock = threading.Lock()


@dataclass(frozen=True)
class Kind:
    """One REST resource type; constructing a Kind registers it for lookup by apiVersion/kind."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    def __post_init__(self) -> None:
        with _registry_lock:
            _registry.setdefault((self.api_version, self.kind), self)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def _prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        """The list/watch/create path; namespace None means all namespaces (or a cluster-scoped kind)."""
        if self.namespaced and namespace:
            return f"{self._prefix}/namespaces/{namespace}/{self.plural}"
        return f"{self._prefix}/{self.plural}"

    def object_path(self, namespace: str | None, name: str, subresource: str | None = None) -> str:
        if self.namespaced and not namespace:
            raise ValueError(f"{self.kind} is namespaced: a namespace is required for {name!r}")
        path = f"{self.collection_path(namespace if self.namespaced else None)}/{name}"
        return f"{path}/{subresource}" if subresource else path

    def __str__(self) -> str:
        return f"{self.kind}.{self.version}.{self.group}" if self.group else f"{self.kind}.{self.version}"


def lookup(api_version: str, kind: str) -> Kind:
    """The registered Kind for an object's header; KeyError names what is missing."""
    with _registry_lock:
        found = _registry.get((api_version, kind))
    if found is None:
        raise KeyError(f"unknown kind {kind!r} in {api_version!r}: construct its Kind(...) first")
    return found


def kind_of(obj: dict[str, Any]) -> Kind:
    return lookup(obj["apiVersion"], obj["kind"])


POD = Kind("", "v1", "Pod", "pods")
SERVICE = Kind("", "v1", "Service", "services")
EVENT = Kind("", "v1", "Event", "events")
CONFIGMAP = Kind("", "v1", "ConfigMap", "configmaps")
SECRET = Kind("", "v1", "Secret", "secrets")
NAMESPACE = Kind("", "v1", "Namespace", "namespaces", namespaced=False)
SERVICEACCOUNT = Kind("", "v1", "ServiceAccount", "serviceaccounts")
NODE = Kind("", "v1", "Node", "nodes", namespaced=False)
PERSISTENTVOLUMECLAIM = Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
ENDPOINTS = Kind("", "v1", "Endpoints", "endpoints")
LEASE = Kind("coordination.k8s.io", "v1", "Lease", "leases")
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments")
PODDISRUPTIONBUDGET = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
JOB = Kind("batch", "v1", "Job", "jobs")
ROLE = Kind("rbac.authorization.k8s.io", "v1", "Role", "roles")
ROLEBINDING = Kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings")
INGRESS = Kind("networking.k8s.io", "v1", "Ingress", "ingresses")
POD_DISRUPTION_BUDGET = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
CUSTOM_RESOURCE_DEFINITION = Kind(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
)
