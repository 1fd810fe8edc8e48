"""KubeCluster without an API server: argument validation (before any API call), option mapping, the
manifests it writes and how it reads status. The I/O half is tested in test/e2e/test_kubecluster.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dask.config
import pytest

import dask_operator
from dask_operator.api.kubecluster import options as opts
from dask_operator.api.kubecluster.cluster import Autoscaling, KubeCluster
from dask_operator.api.pods import pod_failure
from dask_operator.api.v1 import ValidationError, make_cluster_spec, make_scheduler_spec


class NoApi:
    """A kube client that fails the test on any use: validation must happen before the first API call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"API call {name} made before validation finished")


def make(**kwargs: Any) -> KubeCluster:
    return KubeCluster(kube_client=NoApi(), namespace="ns", quiet=True, **kwargs)  # type: ignore[arg-type]


# -- validation before any API call --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bad_Name", "1abc", "ends-", "x" * 54, ""])
def test_invalid_names_raise_validation_error_before_any_api_call(name: str) -> None:
    with pytest.raises(ValidationError):
        make(name=name)


@pytest.mark.parametrize(
    ("resources", "error"),
    [
        ({"limit": {"cpu": "1"}}, ValueError),
        ({"requests": {"cpu": "1"}, "cpu": "2"}, ValueError),
        ({"requests": "1"}, TypeError),
        ("1 cpu", TypeError),
    ],
)
def test_malformed_resources_are_rejected_before_any_api_call(resources: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        make(name="ok", resources=resources)


def test_options_that_cannot_be_honoured_fail_early() -> None:
    with pytest.raises(ValueError, match="scheduler_forward_port"):
        make(name="ok", scheduler_forward_port=70000)
    with pytest.raises(ValueError, match="create_mode"):
        make(name="ok", create_mode="sometimes")
    with pytest.raises(ValueError, match="scheduler_service_type"):
        make(name="ok", scheduler_service_type="ExternalName")
    with pytest.raises(ValueError, match="n_workers"):
        make(name="ok", n_workers=-1)


def test_custom_spec_must_be_a_named_daskcluster() -> None:
    with pytest.raises(ValueError, match="DaskCluster"):
        opts.load_custom_spec({"kind": "Pod", "metadata": {"name": "x"}})
    with pytest.raises(ValueError, match=r"metadata\.name"):
        opts.load_custom_spec({"kind": "DaskCluster", "metadata": {}})
    with pytest.raises(ValidationError):
        make(custom_cluster_spec={"kind": "DaskCluster", "metadata": {"name": "Not_Valid"}, "spec": {}})


def test_custom_spec_from_a_yaml_file(tmp_path: Any) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"{__import__('yaml').safe_dump(make_cluster_spec('from-file'))}")
    loaded = opts.load_custom_spec(str(path))
    assert loaded["metadata"]["name"] == "from-file" and loaded["apiVersion"] == "kubernetes.dask.org/v1"


# -- option mapping ------------------------------------------------------------------------------------------


def test_create_mode_accepts_the_enum_and_its_name() -> None:
    assert opts.create_mode_of(opts.CreateMode.CONNECT_ONLY) is opts.CreateMode.CONNECT_ONLY
    assert opts.create_mode_of("create-only") is opts.CreateMode.CREATE_ONLY
    assert opts.create_mode_of("CREATE_OR_CONNECT") is opts.CreateMode.CREATE_OR_CONNECT


def test_default_name_is_formatted_with_a_dns_safe_user_and_uuid() -> None:
    name = opts.default_cluster_name(opts.DEFAULT_NAME_TEMPLATE, user="John.Smith", unique="0123456789")
    assert name == "dask-john-smith-0123456789"
    assert opts.default_cluster_name("x-{user}", user="A B") == "x-a-b"
    assert opts.default_cluster_name("plain") == "plain"
    assert opts.default_cluster_name("bad-{nope}") == "bad-{nope}"  # left for validation to reject
    generated = opts.default_cluster_name(opts.DEFAULT_NAME_TEMPLATE)
    opts.validate_name(generated)


def test_arguments_fall_back_to_the_reference_dask_config_keys() -> None:
    with dask.config.set({"kubernetes.image": "example/dask:1", "kubernetes.count.start": 4}):
        assert opts.config_value("image", None, "default") == "example/dask:1"
        assert opts.config_value("image", "given", "default") == "given"
        assert opts.config_value("count.start", None, 0) == 4
    assert opts.config_value("no-such-key", None, "default") == "default"


def test_cluster_manifest_is_make_cluster_spec_with_commands_that_modern_dask_has() -> None:
    options = opts.ClusterOptions(
        name="demo", n_workers=2, resources={"limits": {"cpu": "1"}}, env={"A": "1"}
    )
    manifest = opts.cluster_manifest(options, "team")
    expected = make_cluster_spec(
        "demo",
        n_workers=2,
        resources={"limits": {"cpu": "1"}},
        env={"A": "1"},
        worker_command="dask worker",
        scheduler_command="dask scheduler",
    )
    expected["metadata"]["namespace"] = "team"
    assert manifest == expected
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    scheduler = manifest["spec"]["scheduler"]["spec"]["containers"][0]
    assert worker["args"] == [
        "dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--dashboard", "--dashboard-address", "8788",
    ]  # fmt: skip
    assert scheduler["args"] == ["dask", "scheduler", "--host", "0.0.0.0"]
    assert worker["env"] == scheduler["env"] == [{"name": "A", "value": "1"}]
    assert manifest["spec"]["worker"]["replicas"] == 2


def test_builders_keep_the_reference_scheduler_command_by_default() -> None:
    args = make_scheduler_spec("c")["spec"]["containers"][0]["args"]
    assert args == ["dask-scheduler", "--host", "0.0.0.0"]
    args = make_scheduler_spec("c", jupyter=True, scheduler_command=["dask", "scheduler"])["spec"][
        "containers"
    ][0]
    assert args["args"] == ["dask", "scheduler", "--host", "0.0.0.0", "--jupyter"]


def test_options_read_back_from_an_existing_cluster() -> None:
    options = opts.ClusterOptions(
        name="demo",
        image="example/dask:2",
        n_workers=5,
        resources={"requests": {"memory": "1Gi"}},
        worker_command="dask worker --nthreads 2",
        scheduler_service_type="NodePort",
        idle_timeout=30,
        jupyter=True,
    )
    found = opts.options_from_cluster(opts.cluster_manifest(options, "ns"))
    assert found.image == "example/dask:2" and found.n_workers == 5
    assert found.resources == {"requests": {"memory": "1Gi"}}
    assert found.worker_command == ["dask", "worker", "--nthreads", "2"]
    assert found.scheduler_command == ["dask", "scheduler"]
    assert found.scheduler_service_type == "NodePort" and found.idle_timeout == 30 and found.jupyter


def test_worker_group_manifest_takes_the_cluster_values_it_is_not_given() -> None:
    options = opts.ClusterOptions(name="demo", image="example/dask:3", n_workers=2, env={"A": "1"})
    group = opts.worker_group_manifest(
        "demo", "ns", "gpu", options, n_workers=0, resources={"limits": {"x": "1"}}
    )
    assert group["metadata"] == {
        "name": "demo-gpu",
        "namespace": "ns",
        "labels": {"dask.org/cluster-name": "demo", "dask.org/component": "worker"},
    }
    assert group["spec"]["cluster"] == "demo"
    worker = group["spec"]["worker"]
    assert worker["replicas"] == 0  # an explicit 0 is honoured (the reference falls back to the cluster's)
    container = worker["spec"]["containers"][0]
    assert container["image"] == "example/dask:3" and container["env"] == [{"name": "A", "value": "1"}]
    assert container["resources"] == {"limits": {"x": "1"}}
    assert container["args"][:2] == ["dask", "worker"]
    defaulted = opts.worker_group_manifest("demo", "ns", "more", options, n_workers=None)
    assert defaulted["spec"]["worker"]["replicas"] == 2
    custom = opts.worker_group_manifest("demo", "ns", "own", options, custom_spec={"replicas": 1, "spec": {}})
    assert custom["spec"]["worker"] == {"replicas": 1, "spec": {}}


@pytest.mark.parametrize("group", ["", "Upper", "under_score", "x" * 60, "trail-"])
def test_invalid_worker_group_names(group: str) -> None:
    with pytest.raises(ValidationError):
        opts.validate_worker_group_name("demo", group)


def test_autoscaler_manifest_labels_and_bounds() -> None:
    manifest = opts.autoscaler_manifest("demo", "ns", 1, 5)
    assert manifest["metadata"]["labels"] == {
        "dask.org/cluster-name": "demo",
        "dask.org/component": "autoscaler",
    }
    assert manifest["spec"] == {"cluster": "demo", "minimum": 1, "maximum": 5}
    assert opts.autoscaler_manifest("demo", "ns", None, 3)["spec"]["minimum"] == 0
    with pytest.raises(ValueError, match="maximum"):
        opts.autoscaler_manifest("demo", "ns", 1, None)
    with pytest.raises(ValueError, match="minimum <= maximum"):
        opts.autoscaler_manifest("demo", "ns", 4, 2)


def test_adapt_chooses_the_group_one_autoscaler_per_group() -> None:
    default = opts.autoscaler_manifest("demo", "ns", 1, 5, "default")
    assert (default["metadata"]["name"], "workerGroup" in default["spec"]) == ("demo", False)
    gpu = opts.autoscaler_manifest("demo", "ns", 0, 3, "gpu")
    assert gpu["metadata"]["name"] == "demo-gpu"
    assert gpu["spec"] == {"cluster": "demo", "minimum": 0, "maximum": 3, "workerGroup": "demo-gpu"}
    with pytest.raises(ValidationError):
        opts.autoscaler_manifest("demo", "ns", 0, 3, "GPU!")


# -- reading status and Services -----------------------------------------------------------------------------


def test_status_summary_and_phase() -> None:
    cluster = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "Ready", "status": "False", "message": "The scheduler pod is not ready."},
                {"type": "Degraded", "status": "True", "message": "exit code 1"},
            ],
        }
    }
    assert opts.status_summary(cluster) == "phase Pending: The scheduler pod is not ready.; exit code 1"
    assert opts.status_summary({}) == "phase unset"
    assert not opts.is_running(cluster) and opts.is_running({"status": {"phase": "Running"}})


@pytest.mark.parametrize(
    ("container", "failing"),
    [
        ({"name": "s", "state": {"running": {}}, "restartCount": 0}, False),
        ({"name": "s", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}, True),
        ({"name": "s", "state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 3}}}, True),
        ({"name": "s", "state": {"running": {}}, "restartCount": 2}, True),
        ({"name": "s", "state": {"waiting": {"reason": "ContainerCreating"}}}, False),
    ],
)
def test_pod_failure(container: dict[str, Any], failing: bool) -> None:
    pod = {"status": {"phase": "Running", "containerStatuses": [container]}}
    assert bool(pod_failure(pod, since_start=True)) is failing


def test_service_ports_and_external_hosts() -> None:
    service = {
        "metadata": {"name": "demo-scheduler"},
        "spec": {"ports": [{"name": "tcp-comm", "port": 8786, "nodePort": 30001}, {"name": "x", "port": 1}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
    }
    assert opts.service_port(service, "tcp-comm")["nodePort"] == 30001
    with pytest.raises(ValueError, match="exactly one"):
        opts.service_port(service, "http-dashboard")
    assert opts.load_balancer_host(service) == "1.2.3.4"
    assert opts.load_balancer_host({}) is None
    nodes = [
        {
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.0.0.1"},
                ]
            }
        }
    ]
    assert opts.node_host(nodes) == "10.0.0.1"


def test_public_api_is_re_exported_lazily() -> None:
    assert dask_operator.KubeCluster is KubeCluster
    assert dask_operator.make_cluster_spec is make_cluster_spec
    assert dask_operator.CreateMode is opts.CreateMode
    assert callable(dask_operator.discover)
    assert {"KubeCluster", "make_worker_spec", "discover"} <= set(dir(dask_operator))
    with pytest.raises(AttributeError):
        _ = dask_operator.NoSuchThing


def test_client_kinds_address_the_same_resources_as_the_operators() -> None:
    from dask_operator.api.kubecluster import kinds as client_kinds
    from dask_operator.controller import kinds as operator_kinds

    for name in ("DASK_CLUSTER_KIND", "DASK_WORKER_GROUP_KIND", "DASK_AUTOSCALER_KIND"):
        assert getattr(client_kinds, name) == getattr(operator_kinds, name)


def test_a_suspended_cluster_is_named_with_how_to_resume_it() -> None:
    cluster = {"metadata": {"name": "c", "namespace": "ns"}, "spec": {"suspend": True}}
    message = opts.suspended_message(cluster)
    assert message is not None
    assert "ns/c is suspended" in message and "kubectl -n ns patch daskcluster c" in message
    assert opts.suspended_message({"metadata": {"name": "c"}, "spec": {"suspend": False}}) is None
    assert opts.suspended_message({"metadata": {"name": "c"}, "spec": {}}) is None


def test_autoscaling_carries_the_bounds_and_awaits_the_write() -> None:
    """What adapt() returns: the bounds dask-labextension reads, awaitable for asynchronous callers."""

    async def awaited() -> tuple[Autoscaling, list[str]]:
        done: list[str] = []

        async def write() -> None:
            done.append("applied")

        handle = Autoscaling(1, 3, asyncio.ensure_future(write()))
        return await handle, done

    handle, done = asyncio.run(awaited())
    assert (handle.minimum, handle.maximum, done) == (1, 3, ["applied"])
    assert repr(Autoscaling(0, 2, None)) == "Autoscaling(minimum=0, maximum=2)"
