"""The plane's kube-controller-manager runs its default controller set, so the workload kinds a platform team
uses beside Dask behave as on a real cluster: a StatefulSet's ordered pods and scale-down from the top, a
DaemonSet's pod per node, a CronJob's Job on schedule, a PersistentVolumeClaim bound to a matching volume.

Real API server, process node; every wait has a deadline. The CronJob fires on the next minute boundary, so
the test takes up to ~70 s (the other kinds converge meanwhile).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from support.wait import wait_for

pytestmark = pytest.mark.timeout(240)

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: busybox, command: [sleep, "600"]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: busybox, command: [sleep, "600"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: [echo, tick]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  storageClassName: manual-{ns}
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"""

VOLUME = """
apiVersion: v1
kind: PersistentVolume
metadata: {name: data-{ns}}
spec:
  storageClassName: manual-{ns}
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/{ns}-data}
"""


def _get(kp: Any, ns: str, kind: str, name: str = "") -> Any:
    args = ["get", kind, *([name] if name else []), "-n", ns, "-o", "json"]
    proc = kp.kubectl(*args, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _ready_pods(kp: Any, ns: str, app: str) -> list[str]:
    pods = kp.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout or "{}"
    return sorted(
        p["metadata"]["name"]
        for p in json.loads(pods).get("items", [])
        if "deletionTimestamp" not in p["metadata"]
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    )


def test_statefulsets_daemonsets_cronjobs_and_volume_claims_behave_as_on_a_real_cluster(
    kube_plane: Any, namespace: str
) -> None:
    kp, ns = kube_plane, namespace
    if not kp.has_node:
        pytest.skip("needs the process node (local plane)")
    kp.kubectl("apply", "-f", "-", input=textwrap.dedent(VOLUME.replace("{ns}", ns)))
    try:
        kp.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(MANIFESTS.replace("{ns}", ns)))

        # StatefulSet: stable ordinal names, then a scale-down removes the highest ordinal.
        wait_for(lambda: _ready_pods(kp, ns, "web") == ["web-0", "web-1"], timeout=90, interval=0.5,
                 message="web-0 and web-1 Ready")  # fmt: skip
        kp.kubectl("scale", "-n", ns, "statefulset/web", "--replicas=1")
        wait_for(lambda: _ready_pods(kp, ns, "web") == ["web-0"] and _get(kp, ns, "pod", "web-1") is None,
                 timeout=60, interval=0.5, message="web-1 gone, web-0 kept")  # fmt: skip

        # DaemonSet: one Ready pod on every node.
        nodes = len(json.loads(kp.kubectl("get", "nodes", "-o", "json").stdout)["items"])

        def daemons_ready() -> bool:
            status = (_get(kp, ns, "daemonset", "agent") or {}).get("status", {})
            return status.get("desiredNumberScheduled") == nodes and status.get("numberReady") == nodes

        wait_for(daemons_ready, timeout=60, interval=0.5, message=f"agent Ready on all {nodes} nodes")
        assert len(_ready_pods(kp, ns, "agent")) == nodes

        # PersistentVolumeClaim: bound by the PV controller to the matching volume.
        wait_for(lambda: (_get(kp, ns, "pvc", "data") or {}).get("status", {}).get("phase") == "Bound",
                 timeout=60, interval=0.5, message="claim data Bound")  # fmt: skip
        assert _get(kp, ns, "pvc", "data")["spec"]["volumeName"] == f"data-{ns}"

        # CronJob: a Job on the next minute, run to completion.
        wait_for(lambda: (_get(kp, ns, "cronjob", "tick") or {}).get("status", {}).get("lastSuccessfulTime"),
                 timeout=150, interval=1.0, message="the CronJob's first Job succeeded")  # fmt: skip
        jobs = _get(kp, ns, "jobs")["items"]
        assert any(j["metadata"]["ownerReferences"][0]["name"] == "tick" for j in jobs)
    finally:
        kp.kubectl("delete", "pv", f"data-{ns}", "--wait=false", check=False)
