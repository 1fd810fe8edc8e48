"""`kubectl dask create cluster` and `kubectl dask job submit|list|logs|delete` (api/kubectl_dask_create.py,
api/kubectl_dask_job.py), typed as a user types them, on the local plane with real Dask processes.

A script computes on a fresh cluster of its own and prints its result: the command prints it too and exits 0.
A script in a working directory imports a module beside it, computes on a cluster made by `create cluster`,
then exits 3: the command exits 3, the cluster stays. Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.operator import OperatorProcess, get
from support.user_shell import kubectl
from support.wait import wait_for

pytestmark = pytest.mark.timeout(300)

# The runner finds the scheduler through DASK_SCHEDULER_ADDRESS (set by the operator) and waits for a worker:
# it starts while the cluster's workers may still be starting.
SUM_OF_SQUARES = """
import sys
from dask.distributed import Client

n = int(sys.argv[1])
with Client(timeout=120) as client:
    client.wait_for_workers(1, timeout=120)
    total = client.submit(sum, client.map(lambda x: x * x, range(n))).result(timeout=60)
print("sum of squares below", n, "is", total, flush=True)
"""

HELPER = """
def triple(x):
    return 3 * x
"""

COMPUTES_THEN_FAILS = """
import sys
from dask.distributed import Client
from helpers.maths import triple

with Client(timeout=120) as client:
    client.wait_for_workers(1, timeout=120)
    # the module is the runner's (the working directory); the workers get plain values
    print("tripled", client.submit(sum, [triple(7), triple(7)]).result(timeout=60), flush=True)
print("giving up", file=sys.stderr, flush=True)
sys.exit(3)
"""


def test_a_script_computes_on_a_cluster_of_its_own_and_its_output_and_exit_code_come_back(
    plane: Any, namespace: str, dask_operator: OperatorProcess, user_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "squares.py").write_text(SUM_OF_SQUARES)
    submitted = kubectl(
        user_env, "dask", "job", "submit", "-n", namespace, "--name", "squares", "--workers", "1",
        "--", "python", "squares.py", "10", cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "sum of squares below 10 is 285" in submitted.stdout, submitted.stdout + submitted.stderr
    assert "daskjob.kubernetes.dask.org/squares created" in submitted.stderr

    listed = kubectl(user_env, "dask", "job", "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("squares "))
    assert row[:4] == ["squares", "Successful", "squares", "squares-runner"], listed.stdout
    logs = kubectl(user_env, "dask", "job", "logs", "squares", "-n", namespace)
    assert logs.returncode == 0 and "sum of squares below 10 is 285" in logs.stdout, logs.stderr

    files = get(plane, namespace, "configmap", "squares-files")
    assert files["data"] == {"0000.squares.py": SUM_OF_SQUARES}
    (owner,) = files["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("DaskJob", "squares")
    # the job's own cluster goes once the job is done (the operator deletes it)
    wait_for(lambda: get(plane, namespace, "daskcluster", "squares") is None, timeout=60,
             message="the job's own DaskCluster deleted")  # fmt: skip

    deleted = kubectl(user_env, "dask", "job", "delete", "squares", "-n", namespace)
    assert deleted.returncode == 0 and deleted.stdout.strip() == "daskjob.kubernetes.dask.org/squares deleted"
    wait_for(lambda: get(plane, namespace, "configmap", "squares-files") is None, timeout=60,
             message="the job's ConfigMap garbage-collected with it")  # fmt: skip
    missing = kubectl(user_env, "dask", "job", "logs", "squares", "-n", namespace)
    assert missing.returncode == 1 and 'daskjob "squares" not found' in missing.stderr


def test_a_failing_script_on_a_created_cluster_exits_with_the_runners_code(
    plane: Any, namespace: str, dask_operator: OperatorProcess, user_env: dict[str, str], tmp_path: Path
) -> None:
    created = kubectl(user_env, "dask", "create", "cluster", "shared", "--workers", "1", "--wait",
                      "--timeout", "120", "-n", namespace, timeout=150)  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [
        "daskcluster.kubernetes.dask.org/shared created",
        "daskcluster.kubernetes.dask.org/shared running",
    ]
    again = kubectl(user_env, "dask", "create", "cluster", "shared", "-n", namespace)
    assert again.returncode == 1 and "already exists" in again.stderr

    project = tmp_path / "project"
    (project / "helpers").mkdir(parents=True)
    (project / "helpers" / "__init__.py").write_text("")
    (project / "helpers" / "maths.py").write_text(HELPER)
    (project / "main.py").write_text(COMPUTES_THEN_FAILS)
    submitted = kubectl(
        user_env, "dask", "job", "submit", "--cluster", "shared", "--working-dir", str(project),
        "--name", "fails", "-n", namespace, "--", "python", "main.py", timeout=240,
    )  # fmt: skip
    assert submitted.returncode == 3, submitted.stdout + submitted.stderr
    assert "tripled 42" in submitted.stdout and "giving up" in submitted.stdout, submitted.stdout
    job = get(plane, namespace, "daskjob", "fails")
    assert job["spec"]["clusterRef"] == {"name": "shared"}
    wait_for(lambda: (get(plane, namespace, "daskjob", "fails") or {}).get("status", {}).get("jobStatus")
             == "Failed", timeout=60, message="the DaskJob Failed")  # fmt: skip
    cluster = get(plane, namespace, "daskcluster", "shared")
    assert cluster is not None and cluster["status"]["phase"] == "Running"

    nowhere = kubectl(user_env, "dask", "job", "submit", "--cluster", "nosuch", "-n", namespace,
                      "--", "python", "main.py", cwd=project)  # fmt: skip
    assert nowhere.returncode == 1 and 'daskcluster "nosuch" not found' in nowhere.stderr
