"""runtime/applier.py: which kinds' generation follows their spec, when a live object holds an intent, which
applies are skipped (and which never are), and that what is remembered per object stays small."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from support.allocations import grown_in, in_fresh_interpreter

from dask_operator.runtime import applier as applier_module
from dask_operator.runtime.applier import Applier, generation_tracks_spec, holds
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.objects import Obj


@pytest.mark.parametrize(
    ("group", "tracks"),
    [
        ("", False),  # core: a Service's generation need not move with its spec
        ("apps", False),
        ("policy", False),
        ("networking.k8s.io", False),
        ("kubernetes.dask.org", True),
        ("kueue.x-k8s.io", True),
        ("runtime.test.dask.org", True),
    ],
)
def test_only_custom_resources_are_trusted_to_move_their_generation_with_the_spec(
    group: str, tracks: bool
) -> None:
    assert generation_tracks_spec(Kind(group, "v1", "Thing", "things")) is tracks


def test_holds_compares_maps_key_by_key_and_everything_else_whole() -> None:
    intent = {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 1}], "size": 2}}
    live = {"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"}, "spec": {"ports": [{"port": 1}], "size": 2,
            "replicas": 3}}  # fmt: skip
    assert holds(live, intent)
    assert not holds({**live, "spec": {**live["spec"], "size": 3}}, intent)
    # a list the server defaulted into is not the list we applied: no skip on that evidence
    assert not holds({**live, "spec": {**live["spec"], "ports": [{"port": 1, "protocol": "TCP"}]}}, intent)
    assert not holds({**live, "metadata": {"labels": {}}}, intent)
    assert not holds({"spec": None}, {"spec": {"size": 1}})


class Server:
    """The API server and the cache as the applier sees them: a write answers the object at a new
    resourceVersion; the cache shows an object only once `sync()` says so (a cache may lag its writes)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.cached: dict[tuple[str, str], Obj] = {}
        self.writes: list[str] = []
        self.rv = 100

    def _write(self, intent: Obj, what: str) -> Obj:
        meta = intent["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.objects.get(key) or {"metadata": {"uid": f"uid-{meta['name']}", "generation": 0}}
        self.rv += 1
        obj = copy.deepcopy({**old, **intent} if what == "apply" else {**old, "status": intent["status"]})
        obj["metadata"] = {**old["metadata"], **intent["metadata"], "resourceVersion": str(self.rv)}
        if what == "apply" and {k: v for k, v in old.items() if k != "metadata"} != {
            k: v for k, v in obj.items() if k not in ("metadata", "status")
        }:
            obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
        self.objects[key] = obj
        self.writes.append(f"{what} {meta['name']}")
        return copy.deepcopy(obj)

    def apply(self, intent: Obj, field_manager: str, force: bool) -> Obj:
        return self._write(intent, "apply")

    def apply_status(self, intent: Obj, field_manager: str, force: bool) -> Obj:
        return self._write(intent, "status")

    def metadata(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        cached = self.cached.get((namespace or "", name))
        return None if cached is None else cached["metadata"]

    def sync(self) -> None:
        self.cached = copy.deepcopy(self.objects)

    def someone_else_writes(self, name: str, **changes: Any) -> None:
        obj = self.objects[("ns", name)]
        self.rv += 1
        obj.update(changes)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.sync()


THING = Kind("runtime.test.dask.org", "v1", "Thing", "things")


def configmap(name: str, value: str = "v") -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns",
            "labels": {"app": "a"}}, "data": {"k": value}}  # fmt: skip


def thing(name: str, size: int = 1) -> Obj:
    return {"apiVersion": "runtime.test.dask.org/v1", "kind": "Thing", "metadata": {"name": name,
            "namespace": "ns", "labels": {"app": "a"}}, "spec": {"size": size}}  # fmt: skip


def applier(server: Server, max_entries: int = 100_000) -> Applier:
    return Applier(cast(Any, server), cast(Any, server), max_entries=max_entries)


def test_an_intent_is_applied_again_only_when_it_or_the_object_changed() -> None:
    server = Server()
    ssa = applier(server)
    assert ssa.apply(configmap("a"), "m") is not None
    assert ssa.apply(configmap("a"), "m") is not None, "the cache does not show the object yet: applied"
    server.sync()
    assert ssa.apply(configmap("a"), "m") is None, "the cache shows the RV our write produced"
    assert ssa.apply(configmap("a", "w"), "m") is not None, "a changed intent"
    server.sync()
    assert ssa.apply(configmap("a", "w"), "m") is None
    assert ssa.apply(configmap("a", "w"), "other") is not None, "per field manager"
    server.sync()
    server.someone_else_writes("a", data={"k": "drifted"})
    assert ssa.apply(configmap("a", "w"), "m") is not None, "a core object moved: repaired"
    assert server.writes == ["apply a"] * 3 + ["apply a"] * 2


def test_a_custom_resource_is_trusted_while_its_generation_and_our_metadata_hold() -> None:
    server = Server()
    ssa = applier(server)
    ssa.apply(thing("t"), "m")
    server.someone_else_writes("t", status={"ready": 1})  # a new RV, the same generation
    assert ssa.apply(thing("t"), "m") is None
    server.someone_else_writes("t", metadata={**server.objects[("ns", "t")]["metadata"], "labels": {}})
    assert ssa.apply(thing("t"), "m") is not None, "our label was removed"
    server.sync()
    server.objects[("ns", "t")]["metadata"]["generation"] += 1
    server.someone_else_writes("t")
    assert ssa.apply(thing("t"), "m") is not None, "someone else changed the spec"


def test_our_own_writes_in_a_row_keep_our_earlier_intents_trusted() -> None:
    server = Server()
    ssa = applier(server)
    ssa.apply(configmap("a"), "m")
    ssa.apply_status(
        {**configmap("a"), "status": {"phase": "Ready"}}, "m-status"
    )  # its answer shows the intent
    server.sync()
    assert ssa.apply(configmap("a"), "m") is None
    assert ssa.apply_status({**configmap("a"), "status": {"phase": "Ready"}}, "m-status") is None
    assert server.writes == ["apply a", "status a"]


def test_past_max_entries_the_least_recently_used_entry_goes() -> None:
    server = Server()
    ssa = applier(server, max_entries=2)
    for name in ("a", "b"):
        ssa.apply(configmap(name), "m")
    server.sync()
    assert ssa.apply(configmap("a"), "m") is None  # "a" used again: "b" is now the oldest
    ssa.apply(configmap("c"), "m")
    server.sync()
    assert ssa.apply(configmap("a"), "m") is None
    assert ssa.apply(configmap("b"), "m") is not None, "forgotten: applied again"


def remembered_bytes_per_object() -> float:
    """Bytes allocated in applier.py per applied object, past the recent intents kept whole (a bounded
    number)."""
    server = Server()
    ssa = applier(server)
    intents = [configmap(f"cluster-{i:05d}-scheduler") for i in range(1000)]

    def prepare() -> None:
        for intent in intents[:300]:
            ssa.apply(intent, "m")
        server.sync()

    def run() -> None:
        for intent in intents[300:]:
            ssa.apply(intent, "m")

    return grown_in(applier_module.__file__, prepare, run) / 700


def test_what_is_remembered_per_object_is_small() -> None:
    # kept for every child of every cluster: a digest, resourceVersions as numbers, the cache's own strings
    per_object = in_fresh_interpreter(__file__, "remembered_bytes_per_object")
    assert per_object < 400, (
        f"{per_object:.0f} bytes per object"
    )  # 638 with a dataclass, a set of strings, a hex digest
