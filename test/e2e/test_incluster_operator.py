"""The operator installed the way the README says (`kubectl apply --server-side -k manifests/`) runs as two
pods on a fresh local plane, under its ServiceAccount and RBAC, as uid 1000 with no capabilities; the
README's quickstart DaskCluster converges through them; deleting the leader pod hands over to the other
replica, which then acts on a scale.

A plane of its own: an `--all-namespaces` operator must not meet the per-test operators of the session
plane. Real API server, real processes; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.fixtures import KubePlane, _bin_dir
from support.operator import REPO
from support.wait import wait_for

JSON = dict[str, Any]
OPERATOR_NS = "dask-operator"


@pytest.fixture(scope="module")
def fresh_plane() -> Iterator[KubePlane]:
    if os.environ.get("K8S_TEST_BACKEND", "local") != "local":
        pytest.skip("needs a fresh local plane with a process node")
    from kubeplane.plane import Plane, UpOptions

    opts = UpOptions(name=f"pytest-{os.getpid()}-incluster", bin_dir=_bin_dir(), force=True)
    plane = Plane.up(opts)
    with tempfile.TemporaryDirectory(prefix="kube-plane-incluster-") as tmp:
        kp = KubePlane("local", plane.kubeconfig, Path(tmp), plane)
        try:
            yield kp
        finally:
            kp.close()
            plane.down()


def quickstart_manifest() -> JSON:
    """The README's `cluster.yaml`, exactly as a user copies it."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n# cluster.yaml\n(.*?)```", text, re.DOTALL)
    assert block, "README quickstart cluster.yaml block not found"
    return dict(yaml.safe_load(block.group(1)))


def get(kp: KubePlane, *args: str) -> Any:
    out = kp.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def operator_pods(kp: KubePlane) -> list[JSON]:
    items = (get(kp, "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=dask-operator") or {})["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: JSON) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def leader(kp: KubePlane) -> str | None:
    lease = get(kp, "lease", "dask-operator", "-n", OPERATOR_NS)
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
    return holder.split("_", 1)[0] or None


def uid_of(pod: JSON) -> int:
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_operator_from_manifests_runs_in_cluster_converges_and_fails_over(fresh_plane: KubePlane) -> None:
    kp = fresh_plane
    t0 = time.monotonic()
    kp.kubectl("apply", "--server-side", "-k", str(REPO / "manifests"), timeout=120)

    def two_ready() -> list[JSON] | None:
        pods = operator_pods(kp)
        return pods if len(pods) == 2 and all(ready(p) for p in pods) else None

    pods = wait_for(two_ready, timeout=120, interval=0.5, message="2 ready operator pods")
    print(f"operator pods Ready {time.monotonic() - t0:.1f} s after apply")
    for p in pods:
        assert p["spec"]["serviceAccountName"] == "dask-operator"
        assert uid_of(p) == 1000  # the Deployment's runAsUser, applied by the process node
    first = wait_for(lambda: leader(kp), timeout=60, interval=0.5, message="a leader holds the Lease")
    assert first in {p["metadata"]["name"] for p in pods}

    ns = "quickstart"
    kp.kubectl("create", "namespace", ns)
    kp.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(quickstart_manifest()))
    t1 = time.monotonic()
    kp.kubectl("wait", "-n", ns, "--for=jsonpath={.status.phase}=Running", "daskcluster/simple", "--timeout=120s",
               timeout=150)  # fmt: skip
    print(f"quickstart DaskCluster Running {time.monotonic() - t1:.1f} s after apply")

    kp.kubectl("delete", "pod", "-n", OPERATOR_NS, first, "--wait=false")
    other = next(p["metadata"]["name"] for p in pods if p["metadata"]["name"] != first)
    t2 = time.monotonic()
    wait_for(lambda: leader(kp) == other, timeout=90, interval=0.5, message=f"{other} takes the Lease")
    print(f"leader handed over {time.monotonic() - t2:.1f} s after deleting {first}")

    kp.kubectl("scale", "-n", ns, "daskcluster", "simple", "--replicas=3")

    def three_workers() -> bool:
        items = (get(kp, "pods", "-n", ns, "-l", "dask.org/component=worker") or {}).get("items", [])
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return len(live) == 3 and all(ready(p) for p in live)

    wait_for(three_workers, timeout=120, interval=0.5, message="the new leader scales the workers to 3")
    with contextlib.suppress(AssertionError):
        kp.kubectl("delete", "namespace", ns, "--wait=false")
