"""helm for tests: the binary hack/build-helm.sh builds (cached), run with its own config, cache and data
directories so a test never reads or writes the user's Helm state.

Invariant: every call runs the same helm build the README names; a failing call raises with helm's output.
Used by test/integration/test_helm.py, test/integration/test_prometheus.py,
test/integration/test_helm_dask_cluster.py and test/e2e/test_dask_cluster_chart.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "manifests" / "helm" / "dask-operator"
CLUSTER_CHART = REPO / "manifests" / "helm" / "dask-cluster"


def helm_binary() -> Path:
    proc = subprocess.run(
        [str(REPO / "hack" / "build-helm.sh")], capture_output=True, text=True, timeout=3000
    )
    assert proc.returncode == 0, f"hack/build-helm.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


def crd_flags(kp: Any) -> list[str]:
    """`--set crds.install=false` when the Dask CRDs exist outside Helm (applied from manifests/crd by earlier
    tests of a shared plane): the chart then leaves them as they are, as for a cluster whose CRDs are managed
    separately. Nothing when Helm may create or adopt them."""
    out = kp.kubectl("get", "crd", "daskclusters.kubernetes.dask.org", "-o", "json", check=False)
    if out.returncode != 0:
        return []
    labels = json.loads(out.stdout)["metadata"].get("labels") or {}
    return [] if labels.get("app.kubernetes.io/managed-by") == "Helm" else ["--set", "crds.install=false"]
