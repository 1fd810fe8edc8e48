"""What `kubectl dask` prints and how it parses (api/kubectl_dask.py), without an API server; the commands
themselves run through kubectl in test/e2e/test_kubectl_dask.py."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from dask_operator.api import kubectl_dask as plugin

NOW = datetime.datetime(2026, 1, 2, 12, 0, 0, tzinfo=datetime.UTC)


def cluster(
    name: str, namespace: str = "ns", phase: str | None = "Running", ready: str = "True"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-01-02T11:00:00Z"},
        "spec": {"worker": {"replicas": 3}},
        "status": {
            "phase": phase,
            "readyReplicas": 2,
            "conditions": [
                {"type": "Ready", "status": ready, "reason": "Scaling", "message": "2 of 3 ready"}
            ],
        },
    }


def test_age_is_kubectls_short_form() -> None:
    assert plugin.age("2026-01-02T11:59:15Z", NOW) == "45s"
    assert plugin.age("2026-01-02T11:00:00Z", NOW) == "1h"
    assert plugin.age("2025-12-30T12:00:00Z", NOW) == "3d"
    assert plugin.age(None, NOW) == "<unknown>"


def test_list_table_has_phase_readiness_and_workers() -> None:
    text = plugin.cluster_rows([cluster("b"), cluster("a", phase=None, ready="False")], NOW, False)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "READY", "WORKERS", "AGE"]
    assert lines[1].split() == ["a", "<none>", "False", "2/3", "1h"]
    assert lines[2].split() == ["b", "Running", "True", "2/3", "1h"]
    everywhere = plugin.cluster_rows([cluster("a", namespace="other")], NOW, True).splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE" and everywhere[1].split()[:2] == ["other", "a"]


def test_description_lists_conditions_groups_and_workers_from_the_scheduler() -> None:
    group = {
        "metadata": {"name": "a-default"},
        "spec": {"worker": {"replicas": 3}},
        "status": {"readyReplicas": 2},
    }
    identity = {
        "workers": {
            "tcp://10.0.0.1:1": {
                "name": "a-default-worker-1",
                "nthreads": 2,
                "memory_limit": 2**30,
                "metrics": {"memory": 100 * 2**20, "in_memory": 7, "executing": 1, "ready": 4},
            }
        }
    }
    text = plugin.description(cluster("a"), [group], identity, "")
    assert "Ready=True (Scaling): 2 of 3 ready" in text
    assert "a-default: 2/3 ready" in text
    row = next(line for line in text.splitlines() if "a-default-worker-1" in line).split()
    assert row == ["a-default-worker-1", "2", "100.00", "MiB", "1.00", "GiB", "7", "1", "4"]
    unreachable = plugin.description(cluster("a"), [], None, "connection refused")
    assert "(scheduler not reachable: connection refused)" in unreachable
    assert "(no workers connected)" in plugin.description(cluster("a"), [], {"workers": {}}, "")


def test_flags_go_before_or_after_the_command_and_bad_counts_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = plugin.parser().parse_args(["scale", "demo", "3", "-n", "ns"])
    assert (args.name, args.replicas, args.namespace) == ("demo", 3, "ns")
    args = plugin.parser().parse_args(["-n", "ns", "logs", "demo", "--worker", "w1"])
    assert (args.namespace, args.worker) == ("ns", "w1")
    for bad in (["scale", "demo", "-1"], ["scale", "demo", "three"], ["nosuch"]):
        with pytest.raises(SystemExit) as exited:
            plugin.parser().parse_args(bad)
        assert exited.value.code == 2
    assert "is not a whole number" in capsys.readouterr().err


def test_description_reads_a_hostile_identity_as_data() -> None:
    """The identity comes from the tenant's scheduler: fields of the wrong type read as absent, never raise."""
    identity = {
        "workers": {
            "tcp://10.0.0.1:1": {
                "name": "x" * 10_000,
                "nthreads": "9" * 5000,
                "memory_limit": {"__Pickled__": "gASV"},
                "metrics": ["not", "a", "mapping"],
            },
            "tcp://10.0.0.1:2": "not a worker",
        }
    }
    text = plugin.description(cluster("a"), [], identity, "")
    row = next(line for line in text.splitlines() if line.strip().startswith("x")).split()
    assert row == ["x" * 253, "0", "0", "B", "none", "0", "0", "0"]
    assert "(no workers connected)" in plugin.description(cluster("a"), [], {"workers": [1, 2]}, "")


def test_a_busy_schedulers_workers_are_described_from_the_api_list() -> None:
    """Dask's identity route answers 500 on a busy cluster; the API's list names the workers, and what it
    does not say shows as unknown, not as zero."""
    listing = {"workers": [{"name": "w-1", "address": "tcp://10.0.0.1:1"}, {"name": "no address"}, 7]}
    text = plugin.description(cluster("a"), [], plugin.identity_of_listing(listing), "")
    row = next(line for line in text.splitlines() if line.strip().startswith("w-1")).split()
    assert row == ["w-1", "-", "-", "-", "-", "-", "-"]
    with pytest.raises(plugin.SchedulerHTTPError):
        plugin.identity_of_listing({"workers": "nope"})
