"""The cache's transform (runtime/transform.py): what it drops, that it changes nothing else, and that the
strings and equal parts of objects parsed apart end up shared (but never an object or its ObjectMeta)."""

from __future__ import annotations

import inspect
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dask_operator.runtime.cache import Cache, clone
from dask_operator.runtime.informer import Informer
from dask_operator.runtime.reflector import Reflector
from dask_operator.runtime.transform import (
    INTERNED_MAX,
    LAST_APPLIED,
    SharedParts,
    decode_for_cache,
    for_cache,
)

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


def strictly_equal(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1, 1.0 and True are equal in Python, not in JSON)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strictly_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


json_numbers = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 2)
    | st.sampled_from([0.0, 1.0, -1.0, 2.5])
    | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("ab"), inner, max_size=2),
    max_leaves=12,
)


@given(st.lists(json_numbers, min_size=2, max_size=6))
def test_parts_parsed_apart_are_shared_only_when_strictly_equal(values: list[Any]) -> None:
    # small values, so that equal (and Python-equal) parts come up often: true never becomes 1, nor 1 1.0
    parsed = [decode_for_cache(json.dumps({"metadata": {"name": "n"}, "data": v})) for v in values]
    for value, obj in zip(values, parsed, strict=True):
        assert strictly_equal(obj["data"], value)


def test_equal_parts_of_objects_parsed_apart_are_one_object() -> None:
    def scheduler_pod(name: str) -> dict[str, Any]:
        obj = pod(name)
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastProbeTime": None,
                                        "lastTransitionTime": "2026-12-07T09:00:00Z"}]  # fmt: skip
        return obj

    a = decode_for_cache(json.dumps(scheduler_pod("a")))
    b = decode_for_cache(json.dumps(scheduler_pod("b")))
    for part in (
        ("metadata", "labels"),
        ("metadata", "ownerReferences"),
        ("spec", "template", "managedFields"),
        ("status", "conditions"),
    ):
        in_a, in_b = a, b
        for key in part:
            in_a, in_b = in_a[key], in_b[key]
        assert in_a is in_b, part
    # what the cache's transforms change is never shared: the object itself and its ObjectMeta
    twin = decode_for_cache(json.dumps(scheduler_pod("a")))
    assert twin == a and twin is not a and twin["metadata"] is not a["metadata"]
    assert a["spec"]["template"] is not b["spec"]["template"], "a dict holding managedFields: never shared"
    assert a["status"] is not b["status"], "a part holding a long string (the message): never shared"


def test_the_table_of_shared_parts_is_bounded() -> None:
    parts = SharedParts(size=8)
    for i in range(100):
        json.loads(
            json.dumps({"metadata": {"labels": {"i": str(i)}}, "list": [i]}),
            object_pairs_hook=parts.compact_pairs,
        )
    assert len(parts) == 8
    first = json.loads('{"a": {"b": "1"}}', object_pairs_hook=parts.compact_pairs)
    again = json.loads('{"a": {"b": "1"}}', object_pairs_hook=parts.compact_pairs)
    assert first is again and first["a"] is again["a"]


def test_the_cache_hands_out_copies_so_shared_parts_stay_as_parsed() -> None:
    assert inspect.signature(Cache).parameters["copy_on_read"].default is True
    assert clone({"a": [{"b": 1}]}) == {"a": [{"b": 1}]}
