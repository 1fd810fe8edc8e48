"""DaskCluster desired state: children, metadata precedence, scheduler replacement, status, idleness."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from support.builders import condition, created, running, terminating

from dask_operator.api.v1.types import PHASE_SUSPENDED
from dask_operator.controller.contract.children import TEMPLATE_HASH_LABEL, template_hash
from dask_operator.controller.contract.hold import hold_of
from dask_operator.controller.contract.plans import FIELD_MANAGER, REPLICAS_FIELD_MANAGER, Apply, Cause
from dask_operator.controller.contract.scheduler_api import (
    HTTP_ROUTES_ENV,
    PRELOAD_ENV,
    preload_value,
    routes_decision,
)
from dask_operator.controller.planners.cluster import (
    DEFAULT_WORKER_TTL,
    PROPAGATED_REPLICAS_ANNOTATION,
    WORKER_TTL_ENV,
    ClusterObservation,
    default_group_replicas,
    desired_default_group,
    desired_scheduler_pod,
    desired_scheduler_service,
    idle_decision,
    plan_cluster,
    scheduler_api_condition,
)

NOW = 1_700_000_000.0


def make_cluster(name: str = "c", replicas: int = 3, **extra: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "cluster-uid",
            "generation": 2,
            "labels": {"team": "a", "shared": "top"},
            "annotations": {
                "note": "x",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "kopf.zalando.org/last-handled-configuration": "{}",
            },
        },
        "spec": {
            "idleTimeout": 0,
            "scheduler": {
                "metadata": {"labels": {"shared": "scheduler", "dask.org/component": "bogus"}},
                "spec": {
                    "containers": [{"name": "scheduler", "image": "dask", "args": ["dask", "scheduler"]}]
                },
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "port": 8787, "targetPort": "http-dashboard"},
                    ],
                },
            },
            "worker": {
                "replicas": replicas,
                "metadata": {"labels": {"worker-sublabel": "w", "dask.org/component": "superworker"}},
                "spec": {"containers": [{"name": "worker", "image": "dask"}]},
            },
        },
    }
    cluster["spec"].update(extra)
    return cluster


def ready_pod(obj: dict[str, Any], uid: str = "pod-uid") -> dict[str, Any]:
    return running(obj, uid=uid)


def test_scheduler_pod_metadata_precedence_and_owner() -> None:
    pod = desired_scheduler_pod(make_cluster())
    meta = pod["metadata"]
    assert meta["name"] == "c-scheduler"
    assert meta["labels"]["team"] == "a"
    assert meta["labels"]["shared"] == "scheduler"  # sub-metadata beats top-level
    assert meta["labels"]["dask.org/component"] == "scheduler"  # reserved labels always win
    assert meta["labels"]["dask.org/cluster-name"] == "c"
    assert meta["labels"]["sidecar.istio.io/inject"] == "false"
    assert meta["annotations"] == {"note": "x"}  # kubectl/kopf bookkeeping filtered
    (ref,) = meta["ownerReferences"]
    assert ref["uid"] == "cluster-uid" and ref["controller"] and ref["blockOwnerDeletion"]


def test_scheduler_pod_gets_http_api_route_unless_user_set_routes() -> None:
    env = desired_scheduler_pod(make_cluster())["spec"]["containers"][0]["env"]
    routes = [e["value"] for e in env if e["name"] == HTTP_ROUTES_ENV]
    assert len(routes) == 1 and "distributed.http.scheduler.api" in routes[0]
    cluster = make_cluster()
    cluster["spec"]["scheduler"]["spec"]["containers"][0]["env"] = [{"name": HTTP_ROUTES_ENV, "value": "[]"}]
    env = desired_scheduler_pod(cluster)["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == HTTP_ROUTES_ENV] == [{"name": HTTP_ROUTES_ENV, "value": "[]"}]


def test_scheduler_pod_gets_a_short_worker_ttl_unless_the_user_set_one() -> None:
    pod = desired_scheduler_pod(make_cluster())
    env = pod["spec"]["containers"][0]["env"]
    assert {"name": WORKER_TTL_ENV, "value": DEFAULT_WORKER_TTL} in env
    cluster = make_cluster()
    cluster["spec"]["scheduler"]["spec"]["containers"][0]["env"] = [{"name": WORKER_TTL_ENV, "value": "5m"}]
    env = desired_scheduler_pod(cluster)["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == WORKER_TTL_ENV] == [{"name": WORKER_TTL_ENV, "value": "5m"}]
    # the defaults (this one and the demand extension's preload) are not part of the template hash: an
    # operator upgrade bringing them restarts no scheduler
    without = copy.deepcopy(pod)
    without["spec"]["containers"][0]["env"].remove({"name": WORKER_TTL_ENV, "value": DEFAULT_WORKER_TTL})
    without["spec"]["containers"][0]["env"].remove({"name": PRELOAD_ENV, "value": preload_value()})
    assert pod["metadata"]["labels"][TEMPLATE_HASH_LABEL] == template_hash(without["spec"])


@pytest.mark.parametrize(
    ("change", "preloaded"),
    [
        ({}, True),
        ({"env": [{"name": PRELOAD_ENV, "value": "mine.py"}]}, False),
        ({"envFrom": [{"configMapRef": {"name": "settings"}}]}, False),
        ({"args": ["dask", "scheduler", "--preload", "mine.py"]}, False),
    ],
)
def test_the_demand_extension_is_preloaded_unless_the_user_sets_preloads(
    change: dict[str, Any], preloaded: bool
) -> None:
    cluster = make_cluster()
    cluster["spec"]["scheduler"]["spec"]["containers"][0].update(change)
    env = desired_scheduler_pod(cluster)["spec"]["containers"][0]["env"]
    ours = {"name": PRELOAD_ENV, "value": preload_value()}
    assert (ours in env) is preloaded
    assert [e["name"] for e in env].count(PRELOAD_ENV) <= 1


@pytest.mark.parametrize(
    ("container", "value", "http_api", "reason"),
    [
        ({}, "added", True, "RouteAdded"),
        ({"env": [{"name": HTTP_ROUTES_ENV, "value": "['distributed.http.health']"}]}, None, False, "NoHTTPAPI"),
        ({"env": [{"name": HTTP_ROUTES_ENV, "value": "['distributed.http.scheduler.api']"}]}, None, True,
         "RoutesGiven"),
        ({"env": [{"name": HTTP_ROUTES_ENV, "value": "not a list"}]}, None, False, "NoHTTPAPI"),
        ({"env": [{"name": HTTP_ROUTES_ENV, "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]},
         None, False, "NoHTTPAPI"),
        ({"envFrom": [{"configMapRef": {"name": "dask-config"}}]}, None, False, "NoHTTPAPI"),
    ],
)  # fmt: skip
def test_routes_the_user_gave_are_never_overridden_and_the_status_says_how_the_scheduler_is_reached(
    container: dict[str, Any], value: str | None, http_api: bool, reason: str
) -> None:
    decision = routes_decision({"name": "scheduler", **container})
    assert (decision.value is not None, decision.http_api, decision.reason) == (
        value is not None,
        http_api,
        reason,
    )
    cluster = make_cluster()
    cluster["spec"]["scheduler"]["spec"]["containers"][0].update(container)
    pod_env = desired_scheduler_pod(cluster)["spec"]["containers"][0]["env"]
    if value is None:  # left exactly as the user wrote it (the TTL and preload defaults are other variables)
        assert [e for e in pod_env if e["name"] not in (WORKER_TTL_ENV, PRELOAD_ENV)] == container.get(
            "env", []
        )
    cond = scheduler_api_condition(cluster)
    assert (cond.type, cond.status, cond.reason) == ("SchedulerAPI", http_api, reason)


def test_service_is_the_users_spec_verbatim_without_istio_label() -> None:
    cluster = make_cluster()
    service = desired_scheduler_service(cluster)
    assert service["metadata"]["name"] == "c-scheduler"
    assert service["spec"] == cluster["spec"]["scheduler"]["service"]
    assert "sidecar.istio.io/inject" not in service["metadata"]["labels"]
    assert service["metadata"]["labels"]["dask.org/component"] == "scheduler"


def test_default_group_carries_worker_spec_and_labels_but_not_replicas() -> None:
    group = desired_default_group(make_cluster())
    assert group["metadata"]["name"] == "c-default"
    assert group["metadata"]["labels"]["dask.org/component"] == "workergroup"
    assert group["metadata"]["labels"]["worker-sublabel"] == "w"
    assert group["metadata"]["labels"]["team"] == "a"
    assert group["spec"]["cluster"] == "c"
    assert "replicas" not in group["spec"]["worker"]
    assert group["spec"]["worker"]["spec"] == make_cluster()["spec"]["worker"]["spec"]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [(None, 3), ("1", 3), ("3", None)],
)
def test_replicas_propagate_only_when_the_cluster_value_changed(
    annotation: str | None, expected: int | None
) -> None:
    group = desired_default_group(make_cluster())
    group["spec"]["worker"]["replicas"] = 7  # e.g. scaled directly or by the autoscaler
    if annotation is not None:
        group["metadata"]["annotations"][PROPAGATED_REPLICAS_ANNOTATION] = annotation
    intent = default_group_replicas(make_cluster(replicas=3), group)
    if expected is None:
        assert intent is None
    else:
        assert intent is not None and intent["spec"] == {"worker": {"replicas": expected}}
    created = default_group_replicas(make_cluster(), None)  # right after the apply that creates the group
    assert created is not None and created["spec"] == {"worker": {"replicas": 3}}


def test_new_cluster_plans_all_children_and_status_created() -> None:
    plan = plan_cluster(ClusterObservation(make_cluster()), NOW)
    # the children, then the default group's replicas under their own field manager: the main manager
    # never owns them, not even in the write that creates the group (so no write ever hands them over)
    applies = list(plan.of_type(Apply))
    assert [(s.obj["kind"], s.field_manager) for s in applies] == [
        ("Service", FIELD_MANAGER),
        ("DaskWorkerGroup", FIELD_MANAGER),
        ("DaskWorkerGroup", REPLICAS_FIELD_MANAGER),
    ]
    assert "replicas" not in applies[1].obj["spec"]["worker"]
    assert applies[2].obj["spec"]["worker"]["replicas"] == 3
    # the same once the group exists
    existing = plan_cluster(ClusterObservation(make_cluster(replicas=0), groups=[applies[1].obj]), NOW)
    (main_group,) = (s.obj for s in existing.of_type(Apply) if s.obj["kind"] == "DaskWorkerGroup"
                     and s.field_manager == FIELD_MANAGER)  # fmt: skip
    assert "replicas" not in main_group["spec"]["worker"]
    assert [p["metadata"]["name"] for p in plan.creates] == ["c-scheduler"]
    assert plan.status is not None and plan.status["phase"] == "Created"
    assert plan.status["observedGeneration"] == 2
    assert plan.status["selector"] == (
        "dask.org/cluster-name=c,dask.org/component=worker,dask.org/workergroup-name=c-default"
    )


def test_running_means_scheduler_pod_and_service_exist_ready_is_a_condition() -> None:
    cluster = make_cluster(replicas=0)
    service = desired_scheduler_service(cluster)
    pod = ready_pod(desired_scheduler_pod(cluster))
    group = desired_default_group(cluster)
    group["spec"]["worker"]["replicas"] = 0
    plan = plan_cluster(ClusterObservation(cluster, [pod], service, [group]), NOW)
    assert plan.creates == () and plan.deletes == ()
    assert plan.status is not None and plan.status["phase"] == "Running"
    conds = {c["type"]: c for c in plan.status["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert plan.status["schedulerAddress"] == "tcp://c-scheduler.ns.svc.cluster.local:8786"
    not_ready = copy.deepcopy(pod)
    not_ready["status"]["conditions"][0]["status"] = "False"
    status = plan_cluster(ClusterObservation(cluster, [not_ready], service, [group]), NOW).status
    assert status is not None and status["phase"] == "Running"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "SchedulerNotReady"
    crashing = copy.deepcopy(not_ready)
    crashing["status"]["containerStatuses"] = [
        {"name": "scheduler", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    ]
    status = plan_cluster(ClusterObservation(cluster, [crashing], service, [group]), NOW).status
    assert status is not None and status["phase"] == "Running"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "SchedulerFailing"
    assert conds["Ready"]["status"] == "False"
    # no scheduler pod yet (the Service exists): Pending
    assert plan_cluster(ClusterObservation(cluster, [], service), NOW).status["phase"] == "Pending"  # type: ignore[index]


def test_load_balancer_is_pending_until_it_has_an_ingress() -> None:
    cluster = make_cluster()
    cluster["spec"]["scheduler"]["service"]["type"] = "LoadBalancer"
    service = desired_scheduler_service(cluster)
    pod = ready_pod(desired_scheduler_pod(cluster))
    assert plan_cluster(ClusterObservation(cluster, [pod], service), NOW).status["phase"] == "Pending"  # type: ignore[index]
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    assert plan_cluster(ClusterObservation(cluster, [pod], service), NOW).status["phase"] == "Running"  # type: ignore[index]


def test_changed_scheduler_template_replaces_the_pod_with_an_event() -> None:
    old = make_cluster()
    pod = ready_pod(desired_scheduler_pod(old), uid="old-uid")
    new = make_cluster()
    new["spec"]["scheduler"]["spec"]["containers"][0]["image"] = "dask:2"
    plan = plan_cluster(ClusterObservation(new, [pod], desired_scheduler_service(new)), NOW)
    assert [(d.ref.name, d.ref.uid) for d in plan.deletes] == [("c-scheduler", "old-uid")]
    assert plan.creates == ()  # the fixed name is free only once the old pod is gone
    assert [e.reason for e in plan.events] == ["SchedulerReplaced"]
    # once the old pod is gone, the new one is created
    plan = plan_cluster(ClusterObservation(new, [], desired_scheduler_service(new)), NOW)
    (created,) = plan.creates
    assert (
        created["metadata"]["labels"][TEMPLATE_HASH_LABEL] != pod["metadata"]["labels"][TEMPLATE_HASH_LABEL]
    )


def test_label_change_does_not_restart_the_scheduler() -> None:
    cluster = make_cluster()
    pod = ready_pod(desired_scheduler_pod(cluster))
    cluster["metadata"]["labels"]["new"] = "label"
    plan = plan_cluster(ClusterObservation(cluster, [pod], desired_scheduler_service(cluster)), NOW)
    assert plan.deletes == () and plan.creates == ()


def test_terminating_scheduler_pod_blocks_recreation_until_gone() -> None:
    cluster = make_cluster()
    pod = ready_pod(desired_scheduler_pod(cluster))
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    plan = plan_cluster(ClusterObservation(cluster, [pod], desired_scheduler_service(cluster)), NOW)
    assert plan.creates == () and plan.deletes == ()


def test_deleted_service_and_default_group_are_planned_again() -> None:
    cluster = make_cluster()
    pod = ready_pod(desired_scheduler_pod(cluster))
    plan = plan_cluster(ClusterObservation(cluster, [pod], None, []), NOW)
    assert {o["kind"] for o in plan.applies} == {"Service", "DaskWorkerGroup"}
    assert plan.status is not None and plan.status["phase"] == "Pending"


@pytest.mark.parametrize("name", ["Upper", "has.dot", "1starts-with-digit", "x" * 54, "ends-"])
def test_invalid_name_gets_error_phase_and_no_children(name: str) -> None:
    plan = plan_cluster(ClusterObservation(make_cluster(name=name)), NOW)
    assert plan.applies == () and plan.creates == ()
    assert plan.status is not None and plan.status["phase"] == "Error"
    assert [e.reason for e in plan.events] == ["InvalidName"]
    # once recorded, the same state emits no further event
    cluster = make_cluster(name=name)
    cluster["status"] = plan.status
    assert plan_cluster(ClusterObservation(cluster), NOW + 60).events == ()


def test_events_only_on_state_changes() -> None:
    cluster = make_cluster(replicas=0)
    service = desired_scheduler_service(cluster)
    pod = ready_pod(desired_scheduler_pod(cluster))
    group = desired_default_group(cluster)
    group["spec"]["worker"]["replicas"] = 0
    first = plan_cluster(ClusterObservation(cluster, [pod], service, [group]), NOW)
    assert [e.reason for e in first.events] == ["ClusterReady"]
    cluster["status"] = first.status
    again = plan_cluster(ClusterObservation(cluster, [pod], service, [group]), NOW + 30)
    assert again.events == ()
    assert again.status == first.status  # lastTransitionTime kept: no write either


def test_group_degraded_condition_surfaces_on_the_cluster() -> None:
    cluster = make_cluster()
    group = desired_default_group(cluster)
    group["status"] = {
        "conditions": [
            {"type": "Degraded", "status": "True", "reason": "WorkerFailing", "message": "exit code 3"},
        ]
    }
    plan = plan_cluster(ClusterObservation(cluster, [], None, [group]), NOW)
    degraded = next(c for c in plan.status["conditions"] if c["type"] == "Degraded")  # type: ignore[index]
    assert degraded["status"] == "True" and degraded["reason"] == "WorkerFailing"
    assert "c-default" in degraded["message"]
    assert any(e.type == "Warning" and e.reason == "WorkerFailing" for e in plan.events)


@pytest.mark.parametrize(
    ("timeout", "idle_since", "reachable", "delete"),
    [
        (0, NOW - 10_000, True, False),  # disabled
        (60, None, True, False),  # busy
        (60, NOW - 10_000, False, False),  # unreachable is never idle
        (60, NOW - 30, True, False),
        (60, NOW - 61, True, True),
    ],
)
def test_idle_timeout(timeout: int, idle_since: float | None, reachable: bool, delete: bool) -> None:
    decision = idle_decision(make_cluster(idleTimeout=timeout), idle_since, reachable, NOW)
    assert decision.delete is delete
    assert (decision.event is not None) is delete
    if timeout and not delete:
        assert decision.requeue_after is not None and decision.requeue_after <= 5


# -- suspend ------------------------------------------------------------------------------------------------


def suspended_cluster(**status: Any) -> dict[str, Any]:
    cluster = make_cluster(suspend=True)
    cluster["status"] = status
    return cluster


def held_observation(cluster: dict[str, Any], **observed: Any) -> ClusterObservation:
    return ClusterObservation(cluster=cluster, hold=hold_of(cluster), **observed)


def test_a_held_cluster_deletes_its_scheduler_pod_and_service_and_keeps_its_group() -> None:
    cluster = suspended_cluster()
    pod = ready_pod(desired_scheduler_pod(cluster), uid="sched-uid")
    service = running(desired_scheduler_service(cluster), uid="svc-uid")
    p = plan_cluster(held_observation(cluster, scheduler_pods=[pod], service=service), NOW)
    assert {(d.ref.kind, d.ref.name, d.ref.uid, d.cause) for d in p.deletes} == {
        ("Pod", "c-scheduler", "sched-uid", Cause.HELD),
        ("Service", "c-scheduler", "svc-uid", Cause.HELD),
    }
    assert not p.creates
    group = next(o for o in p.applies if o["kind"] == "DaskWorkerGroup")
    assert group["metadata"]["name"] == "c-default"  # kept, with its replica count
    assert p.status is not None and p.status["phase"] == PHASE_SUSPENDED
    assert "schedulerAddress" not in p.status
    assert condition(p, "Suspended")["status"] == "True"
    assert condition(p, "Suspended")["reason"] == "Suspended"
    assert condition(p, "Ready")["reason"] == "Suspended"
    assert condition(p, "Progressing")["reason"] == "Suspending"
    assert ("Normal", "Suspended") in [(e.type, e.reason) for e in p.events]


def test_a_held_cluster_with_nothing_left_is_stable_and_quiet() -> None:
    first = plan_cluster(held_observation(suspended_cluster()), NOW)
    assert first.status is not None
    again = plan_cluster(held_observation(suspended_cluster(**first.status)), NOW + 10)
    assert not again.deletes and not again.creates
    assert condition(again, "Progressing")["status"] == "False"
    assert not again.events


def test_terminating_children_of_a_held_cluster_are_not_deleted_twice() -> None:
    cluster = suspended_cluster()
    pod = terminating(ready_pod(desired_scheduler_pod(cluster)))
    p = plan_cluster(held_observation(cluster, scheduler_pods=[pod]), NOW)
    assert not p.deletes
    assert condition(p, "Progressing")["reason"] == "Suspending"


def test_a_held_cluster_with_idle_timeout_never_asks_the_scheduler() -> None:
    cluster = make_cluster(suspend=True, idleTimeout=5)
    p = plan_cluster(held_observation(cluster), NOW)
    assert p.question is None and p.requeue_after is None


def test_resume_recreates_scheduler_and_service_and_says_so() -> None:
    held = plan_cluster(held_observation(suspended_cluster()), NOW)
    assert held.status is not None
    cluster = make_cluster(suspend=False)
    cluster["status"] = held.status
    p = plan_cluster(ClusterObservation(cluster=cluster, hold=hold_of(cluster)), NOW + 5)
    assert created(p, "Pod") is not None
    assert any(o["kind"] == "Service" for o in p.applies)
    assert condition(p, "Suspended")["status"] == "False"
    assert condition(p, "Suspended")["reason"] == "Resumed"
    assert ("Normal", "Resumed") in [(e.type, e.reason) for e in p.events]


def test_a_cluster_never_held_has_no_suspended_condition() -> None:
    p = plan_cluster(ClusterObservation(cluster=make_cluster()), NOW)
    assert p.status is not None
    assert all(c["type"] != "Suspended" for c in p.status["conditions"])


def _conditions(cluster: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    plan = plan_cluster(ClusterObservation(cluster, pods, desired_scheduler_service(cluster)), NOW)
    assert plan.status is not None
    return {c["type"]: c for c in plan.status["conditions"]}, [e.reason for e in plan.events]


@pytest.mark.parametrize(
    ("disruption", "words"),
    [
        (None, "deleted from outside the operator"),
        ("EvictionByEvictionAPI", "evicted (kubectl drain"),
        ("PreemptionByScheduler", "preempted"),
    ],
)
def test_a_scheduler_deleted_from_outside_says_its_state_is_lost_until_a_new_one_is_ready(
    disruption: str | None, words: str
) -> None:
    cluster = make_cluster()
    pod = terminating(ready_pod(desired_scheduler_pod(cluster)))
    if disruption is not None:
        pod["status"]["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": disruption}
        )
    conds, events = _conditions(cluster, [pod])
    degraded = conds["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "SchedulerLost")
    assert words in degraded["message"] and "in-memory state is lost" in degraded["message"]
    assert events == ["SchedulerLost"]  # the Warning, once: the next plans see it in the status
    cluster["status"] = {"conditions": [degraded]}
    # The old pod is gone and the new one is starting: still degraded, no second Event.
    conds, events = _conditions(cluster, [])
    assert conds["Degraded"]["reason"] == "SchedulerLost" and events == []
    # The new scheduler is ready: recovered.
    conds, events = _conditions(cluster, [ready_pod(desired_scheduler_pod(cluster))])
    assert conds["Degraded"]["status"] == "False" and "Recovered" in events


def test_the_operators_own_scheduler_deletions_are_not_a_loss() -> None:
    old = make_cluster()
    new = make_cluster()
    new["spec"]["scheduler"]["spec"]["containers"][0]["image"] = "dask:2"
    replaced = terminating(ready_pod(desired_scheduler_pod(old)))  # old template: the operator's doing
    finished = terminating(ready_pod(desired_scheduler_pod(new)))
    finished["status"]["phase"] = "Succeeded"  # finished first, then deleted by the operator
    for cluster, pod in ((new, replaced), (new, finished)):
        conds, events = _conditions(cluster, [pod])
        assert conds["Degraded"]["reason"] != "SchedulerLost" and "SchedulerLost" not in events
