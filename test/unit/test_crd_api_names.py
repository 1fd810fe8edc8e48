"""Kinds, label keys, child names and the DaskCluster name rule."""

from __future__ import annotations

import re

import pytest

from dask_operator.api import v1
from dask_operator.api.v1 import names


def test_kinds_match_the_reference_operator() -> None:
    table = {k.kind: (k.plural, k.singular, k.short_names) for k in v1.ALL_KINDS}
    assert table == {
        "DaskCluster": ("daskclusters", "daskcluster", ("daskcluster", "dsk")),
        "DaskWorkerGroup": ("daskworkergroups", "daskworkergroup", ("daskworkers",)),
        "DaskJob": ("daskjobs", "daskjob", ("djb",)),
        "DaskAutoscaler": ("daskautoscalers", "daskautoscaler", ()),
    }
    assert all(k.categories == ("dask",) for k in v1.ALL_KINDS)
    assert v1.DASK_CLUSTER.crd_name == "daskclusters.kubernetes.dask.org"
    assert v1.DASK_JOB.list_kind == "DaskJobList"
    assert v1.API_VERSION == "kubernetes.dask.org/v1"


def test_label_and_annotation_keys_are_the_reference_strings() -> None:
    assert v1.LABEL_CLUSTER_NAME == "dask.org/cluster-name"
    assert v1.LABEL_COMPONENT == "dask.org/component"
    assert v1.LABEL_WORKER_GROUP_NAME == "dask.org/workergroup-name"
    assert v1.LABEL_ISTIO_SIDECAR_INJECT == "sidecar.istio.io/inject"
    assert v1.ISTIO_SIDECAR_INJECT_VALUE == "false"
    assert v1.ANNOTATION_COOLDOWN_UNTIL == "kubernetes.dask.org/cooldown-until"
    assert (
        v1.COMPONENT_SCHEDULER,
        v1.COMPONENT_WORKER,
        v1.COMPONENT_WORKER_GROUP,
        v1.COMPONENT_JOB_RUNNER,
    ) == (
        "scheduler",
        "worker",
        "workergroup",
        "job-runner",
    )
    assert v1.UNPROPAGATED_ANNOTATION_PREFIXES == ("kopf.zalando.org", "kubectl.kubernetes.io")


def test_child_names() -> None:
    assert v1.scheduler_service_name("simple") == "simple-scheduler"
    assert v1.scheduler_name("simple") == "simple-scheduler"
    assert v1.SCHEDULER_NAME_TEMPLATE.format(cluster_name="simple") == "simple-scheduler"
    assert v1.default_worker_group_name("simple") == "simple-default"
    assert v1.worker_group_name("simple", "highmem") == "simple-highmem"
    assert v1.worker_pod_name("simple-default", "0a1b2c3d4e") == "simple-default-worker-0a1b2c3d4e"
    assert v1.job_cluster_name("simple-job") == "simple-job"
    assert v1.job_runner_pod_name("simple-job") == "simple-job-runner"
    assert v1.scheduler_address("simple", "ns") == "tcp://simple-scheduler.ns.svc.cluster.local:8786"
    assert (
        v1.scheduler_address("simple", "ns", port=9000, cluster_domain="example.org")
        == "tcp://simple-scheduler.ns.svc.example.org:9000"
    )
    assert v1.dashboard_address("simple", "ns") == "http://simple-scheduler.ns.svc.cluster.local:8787"


def test_selectors() -> None:
    labels = v1.worker_selector_labels("c", "c-default")
    assert v1.label_selector_string(labels) == (
        "dask.org/cluster-name=c,dask.org/component=worker,dask.org/workergroup-name=c-default"
    )
    assert v1.scheduler_selector_labels("c") == {
        "dask.org/cluster-name": "c",
        "dask.org/component": "scheduler",
    }


@pytest.mark.parametrize(
    "name",
    ["simple", "a", "a1", "simple-cluster", "x" * 53, "a-b-c-1"],
)
def test_valid_cluster_names(name: str) -> None:
    assert v1.is_valid_cluster_name(name)
    v1.validate_cluster_name(name)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("x" * 54, "at most 53"),
        ("Simple", "lowercase"),
        ("simple.cluster", "lowercase"),
        ("1simple", "start with a letter"),
        ("simple-", "end with a letter or digit"),
        ("-simple", "start with a letter"),
        ("", "start with a letter"),
        ("simple_cluster", "lowercase"),
    ],
)
def test_invalid_cluster_names(name: str, fragment: str) -> None:
    assert not v1.is_valid_cluster_name(name)
    with pytest.raises(v1.ValidationError) as raised:
        v1.validate_cluster_name(name)
    assert fragment in raised.value.message
    assert isinstance(raised.value, ValueError)


def test_the_53_character_rule_leaves_room_for_the_scheduler_suffix() -> None:
    longest = "x" * v1.MAX_CLUSTER_NAME_LENGTH
    assert len(v1.scheduler_service_name(longest)) == v1.MAX_RESOURCE_NAME_LENGTH == 63
    assert len(v1.default_worker_group_name(longest)) <= v1.MAX_WORKER_GROUP_NAME_LENGTH


def test_python_rule_is_the_crd_rule() -> None:
    # The CRD's CEL rules embed the same pattern and length; RE2 and Python agree on this expression.
    pattern = re.compile(names.DNS1035_LABEL_PATTERN)
    for name in ["simple", "1simple", "a.b", "ok-1", "A", "x" * 53, "x" * 54]:
        expected = bool(pattern.match(name)) and len(name) <= 53
        assert v1.is_valid_cluster_name(name) == expected
