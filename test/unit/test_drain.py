"""The drain hook and grace period every worker pod gets, the group's PodDisruptionBudget, and the hook itself
run against a real Dask scheduler (in this process) with workers named as the operator names them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from dask_operator.controller.contract.drain import (
    DEFAULT_WORKER_GRACE_SECONDS,
    PRESTOP_HOOK,
    desired_disruption_budget,
    hook_budget,
    with_drain_hook,
)


def pod_spec(**extra: Any) -> dict[str, Any]:
    return {
        "containers": [
            {"name": "sidecar", "image": "x"},
            {"name": "worker", "image": "dask", "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"]},
        ],
        **extra,
    }


def prestop_of(spec: dict[str, Any], index: int = 1) -> dict[str, Any] | None:
    return (spec["containers"][index].get("lifecycle") or {}).get("preStop")


def test_the_worker_container_gets_the_hook_and_the_pod_the_default_grace() -> None:
    spec = with_drain_hook(pod_spec(), DEFAULT_WORKER_GRACE_SECONDS)
    assert spec["terminationGracePeriodSeconds"] == 60
    hook = prestop_of(spec)
    assert hook is not None
    command = hook["exec"]["command"]
    assert command[:2] == ["python", "-c"] and command[2] == PRESTOP_HOOK
    assert command[3] == "55"  # the grace period minus the worker's margin to close
    assert prestop_of(spec, 0) is None  # only the worker container
    assert "dask_operator" not in PRESTOP_HOOK  # the Dask image has distributed, not the operator


def test_the_users_grace_period_and_hook_are_kept() -> None:
    spec = with_drain_hook(pod_spec(terminationGracePeriodSeconds=300), 60)
    assert spec["terminationGracePeriodSeconds"] == 300
    assert prestop_of(spec)["exec"]["command"][3] == "295"  # type: ignore[index]
    own = pod_spec()
    own["containers"][1]["lifecycle"] = {"preStop": {"sleep": {"seconds": 5}}, "postStart": {"exec": {}}}
    assert with_drain_hook(own, 60) == own


def test_no_hook_when_there_is_no_time_for_it_and_the_first_container_without_a_worker() -> None:
    assert with_drain_hook(pod_spec(terminationGracePeriodSeconds=0), 60) == pod_spec(
        terminationGracePeriodSeconds=0
    )
    assert with_drain_hook(pod_spec(), 0) == pod_spec()
    unnamed = with_drain_hook({"containers": [{"name": "main"}, {"name": "other"}]}, 60)
    assert prestop_of(unnamed, 0) is not None and prestop_of(unnamed, 1) is None
    assert hook_budget(3) == 1.0


def make_group(budget: Any = None) -> dict[str, Any]:
    worker: dict[str, Any] = {"replicas": 4, "spec": pod_spec()}
    if budget is not None:
        worker["disruptionBudget"] = {"maxUnavailable": budget}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": "c-default", "namespace": "ns", "uid": "group-uid"},
        "spec": {"cluster": "c", "worker": worker},
    }


def test_disruption_budget_only_when_asked_selecting_the_groups_workers() -> None:
    assert desired_disruption_budget(make_group()) is None
    pdb = desired_disruption_budget(make_group("25%"))
    assert pdb is not None
    assert (pdb["apiVersion"], pdb["kind"], pdb["metadata"]["name"]) == (
        "policy/v1",
        "PodDisruptionBudget",
        "c-default",
    )
    assert pdb["spec"] == {
        "maxUnavailable": "25%",
        "selector": {
            "matchLabels": {
                "dask.org/cluster-name": "c",
                "dask.org/component": "worker",
                "dask.org/workergroup-name": "c-default",
            }
        },
    }
    (owner,) = pdb["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("DaskWorkerGroup", "group-uid", True)


# -- the hook against a real scheduler ------------------------------------------------------------------------


async def _run_hook(
    name: str, address: str, budget: str = "30", extra_env: dict[str, str] | None = None, *flags: str
) -> tuple[int, str]:
    env = {**os.environ, "DASK_WORKER_NAME": name, "DASK_SCHEDULER_ADDRESS": address, **(extra_env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *flags, "-c", PRESTOP_HOOK, budget, env=env, stdout=-1, stderr=-1
    )
    out, err = await proc.communicate()
    return int(proc.returncode or 0), (out + err).decode()


@pytest.mark.timeout(120)
def test_the_hook_retires_exactly_its_pods_workers_and_their_data_moves() -> None:
    from distributed import Client, Scheduler, Worker

    async def scenario() -> None:
        async with Scheduler(port=0, dashboard_address=":0") as s:  # noqa: SIM117 (workers need s.address)
            async with (
                Worker(s.address, name="g-worker-aaaaaaaaaa-0") as a0,
                Worker(s.address, name="g-worker-aaaaaaaaaa-1") as a1,
                Worker(s.address, name="g-worker-aaaaaaaaaa0"),  # another pod, a name prefix of ours
                Worker(s.address, name="g-worker-bbbbbbbbbb"),
                Client(s.address, asynchronous=True) as client,
            ):
                held = [client.submit(list, range(i), workers=[a0.address], pure=False) for i in range(20)]
                held += await client.scatter([f"s{i}" for i in range(5)], workers=[a1.address])
                await client.gather(held)
                code, out = await _run_hook("g-worker-aaaaaaaaaa", s.address)
                assert code == 0, out
                # Retired, not removed: our two workers stay connected, closing gracefully, until the kubelet's
                # SIGTERM (a worker removed closes itself, and its container may end before the hook returns).
                status = {str(w.name): w.status.name for w in s.workers.values()}
                assert status == {
                    "g-worker-aaaaaaaaaa-0": "closing_gracefully",
                    "g-worker-aaaaaaaaaa-1": "closing_gracefully",
                    "g-worker-aaaaaaaaaa0": "running",
                    "g-worker-bbbbbbbbbb": "running",
                }
                # SIGTERM: the retired workers close; every key lives on, nothing recomputed.
                await a0.close()
                await a1.close()
                assert sorted(str(w.name) for w in s.workers.values()) == [
                    "g-worker-aaaaaaaaaa0",
                    "g-worker-bbbbbbbbbb",
                ]
                assert all(ts.state == "memory" and ts.who_has for ts in s.tasks.values())
                assert await client.gather(held) == [list(range(i)) for i in range(20)] + [
                    f"s{i}" for i in range(5)
                ]
                assert (
                    sum(1 for e in s.transition_log if e[1] == "processing" and e[2] == "memory") == 20
                )  # nothing recomputed
                # The operator retired them first (a scale-down): the hook has nothing to do.
                code, out = await _run_hook("g-worker-aaaaaaaaaa", s.address)
                assert code == 0 and "nothing to retire" in out, out

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_the_hook_never_blocks_past_its_budget_and_returns_at_once_without_a_scheduler() -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # accepts connections, never answers: the worst case
        code, out = asyncio.run(_run_hook("w", f"tcp://127.0.0.1:{s.getsockname()[1]}", budget="3"))
    assert code == 1 and "took longer than 3 s" in out, out
    # Nobody listening at all: nothing to hand over to, the hook returns at once.
    code, out = asyncio.run(_run_hook("w", f"tcp://127.0.0.1:{free}", budget="30"))
    assert code == 0 and "cannot reach the scheduler" in out, out


@pytest.mark.timeout(120)
def test_the_hook_speaks_tls_to_a_tls_scheduler_with_the_workers_credentials(tmp_path: Path) -> None:
    """Regression: the hook opened a plain comm to a `tls://` scheduler and could never retire anything."""
    from distributed import Scheduler, Worker
    from distributed.security import Security

    security = Security.temporary()  # type: ignore[no-untyped-call]
    files = {}  # Security.temporary() holds the PEM texts themselves; a worker's configuration names files
    for key in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        files[key] = tmp_path / f"{key}.pem"
        files[key].write_text(getattr(security, key))
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(files["tls_ca_file"]),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(files["tls_client_cert"]),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(files["tls_client_key"]),
    }

    async def scenario() -> None:
        async with (
            Scheduler(protocol="tls", port=0, dashboard_address=":0", security=security) as s,
            Worker(s.address, name="tls-worker", security=security),
        ):
            assert s.address.startswith("tls://")
            code, out = await _run_hook("tls-worker", s.address, "30", env)
            assert code == 0 and "retired" in out, out
            assert [w.status.name for w in s.workers.values()] == ["closing_gracefully"]

    asyncio.run(scenario())


def test_an_image_without_distributed_gets_a_sentence_not_a_traceback() -> None:
    # -S: no site-packages, as in an image whose Python lacks distributed.
    code, out = asyncio.run(_run_hook("w", "tcp://127.0.0.1:1", "5", None, "-S"))
    assert code == 1 and "has no usable distributed" in out and "Traceback" not in out, out
