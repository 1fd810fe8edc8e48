"""Store and index semantics (checklist item 18), in-process, with random operation sequences; what an
index costs per object."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.allocations import grown_in, in_fresh_interpreter

from dask_operator.runtime import store as store_module
from dask_operator.runtime.cache import clone
from dask_operator.runtime.store import (
    NAMESPACE_INDEX,
    OWNER_INDEX,
    Store,
    index_by_controller_owner,
    index_by_label,
    index_by_namespace,
    object_key,
    strip_managed_fields,
)

CLUSTER_NAME_LABEL = "example.org/cluster"  # any label; the runtime knows no Dask label
LABEL_INDEX = "label:" + CLUSTER_NAME_LABEL


def make(namespace: str, name: str, owner: str | None, cluster: str | None, rv: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace, "name": name, "resourceVersion": str(rv)}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "X", "name": owner, "uid": f"uid-{owner}", "controller": True}
        ]
    if cluster:
        meta["labels"] = {CLUSTER_NAME_LABEL: cluster}
    return {"metadata": meta}


operation = st.tuples(
    st.sampled_from(["upsert", "delete", "replace"]),
    st.sampled_from(["ns-a", "ns-b"]),
    st.sampled_from(["p", "q", "r", "s"]),
    st.one_of(st.none(), st.sampled_from(["o1", "o2"])),
    st.one_of(st.none(), st.sampled_from(["c1", "c2"])),
)


def new_store() -> Store:
    return Store(
        {
            NAMESPACE_INDEX: index_by_namespace,
            OWNER_INDEX: index_by_controller_owner,
            LABEL_INDEX: index_by_label(CLUSTER_NAME_LABEL),
        }
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(operation, max_size=40))
def test_indexes_agree_with_a_brute_force_filter(
    ops: list[tuple[str, str, str, str | None, str | None]],
) -> None:
    store = new_store()
    for rv, (op, namespace, name, owner, cluster) in enumerate(ops):
        obj = make(namespace, name, owner, cluster, rv)
        if op == "upsert":
            store.upsert(obj)
        elif op == "delete":
            store.delete(object_key(obj))
        else:
            store.replace([obj, make("ns-b", "fixed", "o1", "c1", rv)])
    everything = store.list()

    def keys(objs: list[dict[str, Any]]) -> set[str]:
        return {object_key(obj) for obj in objs}

    for namespace in ("ns-a", "ns-b"):
        brute = [o for o in everything if o["metadata"]["namespace"] == namespace]
        assert keys(store.by_index(NAMESPACE_INDEX, namespace)) == keys(brute)
    for cluster in ("c1", "c2"):
        brute_all = [
            o for o in everything if (o["metadata"].get("labels") or {}).get(CLUSTER_NAME_LABEL) == cluster
        ]
        assert keys(store.by_index(LABEL_INDEX, cluster)) == keys(brute_all)
        for namespace in ("ns-a", "ns-b"):
            brute_ns = [o for o in brute_all if o["metadata"]["namespace"] == namespace]
            assert keys(store.by_index(LABEL_INDEX, cluster, namespace)) == keys(brute_ns)
    for owner in ("o1", "o2"):
        brute = [
            o
            for o in everything
            if any(r["uid"] == f"uid-{owner}" for r in o["metadata"].get("ownerReferences", []))
        ]
        assert keys(store.by_index(OWNER_INDEX, f"uid-{owner}")) == keys(brute)


def test_late_indexer_indexes_existing_objects() -> None:
    store = Store()
    store.upsert(make("a", "x", None, "c1", 1))
    store.add_indexer(LABEL_INDEX, index_by_label(CLUSTER_NAME_LABEL))
    assert [object_key(o) for o in store.by_index(LABEL_INDEX, "c1")] == ["a/x"]


def test_keys_and_managed_fields() -> None:
    assert object_key({"metadata": {"name": "n"}}) == "n"
    assert object_key({"metadata": {"name": "n", "namespace": "s"}}) == "s/n"
    obj = {"metadata": {"name": "n", "managedFields": [{"manager": "x"}]}}
    assert strip_managed_fields(obj) == {"metadata": {"name": "n"}}


def test_clone_is_deep() -> None:
    obj = {"a": [{"b": 1}], "c": {"d": "e"}}
    copy = clone(obj)
    assert copy == obj
    copy["a"][0]["b"] = 2
    copy["c"]["d"] = "f"
    assert obj == {"a": [{"b": 1}], "c": {"d": "e"}}


def indexed_bytes_per_object() -> float:
    """Bytes allocated in store.py per stored object whose index values no other object holds."""
    store = new_store()
    objs = [make("ns", f"svc-{i}", f"cluster-{i}", f"cluster-{i}", i) for i in range(1000)]

    def run() -> None:
        for obj in objs:
            store.upsert(obj)

    return grown_in(store_module.__file__, lambda: None, run) / 1000


def test_an_index_value_held_by_one_object_costs_no_set() -> None:
    # a fleet's owner UIDs and cluster labels are mostly held by one object each (a Service, a worker group)
    per_object = in_fresh_interpreter(__file__, "indexed_bytes_per_object")
    assert per_object < 300, f"{per_object:.0f} bytes per object"  # 602 with a set per value
    store = new_store()
    for i in range(1000):
        store.upsert(make("ns", f"svc-{i}", f"cluster-{i}", f"cluster-{i}", i))
    assert [object_key(o) for o in store.by_index(OWNER_INDEX, "uid-cluster-7")] == ["ns/svc-7"]
    store.upsert(make("ns", "pod-7", "cluster-7", "cluster-7", 2000))
    assert {object_key(o) for o in store.by_index(LABEL_INDEX, "cluster-7")} == {"ns/svc-7", "ns/pod-7"}
    store.delete("ns/svc-7")
    assert [object_key(o) for o in store.by_index(LABEL_INDEX, "cluster-7")] == ["ns/pod-7"]
