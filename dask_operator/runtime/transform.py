"""What the cache does to an object between the API server and the store (controller-runtime's cache
transforms), so a fleet of thousands of clusters fits in a small process.

Invariant: `decode_for_cache(json)` equals `json.loads(json)` minus every ObjectMeta's `managedFields` (a
dict holding both `resourceVersion` and `managedFields`), with every dict key and every string value of at
most `INTERNED_MAX` characters interned: objects parsed apart share one copy of "metadata", "Running" or
an owner's UID. Built as it is parsed, so a LIST of thousands never exists in memory with its managedFields
(a process's RSS keeps its peak). `for_cache(obj)` then drops kubectl's last-applied-configuration
annotation (children never inherit kubectl's bookkeeping: contract/children.inheritable_annotations) and any
managedFields left. No planner reads either. Interned strings are freed with the last object holding them
(runtime-interned strings are mortal in CPython), so the shared set never outgrows the cache.
Held by test/unit/test_runtime_transform.py.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dask_operator.runtime.objects import Obj

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Longer strings (messages, certificates, scripts) are rarely shared between objects.
INTERNED_MAX = 128

_intern = sys.intern


def compact_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: one JSON object as a dict of interned strings, an ObjectMeta without
    managedFields."""
    obj = {_intern(k): (_intern(v) if type(v) is str and len(v) <= INTERNED_MAX else v) for k, v in pairs}
    if "managedFields" in obj and "resourceVersion" in obj:
        del obj["managedFields"]
    return obj


def decode_for_cache(data: bytes | str) -> Any:
    """Parse a list page or a watch event for the cache."""
    return json.loads(data, object_pairs_hook=compact_pairs)


def for_cache(obj: Obj) -> Obj:
    """`obj` without what no reader of the cache uses (changed in place and returned)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return obj
