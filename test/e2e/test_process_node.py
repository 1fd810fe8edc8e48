"""The process node runs pods as real local processes: networking, services, probes, restarts, deletion.

Every test talks to the real API server of the session's local plane and waits on conditions with
deadlines (support.wait.wait_for); nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_for

JSON = dict[str, Any]
KUBECTL = str(Path(sys.executable).parent / "kubectl")


@pytest.fixture
def kp(kube_plane: Any) -> Any:
    if not kube_plane.has_node:
        pytest.skip("needs the process node (local plane)")
    return kube_plane


def apply(kp: Any, ns: str, manifest: str) -> None:
    kp.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(manifest))


def get(kp: Any, ns: str, kind: str, name: str = "", selector: str = "") -> Any:
    args = ["get", kind, "-n", ns, "-o", "json"]
    if name:
        args.insert(2, name)
    if selector:
        args += ["-l", selector]
    proc = kp.kubectl(*args, check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def is_ready(pod: JSON) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True"


def phase(kp: Any, ns: str, name: str) -> str | None:
    pod = get(kp, ns, "pod", name)
    return pod["status"].get("phase") if pod else None


def pids(pods: list[JSON]) -> list[int]:
    out = []
    for p in pods:
        for cs in p["status"].get("containerStatuses") or []:
            cid = cs.get("containerID", "")
            if cid.startswith("process://"):
                out.append(int(cid.split("//")[1]))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_deployment_service_dns_clusterip_logs_and_cleanup(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 2
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
              - name: http
                image: python:3.11-slim
                command: ["python", "-m", "http.server", "8000"]
                ports: [{name: http, containerPort: 8000}]
                readinessProbe: {httpGet: {port: http, path: /}, periodSeconds: 1}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: web}
          ports: [{name: http, port: 80, targetPort: http}]
        """,
    )

    def two_ready() -> list[JSON] | None:
        items = get(kp, ns, "pods", selector="app=web")["items"]
        return items if len(items) == 2 and all(is_ready(p) for p in items) else None

    web_pods = wait_for(two_ready, timeout=60, interval=0.3, message="2 ready web pods")
    pod_ips = {p["status"]["podIP"] for p in web_pods}

    def slice_ready() -> bool:
        slices = get(kp, ns, "endpointslices", selector="kubernetes.io/service-name=web")["items"]
        eps = [e for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
        return {a for e in eps for a in e["addresses"]} == pod_ips

    wait_for(slice_ready, timeout=30, interval=0.3, message="EndpointSlice with both pods ready")
    cluster_ip = get(kp, ns, "service", "web")["spec"]["clusterIP"]
    # The host (where the operator may run) reaches the ClusterIP too.
    wait_for(
        lambda: urllib.request.urlopen(f"http://{cluster_ip}/", timeout=5).status == 200,
        timeout=15,
        ignore=(OSError,),
        message="ClusterIP from the host",
    )
    script = f"""
        import socket, urllib.request
        for name in ["web", "web.{ns}.svc.cluster.local", "{cluster_ip}"]:
            status = urllib.request.urlopen(f"http://{{name}}/?from=client", timeout=10).status
            print(name, socket.gethostbyname(name), status, flush=True)
    """
    apply(
        kp,
        ns,
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: client}}
        spec:
          restartPolicy: Never
          containers:
          - name: c
            image: python:3.11-slim
            command: ["python", "-c", {json.dumps(textwrap.dedent(script))}]
        """,
    )
    wait_for(
        lambda: phase(kp, ns, "client") in ("Succeeded", "Failed"),
        timeout=60,
        interval=0.3,
        message="client done",
    )
    out = kp.kubectl("logs", "-n", ns, "client").stdout
    assert phase(kp, ns, "client") == "Succeeded", out
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["web", f"web.{ns}.svc.cluster.local", cluster_ip]
    assert all(ln.split()[1:] == [cluster_ip, "200"] for ln in lines)
    served = "".join(kp.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in web_pods)
    assert served.count("GET /?from=client") == 3

    before = pids(web_pods)
    assert before and all(alive(p) for p in before)
    kp.kubectl("delete", "deployment", "web", "-n", ns)
    wait_for(
        lambda: not get(kp, ns, "pods", selector="app=web")["items"],
        timeout=60,
        interval=0.3,
        message="web pods gone",
    )
    wait_for(lambda: not any(alive(p) for p in before), timeout=10, message="web processes gone")
    uids = {p["metadata"]["uid"].replace("-", "")[:8] for p in web_pods}
    assert not {n for n in netns_names() if n.rsplit("-", 1)[-1] in uids}


def test_exit_codes_restart_backoff_and_logs(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: once}
        spec:
          restartPolicy: Never
          containers:
          - {name: c, image: busybox, command: ["sh", "-c", "echo one; sleep 1; echo two; exit 1"]}
        """,
    )
    wait_for(lambda: phase(kp, ns, "once") == "Running", timeout=30, interval=0.2, message="once running")
    # -f follows the running container and ends when it exits.
    followed = kp.kubectl("logs", "-f", "-n", ns, "once", timeout=30).stdout
    assert followed.split() == ["one", "two"]
    wait_for(lambda: phase(kp, ns, "once") == "Failed", timeout=30, interval=0.2, message="once Failed")
    term = get(kp, ns, "pod", "once")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (1, "Error")

    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata:
          name: crashy
          annotations: {localkube/restart-backoff-seconds: "1"}
        spec:
          restartPolicy: Always
          containers:
          - {name: c, image: busybox, command: ["sh", "-c", "echo run $(date +%s%N); exit 1"]}
        """,
    )
    seen: set[str] = set()

    def restarted_thrice() -> bool:
        cs = get(kp, ns, "pod", "crashy")["status"].get("containerStatuses") or [{}]
        waiting = cs[0].get("state", {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            seen.add(waiting["message"].split(" restarting")[0])
        return cs[0].get("restartCount", 0) >= 3

    wait_for(restarted_thrice, timeout=40, interval=0.1, message="crashy restartCount >= 3")
    assert {"back-off 1s", "back-off 2s"} <= seen, seen
    pod = get(kp, ns, "pod", "crashy")
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    previous = kp.kubectl("logs", "--previous", "-n", ns, "crashy").stdout
    assert previous.startswith("run ")


def test_sigterm_ignored_is_killed_after_grace_period(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: stubborn}
        spec:
          terminationGracePeriodSeconds: 2
          initContainers:
          - {name: setup, image: busybox, command: ["sh", "-c", "echo ready > /dev/null"]}
          - {name: sidecar, image: busybox, restartPolicy: Always, command: ["sleep", "600"]}
          containers:
          - {name: c, image: busybox, command: ["sh", "-c", "trap '' TERM; echo started; while true; do sleep 0.2; done"]}
        """,
    )
    pod = wait_for(
        lambda: (p := get(kp, ns, "pod", "stubborn")) and is_ready(p) and p,
        timeout=30,
        interval=0.2,
        message="stubborn ready",
    )
    init = {c["name"]: c for c in pod["status"]["initContainerStatuses"]}
    assert init["setup"]["state"]["terminated"]["reason"] == "Completed"
    assert init["sidecar"]["state"].get("running")
    main_pid = pids([pod])[0]
    t0 = time.monotonic()
    kp.kubectl("delete", "pod", "stubborn", "-n", ns, "--wait=false")
    wait_for(lambda: get(kp, ns, "pod", "stubborn") is None, timeout=20, interval=0.1, message="pod gone")
    took = time.monotonic() - t0
    assert 1.5 <= took <= 6, took
    assert not alive(main_pid)


def test_bad_pods_get_reasons_and_the_node_keeps_running(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: noexec}
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: ["no-such-program"]}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: nocm}
        spec:
          containers:
          - name: c
            image: busybox
            command: ["sleep", "600"]
            env: [{name: X, valueFrom: {configMapKeyRef: {name: missing, key: k}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: fine}
        spec:
          containers:
          - name: c
            image: busybox
            command: ["sh", "-c", 'echo "$A" "$POD" "$CM"; sleep 600']
            env:
            - {name: A, value: "x-$(POD)"}
            - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            envFrom: [{configMapRef: {name: cfg}}]
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: cfg}
        data: {CM: from-configmap}
        """,
    )

    def state(name: str) -> JSON:
        pod = get(kp, ns, "pod", name)
        return ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0].get("state", {})

    term = wait_for(lambda: state("noexec").get("terminated"), timeout=30, interval=0.2, message="noexec")
    assert term["reason"] == "StartError" and "executable file not found" in term["message"]
    waiting = wait_for(
        lambda: (w := state("nocm").get("waiting")) and w.get("reason") == "CreateContainerConfigError" and w,
        timeout=30,
        interval=0.2,
        message="nocm",
    )
    assert waiting["message"] == 'configmap "missing" not found'
    wait_for(lambda: state("fine").get("running"), timeout=30, interval=0.2, message="fine running")
    # $(POD) is defined after A, so it stays literal, as in Kubernetes.
    wait_for(
        lambda: kp.kubectl("logs", "-n", ns, "fine").stdout.strip() == "x-$(POD) fine from-configmap",
        timeout=10,
        message="env resolved",
    )
    describe = kp.kubectl("describe", "pod", "nocm", "-n", ns).stdout
    assert "CreateContainerConfigError" in describe


def test_simulated_pods_are_ready_without_processes(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: sim}
        spec:
          replicas: 20
          selector: {matchLabels: {app: sim}}
          template:
            metadata:
              labels: {app: sim}
              annotations: {localkube/simulated: "true"}
            spec:
              containers: [{name: c, image: ghcr.io/dask/dask:latest, command: ["no-such-program"]}]
        """,
    )

    def all_ready() -> bool:
        items = get(kp, ns, "pods", selector="app=sim")["items"]
        return len(items) == 20 and all(is_ready(p) and p["status"].get("podIP") for p in items)

    wait_for(all_ready, timeout=60, interval=0.3, message="20 simulated pods ready")
    kp.kubectl("delete", "deployment", "sim", "-n", ns)
    wait_for(
        lambda: not get(kp, ns, "pods", selector="app=sim")["items"], timeout=60, interval=0.3, message="gone"
    )


def test_dask_scheduler_and_workers_compute(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: scheduler, labels: {role: scheduler}}
        spec:
          containers:
          - name: scheduler
            image: ghcr.io/dask/dask:latest
            args: ["dask", "scheduler", "--no-dashboard"]
            ports: [{name: tcp-comm, containerPort: 8786}]
            readinessProbe: {tcpSocket: {port: tcp-comm}, periodSeconds: 1}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: sched}
        spec:
          selector: {role: scheduler}
          ports: [{name: tcp-comm, port: 8786, targetPort: tcp-comm}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: workers}
        spec:
          replicas: 2
          selector: {matchLabels: {role: worker}}
          template:
            metadata: {labels: {role: worker}}
            spec:
              containers:
              - name: worker
                image: ghcr.io/dask/dask:latest
                args: ["dask", "worker", "tcp://sched:8786", "--nthreads", "1", "--no-dashboard",
                       "--name", "$(POD_NAME)"]
                env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        """,
    )
    script = """
        from distributed import Client
        with Client("tcp://sched:8786", timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            futures = client.map(lambda x: x * x, range(10))
            print("RESULT", client.submit(sum, futures).result(), len(client.scheduler_info()["workers"]))
    """
    apply(
        kp,
        ns,
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: client}}
        spec:
          restartPolicy: Never
          containers:
          - name: c
            image: ghcr.io/dask/dask:latest
            command: ["python", "-c", {json.dumps(textwrap.dedent(script))}]
        """,
    )
    wait_for(
        lambda: phase(kp, ns, "client") in ("Succeeded", "Failed"),
        timeout=150,
        interval=0.5,
        message="client",
    )
    out = kp.kubectl("logs", "-n", ns, "client").stdout
    assert "RESULT 285 2" in out, out + kp.kubectl("logs", "-n", ns, "scheduler").stdout


def test_logs_follow_streams_new_lines(kp: Any, namespace: str) -> None:
    ns = namespace
    apply(
        kp,
        ns,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: ticker}
        spec:
          containers:
          - {name: c, image: busybox, command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]}
        """,
    )
    wait_for(lambda: phase(kp, ns, "ticker") == "Running", timeout=30, interval=0.2, message="ticker running")
    proc = subprocess.Popen(
        [KUBECTL, f"--kubeconfig={kp.kubeconfig}", "logs", "-f", "--tail=1", "-n", ns, "ticker"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 5, timeout=20, message="5 streamed lines")
    finally:
        proc.kill()
        proc.wait()
    numbers = [int(ln.split()[1]) for ln in lines[:5]]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5


def test_deleting_a_pod_never_moves_the_gateways_mac(kp: Any, namespace: str) -> None:
    """A Linux bridge left to itself takes the lowest MAC of its ports: deleting that pod moved the gateway's
    (and the ClusterIPs') MAC under every other pod, whose traffic to the node then went nowhere until their
    ARP entries expired, long enough for the Service proxy to time their connections out (a kept Dask
    worker lost its scheduler ~20 s after a scale-down, with all the data moved to it: issue 27)."""
    from kubeplane.node import netns as net

    bridge = kp.plane.state.network.bridge
    mac = Path(f"/sys/class/net/{bridge}/address")
    before = mac.read_text().strip()
    assert before == net.bridge_mac(bridge)
    apply(
        kp,
        namespace,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: lowest}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
          - {name: c, image: busybox, command: ["sleep", "600"]}
        """,
    )
    pod = wait_for(lambda: (p := get(kp, namespace, "pod", "lowest")) and is_ready(p) and p, timeout=30,
                   interval=0.2, message="pod ready")  # fmt: skip
    veth = net.pod_veth_name(bridge, pod["metadata"]["uid"])
    # Its port gets the lowest MAC there is: a bridge that follows its ports would take it now, and give it
    # back when the pod goes.
    subprocess.run(["ip", "link", "set", veth, "address", "02:00:00:00:00:01"], check=True)
    assert mac.read_text().strip() == before
    kp.kubectl("delete", "pod", "lowest", "-n", namespace, "--wait=false")
    wait_for(lambda: not Path(f"/sys/class/net/{veth}").exists(), timeout=30, interval=0.2,
             message="the pod's veth gone")  # fmt: skip
    assert mac.read_text().strip() == before
