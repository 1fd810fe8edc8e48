"""The operator's RBAC (manifests/rbac/, and the Helm chart, which renders the same rules) grants nothing the
operator's code does not use: every resource in a rule is one the operator's package names as a Kind it reads
or writes, and every subresource is one it calls. A rule added "just in case" fails here.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml

from dask_operator.controller import kinds as operator_kinds
from dask_operator.runtime import kinds as runtime_kinds
from dask_operator.runtime.kinds import Kind

REPO = Path(__file__).resolve().parents[2]
ROLES = [
    REPO / "manifests/rbac/cluster/role.yaml",
    REPO / "manifests/rbac/namespaced/role.yaml",
    REPO / "manifests/rbac/leader-election.yaml",
]
# The operator's code: controller/ and the Dask-agnostic runtime it runs on.
SOURCES = {
    path: path.read_text()
    for folder in (REPO / "controller", REPO / "dask_operator" / "runtime")
    for path in folder.rglob("*.py")
}

# Subresources, and where the operator's code uses each.
SUBRESOURCE_USE = {
    # status writes go to the status subresource
    "status": re.compile(r"/status\b"),
    # OwnerReferencesPermissionEnforcement asks for update on <owner>/finalizers to set blockOwnerDeletion
    "finalizers": re.compile(r"blockOwnerDeletion"),
}


@functools.cache
def _used_plurals() -> frozenset[str]:
    """Plurals of the Kinds some operator module (other than the one defining it) refers to by name."""
    used = set()
    for module in (operator_kinds, runtime_kinds):
        defined_in = Path(str(module.__file__)).resolve()
        for name, value in vars(module).items():
            if not isinstance(value, Kind):
                continue
            pattern = re.compile(rf"\b{re.escape(name)}\b")
            if any(pattern.search(text) for path, text in SOURCES.items() if path.resolve() != defined_in):
                used.add(value.plural)
    # The Dask kinds are built from their names (controller/kinds.py: dask_kind(...)).
    used |= {"daskclusters", "daskworkergroups", "daskjobs", "daskautoscalers"}
    return frozenset(used)


def _resources() -> list[tuple[str, str]]:
    found = []
    for path in ROLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Role", "ClusterRole"):
                for rule in doc.get("rules") or []:
                    found += [(path.name, resource) for resource in rule.get("resources") or []]
    return found


@pytest.mark.parametrize(("role", "resource"), _resources())
def test_every_granted_resource_is_used_by_the_operator(role: str, resource: str) -> None:
    plural, _, sub = resource.partition("/")
    assert plural in _used_plurals(), f"{role} grants {resource}, which no operator module uses"
    if sub:
        use = SUBRESOURCE_USE.get(sub)
        assert use is not None and any(use.search(text) for text in SOURCES.values()), (
            f"{role} grants {resource}; the operator never calls /{sub}"
        )


def test_the_operator_is_not_granted_pod_logs() -> None:
    """Regression: pods/log was granted though only the clients (kubectl dask, KubeCluster) read logs, with
    their users' own credentials."""
    assert all(resource != "pods/log" for _, resource in _resources())
