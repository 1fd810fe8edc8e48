"""A controller does not reconcile on the watch echo of its own status write, and still reconciles on
every other change, the status included (runtime/predicate.NotOwnStatusEcho, on a real API server).

A throwaway CRD with a status subresource; its reconciler writes `status.observedGeneration` by
server-side apply whenever the cached status lacks it, and counts its reconciles.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from support.runtime_plane import direct_client
from support.wait import wait_for

from dask_operator.runtime.builder import ControllerBuilder
from dask_operator.runtime.client import Client
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.manager import Manager
from dask_operator.runtime.reconcile import Request, Result

GROUP = "echo.test.dask.org"
THING = Kind(GROUP, "v1", "Thing", "things")
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"things.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}
QUIET = 2.0  # seconds with no event expected: long enough for an echo to arrive and be reconciled


class StatusWriter:
    """Writes observedGeneration (and clears `tampered`) when the cached status differs; counts reconciles."""

    def __init__(self, manager: Manager) -> None:
        self.cache = manager.cache
        self.client = manager.client
        self.reconciles = 0
        self.status_writes = 0
        self.lock = threading.Lock()

    def reconcile(self, request: Request) -> Result:
        with self.lock:
            self.reconciles += 1
        obj = self.cache.get(THING, request.namespace, request.name)
        if obj is None:
            return Result()
        want = {"observedGeneration": obj["metadata"]["generation"], "tampered": False}
        if {k: (obj.get("status") or {}).get(k) for k in want} != want:
            meta = obj["metadata"]
            intent = {"apiVersion": f"{GROUP}/v1", "kind": "Thing", "status": want,
                      "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}  # fmt: skip
            self.client.apply_status(intent, "echo-test-status")
            with self.lock:
                self.status_writes += 1
        return Result()

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.reconciles, self.status_writes


@pytest.fixture
def thing_crd(kube_plane: Any) -> Iterator[None]:
    kube_plane.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    kube_plane.kubectl("wait", "--for=condition=Established", f"crd/things.{GROUP}", "--timeout=60s")
    yield
    # Waited out: the next test's apply would otherwise patch a CRD being deleted, which then vanishes.
    kube_plane.kubectl("delete", f"crd/things.{GROUP}", "--timeout=60s", check=False, timeout=90)


@contextmanager
def run(kube_plane: Any, namespace: str, ignore_echoes: bool) -> Iterator[tuple[StatusWriter, Client]]:
    client = direct_client(kube_plane, timeout=10)
    manager = Manager(client, namespace=namespace, metrics_address=None, health_address=None)
    writer = StatusWriter(manager)
    builder = ControllerBuilder(manager).named(f"echo-{ignore_echoes}").for_(THING)
    if ignore_echoes:
        builder = builder.ignoring_own_status_echoes()
    builder.complete(writer)
    thread = threading.Thread(target=manager.run, daemon=True)
    thread.start()
    try:
        yield writer, client
    finally:
        manager.stop()
        thread.join(15)


def settle(writer: StatusWriter) -> tuple[int, int]:
    """The counts once nothing has happened for QUIET seconds."""
    last, since = writer.counts(), time.monotonic()
    while time.monotonic() - since < QUIET:  # watching for reconciles that should not come
        time.sleep(0.1)
        if writer.counts() != last:
            last, since = writer.counts(), time.monotonic()
    return last


def scenario(writer: StatusWriter, client: Client, namespace: str) -> list[tuple[int, int]]:
    """(reconciles, status writes) after: create; a spec change; someone else's status write (a merge patch
    by another field manager)."""
    thing = {"apiVersion": f"{GROUP}/v1", "kind": "Thing", "metadata": {"name": "t", "namespace": namespace},
             "spec": {"size": 1}}  # fmt: skip
    client.create(thing)
    wait_for(lambda: writer.counts()[1] >= 1, timeout=30, message="first status write")
    after = [settle(writer)]
    client.patch_merge(THING, namespace, "t", {"spec": {"size": 2}})
    wait_for(lambda: writer.counts()[1] >= 2, timeout=30, message="status write for generation 2")
    after.append(settle(writer))
    client.patch_merge(THING, namespace, "t", {"status": {"tampered": True}}, subresource="status")
    wait_for(lambda: writer.counts()[1] >= 3, timeout=30, message="someone else's status repaired")
    after.append(settle(writer))
    return after


@pytest.mark.timeout(180)
def test_own_status_echo_reconciles_nothing_and_other_changes_still_do(
    kube_plane: Any, namespace: str, thing_crd: None
) -> None:
    with run(kube_plane, namespace, ignore_echoes=True) as (writer, client):
        counts = scenario(writer, client, namespace)
    # one reconcile per change (create, spec, a foreign status write), one status write each, no echo
    assert counts == [(1, 1), (2, 2), (3, 3)], counts


@pytest.mark.timeout(180)
def test_without_the_filter_every_status_write_costs_a_second_reconcile(
    kube_plane: Any, namespace: str, thing_crd: None
) -> None:
    with run(kube_plane, namespace, ignore_echoes=False) as (writer, client):
        counts = scenario(writer, client, namespace)
    assert counts == [(2, 1), (4, 2), (6, 3)], counts
