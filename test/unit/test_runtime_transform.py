"""The cache's transform (runtime/transform.py): what it drops, that it changes nothing else, and that the
strings of objects parsed apart end up shared."""

from __future__ import annotations

import inspect
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dask_operator.runtime.informer import Informer
from dask_operator.runtime.reflector import Reflector
from dask_operator.runtime.transform import INTERNED_MAX, LAST_APPLIED, decode_for_cache, for_cache

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=30,
)


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": "7",
            "labels": {"app": "dask"},
            "annotations": {LAST_APPLIED: '{"kind":"Pod"}', "keep": "me"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "ownerReferences": [{"uid": "0b5c0c8e-5d2b-4ad4-9d0f-7c1c2f3b2a10", "controller": True}],
        },
        # a field of that name elsewhere than in ObjectMeta is data, kept
        "spec": {"template": {"managedFields": ["x"]}},
        "status": {"phase": "Running", "message": "x" * (INTERNED_MAX + 1)},
    }


def test_drops_managed_fields_and_last_applied_only() -> None:
    got = for_cache(decode_for_cache(json.dumps(pod("a"))))
    want = pod("a")
    del want["metadata"]["managedFields"]
    del want["metadata"]["annotations"][LAST_APPLIED]
    assert got == want


def test_a_watch_event_is_decoded_the_same_way() -> None:
    event = decode_for_cache(json.dumps({"type": "MODIFIED", "object": pod("a")}).encode())
    assert "managedFields" not in event["object"]["metadata"]
    assert event["object"]["spec"] == pod("a")["spec"]


@given(json_values)
def test_any_other_json_is_unchanged(value: Any) -> None:
    obj = {"metadata": {"name": "n"}, "data": value}
    assert for_cache(decode_for_cache(json.dumps(obj))) == obj


def test_strings_of_objects_parsed_apart_are_shared() -> None:
    a = decode_for_cache(json.dumps(pod("a")))
    b = decode_for_cache(json.dumps(pod("b")))
    key_a = next(k for k in a["metadata"] if k == "ownerReferences")
    key_b = next(k for k in b["metadata"] if k == "ownerReferences")
    assert key_a is key_b
    assert a["status"]["phase"] is b["status"]["phase"]
    assert a["metadata"]["ownerReferences"][0]["uid"] is b["metadata"]["ownerReferences"][0]["uid"]


def test_informers_and_reflectors_use_it_by_default() -> None:
    assert inspect.signature(Informer).parameters["transform"].default is for_cache
    assert inspect.signature(Reflector).parameters["decode"].default is decode_for_cache
