"""The REST client and the applier against the real API server (checklist items 40-45, 54, client retries)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.faultproxy import SeenRequest
from support.runtime_plane import RequestLog, client_via, direct_client, http_proxy, tcp_proxy
from support.wait import wait_for

from dask_operator.runtime import metrics
from dask_operator.runtime.applier import Applier
from dask_operator.runtime.cache import Cache
from dask_operator.runtime.client import ApiError, Client, ConnectionFailure
from dask_operator.runtime.events import EventRecorder
from dask_operator.runtime.kinds import CONFIGMAP, CUSTOM_RESOURCE_DEFINITION, EVENT, Kind

Obj = dict[str, Any]
WIDGET = Kind("runtime.test.dask.org", "v1", "Widget", "widgets")
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.runtime.test.dask.org"},
    "spec": {
        "group": "runtime.test.dask.org",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def server(kube_plane: Any) -> Client:
    return direct_client(kube_plane)


def configmap(namespace: str, name: str, data: dict[str, str], **meta: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "data": data,
    }


def test_apply_is_a_patch_with_apply_content_type_field_manager_and_force(
    kube_plane: Any, namespace: str, tmp_path: Path
) -> None:  # item 40
    proxy = http_proxy(kube_plane)
    client = client_via(kube_plane, proxy, tmp_path)
    client.apply(configmap(namespace, "a", {"k": "v"}), "mgr")
    client.apply(configmap(namespace, "a", {"k": "w"}), "mgr")
    writes = [r for r in proxy.requests if r.method != "GET"]
    assert [r.method for r in writes] == ["PATCH", "PATCH"]
    for request in writes:
        assert request.header("Content-Type") == "application/apply-patch+yaml"
        assert "fieldManager=mgr" in request.target and "force=true" in request.target
    proxy.close()


def test_second_identical_apply_keeps_rv_and_the_applier_skips_it(
    server: Client, namespace: str
) -> None:  # item 41
    first = server.apply(configmap(namespace, "same", {"k": "v"}), "mgr")
    second = server.apply(configmap(namespace, "same", {"k": "v"}), "mgr")
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    cache = Cache(server, namespace)
    cache.start()
    applier = Applier(server, cache)
    log = RequestLog(server)
    try:
        assert (
            applier.apply(configmap(namespace, "same", {"k": "v"}), "mgr") is not None
        )  # nothing remembered yet
        wait_for(
            lambda: (
                cache.resource_version(CONFIGMAP, namespace, "same") == second["metadata"]["resourceVersion"]
            ),
            timeout=5,
        )
        log.clear()
        assert applier.apply(configmap(namespace, "same", {"k": "v"}), "mgr") is None
        assert applier.apply(configmap(namespace, "same", {"k": "v"}), "mgr") is None
        assert log.writes() == []
        assert (
            applier.apply(configmap(namespace, "same", {"k": "changed"}), "mgr") is not None
        )  # intent changed
    finally:
        cache.stop()


def test_field_dropped_from_intent_is_removed(server: Client, namespace: str) -> None:  # item 42
    server.apply(configmap(namespace, "shrink", {"a": "1", "b": "2"}, labels={"x": "1", "y": "2"}), "mgr")
    live = server.apply(configmap(namespace, "shrink", {"a": "1"}, labels={"x": "1"}), "mgr")
    assert live["data"] == {"a": "1"}
    assert live["metadata"]["labels"] == {"x": "1"}


def test_field_changed_by_someone_else_is_restored(
    server: Client, namespace: str, kube_plane: Any
) -> None:  # item 43
    cache = Cache(server, namespace)
    cache.start()
    applier = Applier(server, cache)
    try:
        intent = configmap(namespace, "owned", {"k": "operator"})
        applier.apply(intent, "mgr")
        kube_plane.kubectl(
            "-n", namespace, "patch", "configmap", "owned", "--type=merge", "-p", '{"data":{"k":"user"}}'
        )
        wait_for(
            lambda: (cache.get(CONFIGMAP, namespace, "owned") or {}).get("data") == {"k": "user"}, timeout=5
        )
        restored = applier.apply(intent, "mgr")
        assert restored is not None and restored["data"] == {"k": "operator"}
    finally:
        cache.stop()


def test_status_goes_only_through_the_status_subresource(
    server: Client, namespace: str, kube_plane: Any
) -> None:  # item 44
    server.apply(WIDGET_CRD, "runtime-tests")
    wait_for(
        lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (server.get(CUSTOM_RESOURCE_DEFINITION, None, "widgets.runtime.test.dask.org") or {})
            .get("status", {})
            .get("conditions")
            or []
        ),
        timeout=20,
    )
    widget = {
        "apiVersion": "runtime.test.dask.org/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": namespace},
        "spec": {"size": 1},
    }
    with pytest.raises(ValueError, match="status"):
        server.apply({**widget, "status": {"ready": True}}, "mgr")
    created = wait_for(lambda: _try_apply(server, widget), timeout=20)
    status = server.apply_status(
        {**widget, "status": {"observedGeneration": created["metadata"]["generation"], "ready": True}},
        "mgr-status",
    )
    assert status["status"] == {"observedGeneration": 1, "ready": True}
    assert status["spec"] == {"size": 1}
    managers = {
        (m["manager"], m.get("subresource", ""))
        for m in server.request("GET", WIDGET.object_path(namespace, "w"))["metadata"]["managedFields"]
    }
    assert ("mgr", "") in managers and ("mgr-status", "status") in managers


def test_our_own_writes_in_a_row_cost_no_extra_apply_and_a_foreign_change_still_forces_one(
    server: Client, namespace: str, kube_plane: Any
) -> None:
    """A main intent, then a second field manager's field and a status on the same custom resource: applying
    the main intent again is skipped (our writes left it whole); someone else's spec or label change is not."""
    server.apply(WIDGET_CRD, "runtime-tests")
    wait_for(
        lambda: server.get(CUSTOM_RESOURCE_DEFINITION, None, "widgets.runtime.test.dask.org"), timeout=20
    )
    main = {"apiVersion": "runtime.test.dask.org/v1", "kind": "Widget",
            "metadata": {"name": "w2", "namespace": namespace, "labels": {"app": "w"}},
            "spec": {"template": {"image": "dask:1"}}}  # fmt: skip
    size = {**main, "metadata": {"name": "w2", "namespace": namespace}, "spec": {"size": 3}}
    wait_for(lambda: _try_apply(server, main), timeout=20)  # the CRD is served
    cache = Cache(server, namespace)
    cache.informer(WIDGET)
    cache.start()
    applier = Applier(server, cache)
    log = RequestLog(server)
    try:
        assert applier.apply(main, "main") is not None  # nothing remembered yet
        assert applier.apply(size, "size") is not None
        done = applier.apply_status({**main, "status": {"ready": True}}, "main-status")
        assert done is not None
        last = done["metadata"]["resourceVersion"]
        wait_for(lambda: cache.resource_version(WIDGET, namespace, "w2") == last, timeout=10)
        log.clear()
        assert applier.apply(main, "main") is None and applier.apply(size, "size") is None
        assert log.writes() == []

        # status written by someone else: the generation did not move, so the intent still holds
        server.patch_merge(WIDGET, namespace, "w2", {"status": {"ready": False}}, subresource="status")
        wait_for(lambda: cache.resource_version(WIDGET, namespace, "w2") != last, timeout=10)
        assert applier.apply(main, "main") is None

        kube_plane.kubectl("-n", namespace, "patch", "widget", "w2", "--type=merge",
                           "-p", '{"spec":{"template":{"image":"dask:2"}}}')  # fmt: skip
        wait_for(lambda: (cache.get(WIDGET, namespace, "w2") or {})["spec"]["template"]["image"] == "dask:2",
                 timeout=10)  # fmt: skip
        restored = applier.apply(main, "main")
        assert restored is not None and restored["spec"]["template"]["image"] == "dask:1"

        kube_plane.kubectl("-n", namespace, "label", "widget", "w2", "app-")  # no new generation
        wait_for(lambda: "app" not in ((cache.get(WIDGET, namespace, "w2") or {})["metadata"].get("labels") or {}),
                 timeout=10)  # fmt: skip
        relabelled = applier.apply(main, "main")
        assert relabelled is not None and relabelled["metadata"]["labels"] == {"app": "w"}
    finally:
        cache.stop()


def _try_apply(server: Client, obj: Obj) -> Obj | None:
    try:
        return server.apply(obj, "mgr")
    except ApiError as error:
        if error.not_found:  # the CRD is established but not yet served
            return None
        raise


def test_delete_preconditions(server: Client, namespace: str) -> None:
    live = server.create(configmap(namespace, "d", {"k": "v"}))
    with pytest.raises(ApiError) as wrong_uid:
        server.delete(CONFIGMAP, namespace, "d", uid="not-the-uid")
    assert wrong_uid.value.conflict
    with pytest.raises(ApiError) as stale_rv:
        server.delete(CONFIGMAP, namespace, "d", resource_version="1")
    assert stale_rv.value.conflict
    assert server.delete(CONFIGMAP, namespace, "d", uid=live["metadata"]["uid"]) is True
    assert server.delete(CONFIGMAP, namespace, "d") is False
    assert server.get(CONFIGMAP, namespace, "d") is None


def test_events_are_recorded_and_repeats_counted(server: Client, namespace: str) -> None:
    subject = server.create(configmap(namespace, "subject", {}))
    recorder = EventRecorder(server, "runtime-tests")
    recorder.event(subject, "Warning", "SchedulerUnreachable", "The scheduler did not answer; retrying.")
    recorder.event(subject, "Warning", "SchedulerUnreachable", "The scheduler did not answer; retrying.")
    assert recorder.flush(5)
    events, _ = server.list(EVENT, namespace)
    mine = [e for e in events if e["involvedObject"].get("uid") == subject["metadata"]["uid"]]
    assert len(mine) == 1 and mine[0]["count"] == 2 and mine[0]["type"] == "Warning"
    recorder.stop()


def test_429_is_retried_after_retry_after_and_every_request_is_counted(
    kube_plane: Any, namespace: str, tmp_path: Path
) -> None:  # item 54
    proxy = http_proxy(kube_plane)
    client = client_via(kube_plane, proxy, tmp_path)
    throttled = [0]

    def inject(request: SeenRequest) -> tuple[int, dict[str, str], bytes] | None:
        if request.method == "GET" and throttled[0] < 2:
            throttled[0] += 1
            return 429, {"Retry-After": "1"}, b'{"kind":"Status","code":429,"reason":"TooManyRequests"}'
        return None

    proxy.injector = inject
    labels = {"method": "GET", "host": client.host}
    before_429 = metrics.sample_value("rest_client_requests_total", {"code": "429", **labels})
    before_404 = metrics.sample_value("rest_client_requests_total", {"code": "404", **labels})
    started = time.monotonic()
    assert client.get(CONFIGMAP, namespace, "absent") is None
    assert time.monotonic() - started >= 2.0  # honoured Retry-After twice
    assert metrics.sample_value("rest_client_requests_total", {"code": "429", **labels}) == before_429 + 2
    assert metrics.sample_value("rest_client_requests_total", {"code": "404", **labels}) == before_404 + 1
    proxy.close()


def test_5xx_retried_only_when_idempotent(kube_plane: Any, namespace: str, tmp_path: Path) -> None:
    proxy = http_proxy(kube_plane)
    client = client_via(kube_plane, proxy, tmp_path)
    failures = {"GET": 1, "POST": 1}

    def inject(request: SeenRequest) -> tuple[int, dict[str, str], bytes] | None:
        if failures.get(request.method, 0) > 0:
            failures[request.method] -= 1
            return 503, {}, b'{"kind":"Status","code":503}'
        return None

    proxy.injector = inject
    assert client.get(CONFIGMAP, namespace, "absent") is None  # retried
    with pytest.raises(ApiError) as error:
        client.create(configmap(namespace, "once", {}))  # a create is not blindly repeated
    assert error.value.status == 503
    proxy.close()


def test_transport_failures_are_counted_as_error_and_bounded_in_time(
    kube_plane: Any, namespace: str, tmp_path: Path
) -> None:  # item 54
    proxy = tcp_proxy(kube_plane)
    client = client_via(kube_plane, proxy, tmp_path, timeout=1, connect_timeout=1, max_attempts=2)
    assert client.get(CONFIGMAP, namespace, "absent") is None
    proxy.refuse()
    labels = {"code": "<error>", "method": "GET", "host": client.host}
    before = metrics.sample_value("rest_client_requests_total", labels)
    with pytest.raises(ConnectionFailure):
        client.get(CONFIGMAP, namespace, "absent")
    assert metrics.sample_value("rest_client_requests_total", labels) == before + 2  # one per attempt
    proxy.pass_through()
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(ConnectionFailure):
        client.get(CONFIGMAP, namespace, "absent")
    assert time.monotonic() - started < 5  # the read timeout bounds a silent server
    proxy.close()
