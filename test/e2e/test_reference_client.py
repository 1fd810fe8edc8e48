"""The reference's own Python client, `dask_kubernetes.operator.KubeCluster` (dask-kubernetes from PyPI, in a
cached virtualenv outside the repo, never a dependency of ours), against our operator on the local plane;
and the time from `KubeCluster(...)` to a usable client, ours and the reference's, in the same run.

The reference runs in its own interpreter (a script below); it reaches the scheduler through its own
port-forward. Its default commands (`dask-scheduler`, `dask-worker`) no longer exist in the distributed the
process node runs, so the script passes the `dask scheduler` / `dask worker` spellings through its own spec
builder; nothing else is changed.
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.operator import OperatorProcess
from support.reference_operator import reference_venv, reference_versions

from dask_operator import KubeCluster
from dask_operator.controller.kinds import DASK_CLUSTER_KIND
from dask_operator.runtime.client import Client as RestClient

pytestmark = pytest.mark.timeout(600)


REFERENCE_SCRIPT = r"""
import json, operator, sys, time
from dask_kubernetes.operator import KubeCluster, make_cluster_spec
from dask_kubernetes.exceptions import SchedulerStartupError
from distributed import Client

namespace, scenario = sys.argv[1], sys.argv[2]

def spec(name, scheduler_args=None):
    built = make_cluster_spec(name=name, n_workers=1, worker_command="dask worker")
    scheduler = built["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["args"] = scheduler_args or ["dask", "scheduler"] + [a for a in scheduler["args"] if a != "dask-scheduler"]
    return built

def report(**fields):
    print(json.dumps(fields), flush=True)

if scenario == "lifecycle":
    started = time.monotonic()
    cluster = KubeCluster(custom_cluster_spec=spec("refclient"), namespace=namespace, resource_timeout=1,
                          port_forward_cluster_ip=True, quiet=True)
    client = Client(cluster, timeout=60)
    report(usable_after=time.monotonic() - started, address=cluster.scheduler_address,
           computed=client.submit(operator.add, 1, 2).result(timeout=60))
    cluster.scale(2)
    client.wait_for_workers(2, timeout=120)
    squares = client.map(operator.mul, range(20), range(20))
    report(scaled=len(client.scheduler_info()["workers"]), total=client.submit(sum, squares).result(timeout=60))
    cluster.adapt(minimum=1, maximum=2)
    report(adapted=True)
    client.close()
    cluster.close()
    report(closed=True)
elif scenario == "crashloop":
    crash = ["python", "-c", "import sys; print('reference-boom', flush=True); sys.exit(3)"]
    try:
        KubeCluster(custom_cluster_spec=spec("refcrash", crash), namespace=namespace, resource_timeout=20,
                    quiet=True)
    except SchedulerStartupError as error:
        report(raised="SchedulerStartupError", message=str(error))
    except Exception as error:
        report(raised=type(error).__name__, message=str(error))
    else:
        report(raised=None)
"""


@pytest.fixture(scope="module")
def reference() -> Path:
    return reference_venv()


def run_reference(venv: Path, plane: Any, namespace: str, scenario: str) -> list[dict[str, Any]]:
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", REFERENCE_SCRIPT, namespace, scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (
        f"{reference_versions(venv)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return lines


def test_reference_client_computes_scales_adapts_and_closes_and_time_to_client(
    plane: Any, namespace: str, dask_operator: OperatorProcess, reference: Path
) -> None:
    from distributed import Client

    api = RestClient.from_kubeconfig(str(plane.kubeconfig))
    started = time.monotonic()
    with (
        KubeCluster(
            name="ours",
            namespace=namespace,
            n_workers=1,
            port_forward_cluster_ip=True,
            kube_client=api,
            quiet=True,
        ) as cluster,
        Client(cluster, timeout=60) as client,
    ):
        assert client.submit(operator.add, 1, 2).result(timeout=60) == 3
        ours = time.monotonic() - started

    steps = run_reference(reference, plane, namespace, "lifecycle")
    first, scaled, adapted, closed = steps
    assert first["computed"] == 3 and first["address"].startswith("tcp://localhost:")
    assert scaled == {"scaled": 2, "total": 2470}
    assert adapted == {"adapted": True} and closed == {"closed": True}
    assert api.get(DASK_CLUSTER_KIND, namespace, "refclient") is None
    print(
        f"\nKubeCluster(...) to a usable client (port-forward, 1 worker): ours {ours:.1f} s, "
        f"reference ({reference_versions(reference)}) {first['usable_after']:.1f} s"
    )


def test_reference_client_reports_a_crash_looping_scheduler(
    plane: Any, namespace: str, dask_operator: OperatorProcess, reference: Path
) -> None:
    (outcome,) = run_reference(reference, plane, namespace, "crashloop")
    assert outcome["raised"] == "SchedulerStartupError", outcome
    assert "reference-boom" in outcome["message"]
