"""`kubectl dask create cluster` (api/kubectl_dask_create.py) without an API server: `--resources` parsing and
the DaskCluster written; created for real in test/e2e/test_kubectl_dask_job.py."""

from __future__ import annotations

import argparse

import pytest

from dask_operator.api import kubectl_dask as plugin
from dask_operator.api.kubecluster.options import ClusterOptions, cluster_manifest
from dask_operator.api.kubectl_dask_create import new_cluster, parse_resources


def test_resources_as_pairs_mean_requests_and_limits() -> None:
    assert parse_resources("cpu=1, memory=2Gi") == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }


def test_resources_as_a_mapping_are_taken_as_they_are() -> None:
    text = '{"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}'
    assert parse_resources(text) == {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}


@pytest.mark.parametrize("text", ["cpu", "=1", "", '{"cpus": {"a": 1}}', '{"requests": 3}', "{bad"])
def test_bad_resources_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_resources(text)


def test_the_cluster_is_the_one_kubecluster_writes() -> None:
    resources = {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}
    made = new_cluster("demo", "ns", 3, "example/dask:1", resources)
    options = ClusterOptions(name="demo", image="example/dask:1", n_workers=3, resources=resources)
    assert made == cluster_manifest(options, "ns")
    assert made["spec"]["worker"]["replicas"] == 3
    assert made["spec"]["worker"]["spec"]["containers"][0]["args"][:2] == ["dask", "worker"]


def test_create_cluster_parses_and_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = plugin.parser().parse_args(
        ["create", "cluster", "demo", "--workers", "2", "--resources", "cpu=1", "-n", "ns"]
    )
    assert (args.name, args.workers, args.namespace) == ("demo", 2, "ns")
    assert args.resources["limits"] == {"cpu": "1"}
    for bad in (["create", "cluster", "Bad_Name"], ["create", "cluster", "x", "--workers", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            plugin.parser().parse_args(bad)
        assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
