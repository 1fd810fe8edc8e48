"""Metadata every child inherits: labels, annotations, owner references, template hashes.

Invariant: pure functions of their arguments. Precedence is "parent metadata <= sub-resource metadata <=
reserved labels", then fill-only owner labels; annotations whose key starts with `kopf.zalando.org` or
`kubectl.kubernetes.io`, and Kueue's queue and priority labels, are never copied to a child. Every child
carries `dask.org/cluster-name` (the label the cache selects Pods and Services by); `relabel_patch` restores
it on a child that lost it, and only on a child still controlled by the same owner.
Held by test/unit/test_cluster.py, test/unit/test_job.py, test/unit/test_workergroup.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from dask_operator.api.v1.group import API_VERSION, GROUP
from dask_operator.api.v1.names import (
    LABEL_CLUSTER_NAME,
    UNPROPAGATED_ANNOTATION_PREFIXES,
    UNPROPAGATED_LABELS,
)
from dask_operator.controller.contract.objects import Obj

# Ours: which pod template a pod was made from (a hash of its spec), so a changed template is seen
# without comparing specs that the API server has defaulted.
TEMPLATE_HASH_LABEL = f"{GROUP}/template-hash"


def inheritable_annotations(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """A parent's annotations minus the bookkeeping of kubectl and kopf."""
    return {
        k: v for k, v in (annotations or {}).items() if not k.startswith(UNPROPAGATED_ANNOTATION_PREFIXES)
    }


def child_metadata(
    parent: Mapping[str, Any],
    sub_metadata: Mapping[str, Any] | None,
    reserved_labels: Mapping[str, str],
    fill_labels: Iterable[Mapping[str, str] | None] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) for a child of `parent` built from `sub_metadata` (e.g. spec.worker.metadata)."""
    meta = parent.get("metadata", {})
    sub = sub_metadata or {}
    labels = {**(meta.get("labels") or {}), **(sub.get("labels") or {}), **reserved_labels}
    for extra in fill_labels:
        for key, value in (extra or {}).items():
            labels.setdefault(key, value)
    for key in UNPROPAGATED_LABELS:
        labels.pop(key, None)
    annotations = {**inheritable_annotations(meta.get("annotations")), **(sub.get("annotations") or {})}
    return labels, annotations


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    """A controller owner reference: the garbage collector deletes the child with its owner, no finalizer."""
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_child(
    owner: Mapping[str, Any],
    api_version: str,
    kind: str,
    name: str,
    metadata: tuple[dict[str, str], dict[str, str]],
    spec: Obj,
) -> Obj:
    """A child of `owner` in its namespace, with (labels, annotations) from child_metadata, controlled by it."""
    labels, annotations = metadata
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def adoption(child: Mapping[str, Any], owner: Mapping[str, Any]) -> Obj | None:
    """The apply intent that makes `owner` the controller of `child`, unless some controller already is."""
    meta = child["metadata"]
    if any(ref.get("controller") for ref in meta.get("ownerReferences") or []):
        return None
    return {
        "apiVersion": child.get("apiVersion", API_VERSION),
        "kind": child["kind"],
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "ownerReferences": [owner_reference(owner)],
        },
    }


def relabel_patch(desired: Mapping[str, Any]) -> list[Obj] | None:
    """The JSON patch that puts `dask.org/cluster-name` back on the live object named like `desired`, applied
    only if its first ownerReference is still desired's controller (a `test` operation); None when desired
    carries neither. A child whose label was removed (or made before the cache selected by it) is invisible
    to the cache, so creating it again answers AlreadyExists: this patch brings it back into view."""
    meta = desired.get("metadata") or {}
    value = (meta.get("labels") or {}).get(LABEL_CLUSTER_NAME)
    owner = next((ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")), None)
    if value is None or owner is None:
        return None
    label_path = "/metadata/labels/" + LABEL_CLUSTER_NAME.replace("~", "~0").replace("/", "~1")
    return [
        {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": owner["uid"]},
        {"op": "add", "path": label_path, "value": value},
    ]


def is_controlled_by(child: Mapping[str, Any], owner_uid: str) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == owner_uid
        for ref in child.get("metadata", {}).get("ownerReferences") or []
    )


def template_hash(*parts: Any) -> str:
    """10 hex characters that change whenever any part changes (canonical JSON, SHA-256)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def with_env_defaults(containers: list[Obj], defaults: Mapping[str, str]) -> list[Obj]:
    """Containers with each variable of `defaults` appended unless the container already defines it."""
    out = []
    for container in containers:
        env = list(container.get("env") or [])
        present = {e.get("name") for e in env}
        env += [{"name": k, "value": v} for k, v in defaults.items() if k not in present]
        out.append({**container, "env": env})
    return out
