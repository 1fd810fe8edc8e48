"""Pod volumes on the process node (kubeplane.node.volumes): every supported kind mounted where the pod
asks, read-only where asked, in each container's own mount namespace; unsupported kinds and unknown
images refused with CreateContainerConfigError; a ConfigMap-mounted Dask config honoured by Dask.

Real API server, real processes, real mounts; every wait has a deadline.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_for

JSON = dict[str, Any]

# What the container reports about its mounts, as one JSON line.
PROBE_SCRIPT = r"""
import json, os, stat
def read(p):
    try:
        return open(p).read()
    except OSError as e:
        return f"error: {e.strerror}"
def writable(p):
    try:
        open(os.path.join(p, "probe-write"), "w").close()
        return True
    except OSError as e:
        return e.strerror
def fstype(p):
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        if fields[4] == p:
            kind = fields[fields.index("-") + 1]
    return kind
tok = read("/etc/podenv-test/proj/tok").split(".")[1]
claims = json.loads(__import__("base64").urlsafe_b64decode(tok + "=" * (-len(tok) % 4)))
print("RESULT " + json.dumps({
    "init": read("/shared/hello"),
    "shared_rw": writable("/shared"),
    "mem": fstype("/mem"), "mem_rw": writable("/mem"),
    "cfg": sorted(f for f in os.listdir("/etc/podenv-test/cfg") if not f.startswith("..")), "cfg_rw": writable("/etc/podenv-test/cfg"),
    "subpath": read("/etc/podenv-test/app.yaml"),
    "secret": read("/etc/podenv-test/sec/password"),
    "secret_mode": oct(stat.S_IMODE(os.stat("/etc/podenv-test/sec/password").st_mode)),
    "proj_cm": read("/etc/podenv-test/proj/cm/other"), "proj_secret": read("/etc/podenv-test/proj/password"),
    "proj_name": read("/etc/podenv-test/proj/name"),
    "aud": claims["aud"], "bound_pod": claims["kubernetes.io"]["pod"]["name"],
    "labels": read("/etc/podenv-test/info/labels"), "cpu": read("/etc/podenv-test/info/cpu"),
    "host": read("/hostdir/from-host"), "host_rw": writable("/hostdir"),
}), flush=True)
import time; time.sleep(600)
"""


@pytest.fixture
def kp(kube_plane: Any) -> Any:
    if not kube_plane.has_node:
        pytest.skip("needs the process node (local plane)")
    return kube_plane


def apply(kp: Any, ns: str, manifest: str) -> None:
    kp.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(manifest))


def pod(kp: Any, ns: str, name: str) -> JSON | None:
    out = kp.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def container_state(kp: Any, ns: str, name: str) -> JSON:
    p = pod(kp, ns, name) or {}
    return ((p.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}


def result_line(kp: Any, ns: str, name: str) -> JSON | None:
    out = kp.kubectl("logs", name, "-n", ns, check=False).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    return json.loads(line.removeprefix("RESULT ")) if line else None


def test_every_volume_kind_with_subpath_and_read_only(kp: Any, namespace: str, tmp_path: Path) -> None:
    ns = namespace
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    (hostdir / "from-host").write_text("host file")
    script = json.dumps(PROBE_SCRIPT)
    apply(
        kp,
        ns,
        f"""
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: cfg}}
        data: {{app.yaml: "a: 1", other: "o"}}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {{name: sec}}
        stringData: {{password: s3cret}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: vols, labels: {{tier: test}}}}
        spec:
          initContainers:
          - name: init
            image: busybox
            command: [sh, -c, "echo from-init > /shared/hello"]
            volumeMounts: [{{name: shared, mountPath: /shared}}]
          containers:
          - name: c
            image: python:3.11-slim
            command: [python, -c, {script}]
            resources: {{limits: {{cpu: 250m}}}}
            volumeMounts:
            - {{name: shared, mountPath: /shared}}
            - {{name: mem, mountPath: /mem}}
            - {{name: cfg, mountPath: /etc/podenv-test/cfg}}
            - {{name: cfg, mountPath: /etc/podenv-test/app.yaml, subPath: app.yaml}}
            - {{name: sec, mountPath: /etc/podenv-test/sec}}
            - {{name: proj, mountPath: /etc/podenv-test/proj}}
            - {{name: info, mountPath: /etc/podenv-test/info}}
            - {{name: host, mountPath: /hostdir, readOnly: true}}
          volumes:
          - {{name: shared, emptyDir: {{}}}}
          - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}
          - {{name: cfg, configMap: {{name: cfg}}}}
          - {{name: sec, secret: {{secretName: sec, defaultMode: 0400}}}}
          - name: proj
            projected:
              sources:
              - serviceAccountToken: {{path: tok, expirationSeconds: 3600, audience: podenv}}
              - configMap: {{name: cfg, items: [{{key: other, path: cm/other}}]}}
              - secret: {{name: sec}}
              - downwardAPI: {{items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]}}
          - name: info
            downwardAPI:
              items:
              - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
              - {{path: cpu, resourceFieldRef: {{containerName: c, resource: limits.cpu, divisor: 1m}}}}
          - {{name: host, hostPath: {{path: {hostdir}, type: Directory}}}}
        """,
    )
    got = wait_for(lambda: result_line(kp, ns, "vols"), timeout=60, interval=0.5, message="vols RESULT line")
    assert got["init"] == "from-init\n" and got["shared_rw"] is True
    assert got["mem"] == "tmpfs" and got["mem_rw"] is True
    assert got["cfg"] == ["app.yaml", "other"] and got["cfg_rw"] == "Read-only file system"
    assert got["subpath"] == "a: 1"
    assert got["secret"] == "s3cret" and got["secret_mode"] == "0o400"
    assert (got["proj_cm"], got["proj_secret"], got["proj_name"]) == ("o", "s3cret", "vols")
    assert got["aud"] == ["podenv"] and got["bound_pod"] == "vols"
    assert got["labels"] == 'tier="test"' and got["cpu"] == "250"
    assert got["host"] == "host file" and got["host_rw"] == "Read-only file system"
    # Nothing the pod mounted is visible outside it, and its tmpfs goes with it.
    assert not Path("/etc/podenv-test/cfg/app.yaml").exists()
    kp.kubectl("delete", "pod", "vols", "-n", ns, "--wait=true", "--timeout=60s")
    assert f"{ns}_vols_" not in Path("/proc/self/mountinfo").read_text()


def test_two_pods_mount_different_things_at_the_same_path(kp: Any, namespace: str) -> None:
    ns = namespace
    docs = []
    for name in ("left", "right"):
        docs.append(f"""
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: {name}}}
        data: {{which: {name}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}}}
        spec:
          containers:
          - name: c
            image: busybox
            command: [sh, -c, 'echo "RESULT {{\\"which\\": \\"$(cat /etc/podenv-same/which)\\"}}"; sleep 600']
            volumeMounts: [{{name: v, mountPath: /etc/podenv-same}}]
          volumes: [{{name: v, configMap: {{name: {name}}}}}]
        """)
    apply(kp, ns, "---".join(docs))
    for name in ("left", "right"):
        got = wait_for(
            lambda n=name: result_line(kp, ns, n), timeout=60, interval=0.5, message=f"{name} RESULT"
        )
        assert got == {"which": name}
    assert not Path("/etc/podenv-same/which").exists()  # the host sees neither


def test_unsupported_volume_and_unknown_image_are_create_container_config_errors(
    kp: Any, namespace: str
) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: pvc}
        spec:
          containers: [{name: c, image: busybox, command: [sleep, "600"], volumeMounts: [{name: data, mountPath: /data}]}]
          volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: noentry}
        spec:
          containers: [{name: c, image: registry.example/team/tool:1, args: [serve]}]
        """,
    )

    def waiting(name: str) -> JSON | None:
        w = container_state(kp, ns, name).get("waiting") or {}
        return w if w.get("reason") == "CreateContainerConfigError" else None

    pvc = wait_for(lambda: waiting("pvc"), timeout=30, interval=0.3, message="pvc config error")
    assert (
        'volume "data": persistentVolumeClaim volumes are not supported by the process node' in pvc["message"]
    )
    img = wait_for(lambda: waiting("noentry"), timeout=30, interval=0.3, message="noentry config error")
    assert "'registry.example/team/tool:1' has no known entrypoint" in img["message"]
    events = kp.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=pvc", "-o", "json"
    )
    assert any("persistentVolumeClaim" in e["message"] for e in json.loads(events.stdout)["items"])


def test_dask_config_mounted_from_a_configmap_is_honoured_by_the_scheduler(kp: Any, namespace: str) -> None:
    """`DASK_CONFIG` points at a ConfigMap volume whose idle timeout makes `dask scheduler` exit by itself."""
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: dask-config}
        data:
          dask.yaml: |
            distributed:
              scheduler:
                idle-timeout: 1s
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: idle-scheduler}
        spec:
          restartPolicy: Never
          containers:
          - name: scheduler
            image: ghcr.io/dask/dask:latest
            args: [dask, scheduler, --no-dashboard]
            env: [{name: DASK_CONFIG, value: /etc/dask}]
            volumeMounts: [{name: config, mountPath: /etc/dask}]
          volumes: [{name: config, configMap: {name: dask-config}}]
        """,
    )
    done = wait_for(
        lambda: container_state(kp, ns, "idle-scheduler").get("terminated"),
        timeout=90,
        interval=0.5,
        message="scheduler exits after its configured idle timeout",
    )
    logs = kp.kubectl("logs", "idle-scheduler", "-n", ns).stdout
    assert "idle" in logs.lower(), logs
    assert done["exitCode"] == 0, logs
