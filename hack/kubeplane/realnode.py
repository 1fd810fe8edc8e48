"""Real nodes: containerd, the upstream kubelet and kube-proxy, started, stopped and cleaned up for a plane.

Each node has its own containerd (root, state, socket, runc root), its own kubelet (root dir, port on its
node IP, cgroup root) and its own Linux bridge `dkbr<i>` with the pod CIDR 10.244.<i>.0/24. One kube-proxy
(iptables) and one cluster DNS serve the plane: every node shares the host's network namespace, so one set
of Service rules is the truth for all of them.

Invariant: a node's processes are recorded in state.json before anyone waits on them, and everything a node
creates is found again from its layout alone: its pods are removed through its own containerd (so CNI tears
their networks and iptables rules down), then its processes stop, then the mounts under its directory, the
cgroups under its cgroup root and its bridge go. `down` then leaves no process, mount, cgroup, netns, bridge or
KUBE-/CNI- iptables chain of the plane. Held by test/realnode/test_realnode_down.py::test_down_leaves_nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from kubeplane import components as comp
from kubeplane import nodes
from kubeplane import pki as pkimod
from kubeplane.node.netns import bridge_mac
from kubeplane.realnode_config import (
    RealNodeLayout,
    cni_conflist,
    containerd_toml,
    kube_proxy_config,
    kubelet_config,
    pull_policy_objects,
)
from kubeplane.state import PlaneState

RUNTIME = "containerd"
KUBE_PROXY = "kube-proxy"
CLUSTER_DNS = "cluster-dns"
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl")
CGROUP_FS = Path("/sys/fs/cgroup")
# Host settings the node needs: forwarding between the node bridges, Service rules for bridged traffic.
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
# Chains left after the last pod and `kube-proxy --cleanup`: (table, chain).
LEFT_CHAINS = (
    ("nat", "CNI-HOSTPORT-DNAT"),
    ("nat", "CNI-HOSTPORT-SNAT"),
    ("nat", "CNI-HOSTPORT-MASQ"),
    ("nat", "CNI-HOSTPORT-SETMARK"),
    ("filter", "KUBE-FIREWALL"),
)

Say = Callable[[str], None]


class RealNodeError(RuntimeError):
    """A real node could not be prepared or started; the message says what to do."""


# --- names and layout ------------------------------------------------------------------------------


def is_real(st: PlaneState) -> bool:
    return st.node.get("runtime") == RUNTIME


def containerd_component(name: str) -> str:
    return f"containerd-{name}"


def kubelet_component(name: str) -> str:
    return f"kubelet-{name}"


def is_component(component: str) -> bool:
    return component.startswith(("containerd-", "kubelet-")) or component in (KUBE_PROXY, CLUSTER_DNS)


def default_data_dir(plane: str) -> Path:
    """Where a plane's real nodes keep images, containers and volumes: on disk (a node holds ~1 GiB of
    images), not in /dev/shm with the plane's state. $LOCALKUBE_DATA chooses the parent directory."""
    return Path(os.environ.get("LOCALKUBE_DATA") or "/var/lib/dask-operator-kube") / plane


def data_dir(st: PlaneState) -> Path:
    return Path(str(st.node["data_dir"]))


def node_bin_dir(st: PlaneState) -> Path:
    return Path(str(st.node["node_bin_dir"]))


def layout(st: PlaneState, spec: nodes.NodeSpec) -> RealNodeLayout:
    bin_dir = node_bin_dir(st)
    return RealNodeLayout(
        plane=st.name,
        name=spec.name,
        root=data_dir(st) / spec.name,
        node_ip=spec.network.bridge_ip,
        bridge=spec.network.bridge,
        pod_cidr=spec.pod_cidr,
        kubelet_port=st.ports["kubelet"],
        bin_dir=bin_dir,
        cni_bin_dir=bin_dir.parent / "cni",
        sandbox_image=str(st.node["sandbox_image"]),
    )


def image_tarballs(st: PlaneState) -> list[Path]:
    pause = node_bin_dir(st).parent / "images" / "pause.tar"
    return [pause, *sorted(Path(str(st.node["images_dir"])).glob("*.tar"))]


# --- argv --------------------------------------------------------------------------------------------


def containerd_argv(node: RealNodeLayout) -> list[str]:
    # The shim is found on PATH; `env` execs containerd, so the recorded PID is containerd's.
    path = f"{node.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return [
        "/usr/bin/env",
        f"PATH={path}",
        str(node.bin_dir / "containerd"),
        f"--config={node.containerd_config}",
    ]


def kubelet_argv(st: PlaneState, spec: nodes.NodeSpec, node: RealNodeLayout) -> list[str]:
    argv = [
        str(node.bin_dir / "kubelet"),
        f"--config={node.kubelet_config}",
        f"--kubeconfig={st.root / 'admin.kubeconfig'}",
        f"--root-dir={node.kubelet_dir}",
        f"--cert-dir={node.root / 'kubelet-pki'}",
        f"--hostname-override={spec.name}",
        f"--node-ip={node.node_ip}",
        "--v=1",
    ]
    if spec.labels:
        argv.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in spec.labels.items()))
    if spec.taints:
        argv.append(
            "--register-with-taints="
            + ",".join(
                f"{t['key']}={t['value']}:{t['effect']}" if t.get("value") else f"{t['key']}:{t['effect']}"
                for t in spec.taints
            )
        )
    return argv


def kube_proxy_argv(st: PlaneState) -> list[str]:
    return [str(node_bin_dir(st) / "kube-proxy"), f"--config={st.root / 'kube-proxy.yaml'}", "--v=1"]


def cluster_dns_argv(st: PlaneState) -> list[str]:
    argv = [sys.executable, "-m", "kubeplane.clusterdns"]
    argv.append(f"--kubeconfig={st.root / 'admin.kubeconfig'}")
    return argv + [f"--listen={s.network.bridge_ip}" for s in nodes.plane_nodes(st)]


# --- host preparation ------------------------------------------------------------------------------


def _run(argv: list[str], check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RealNodeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    """The node's cgroup root in every v1 hierarchy mounted under /sys/fs/cgroup."""
    out = []
    for hierarchy in sorted(CGROUP_FS.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink() and (hierarchy / "cgroup.procs").exists():
            out.append(hierarchy / cgroup_root.lstrip("/"))
    return out


# Settings a node's programs may change on their own; recorded with SYSCTLS and restored by `down`.
RECORDED_SYSCTLS = (*SYSCTLS, "net/ipv4/conf/all/route_localnet")


def read_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in RECORDED_SYSCTLS}


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        Path("/proc/sys", key).write_text(value + "\n")


def egress_rule(st: PlaneState) -> list[str]:
    """The nat POSTROUTING rule masquerading pod traffic that leaves the cluster CIDR (PyPI, apt)."""
    cidr = nodes.CLUSTER_CIDR
    return [
        "POSTROUTING",
        "-s",
        cidr,
        "!",
        "-d",
        cidr,
        "-m",
        "comment",
        "--comment",
        f"localkube-{st.name}",
        "-j",
        "MASQUERADE",
    ]


def prepare_plane(st: PlaneState) -> None:
    """Host settings (recorded, restored by `down`), pod egress, kube-proxy's configuration."""
    if "sysctls_before" not in st.node:
        st.node["sysctls_before"] = read_sysctls()
        st.save()
    write_sysctls(SYSCTLS)
    if _run(["iptables", "-t", "nat", "-C", *egress_rule(st)], check=False).returncode != 0:
        _run(["iptables", "-t", "nat", "-A", *egress_rule(st)])
    proxy = kube_proxy_config(
        st.root / "admin.kubeconfig",
        nodes.plane_nodes(st)[0].name,
        nodes.CLUSTER_CIDR,
        st.ports["kube_proxy_healthz"],
        st.ports["kube_proxy_metrics"],
    )
    (st.root / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy, sort_keys=False))


def prepare_node(st: PlaneState, spec: nodes.NodeSpec) -> RealNodeLayout:
    """Directories, configuration files, the serving certificate, the bridge and the cgroup root."""
    node = layout(st, spec)
    if len(str(node.containerd_socket) + ".ttrpc") > 100:
        raise RealNodeError(
            f"{node.containerd_socket}.ttrpc is too long for a unix socket: a shorter plane or node name, "
            "or LOCALKUBE_STATE pointing at a shorter directory"
        )
    for d in (node.containerd_dir, node.kubelet_dir, node.pod_logs_dir, node.cni_conf_dir, node.cni_ipam_dir):
        d.mkdir(parents=True, exist_ok=True)
    node.containerd_config.write_text(containerd_toml(node))
    (node.cni_conf_dir / "10-localkube.conflist").write_text(json.dumps(cni_conflist(node), indent=2))
    pki = pkimod.PkiPaths(st.root / "pki")
    node.kubelet_config.write_text(
        yaml.safe_dump(
            kubelet_config(node, pki.ca_crt, node.node_ip, nodes.heartbeat_seconds(nodes.grace_period(st))),
            sort_keys=False,
        )
    )
    pkimod.issue_kubelet_serving(
        pki, node.serving_crt, node.serving_key, node_name=spec.name, node_ip=node.node_ip
    )
    ensure_bridge(node)
    for d in _cgroup_dirs(node.cgroup_root):
        d.mkdir(exist_ok=True)
    return node


def ensure_bridge(node: RealNodeLayout) -> None:
    """The node's bridge holding its node IP (the CNI bridge plugin then attaches pods to it)."""
    if not _link_exists(node.bridge):
        # Its MAC fixed, as on the process node (kubeplane.node.netns says why).
        _run(["ip", "link", "add", node.bridge, "address", bridge_mac(node.bridge), "type", "bridge"])
    _run(["ip", "addr", "replace", f"{node.node_ip}/24", "dev", node.bridge])
    _run(["ip", "link", "set", node.bridge, "up"])


def prepare_bridges(st: PlaneState) -> None:
    """Before the API server starts: it listens on the first node's bridge address. The plane's Service range
    is routed into that bridge: a ClusterIP kube-proxy has no rule for yet (a Service just made) then fails
    on this machine instead of leaving by the default route, where whatever answers is not this plane (a
    Dask client once read an HTTP proxy's reply as a 3 EiB frame). The route goes with the bridge."""
    for spec in nodes.plane_nodes(st):
        ensure_bridge(layout(st, spec))
    first = layout(st, nodes.plane_nodes(st)[0])
    _run(["ip", "route", "replace", st.network.service_cidr, "dev", first.bridge, "src", first.node_ip])


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def image_names(tarball: Path) -> list[str]:
    """The names `<tarball>.names` gives the image (hack/build-images.sh): its own, then further tags."""
    names = tarball.with_name(tarball.name + ".names")
    return names.read_text().split() if names.is_file() else []


def import_images(node: RealNodeLayout, tarballs: list[Path]) -> None:
    """Each tarball into the node's containerd (namespace k8s.io, unpacked), then its further names (one
    tarball per image, however many tags it has)."""
    ctr = [str(node.bin_dir / "ctr"), f"--address={node.containerd_socket}", "--namespace=k8s.io"]
    for tarball in tarballs:
        _run([*ctr, "images", "import", str(tarball)], timeout=600)
        first, *more = image_names(tarball) or [""]
        for name in more:
            _run([*ctr, "images", "tag", "--force", first, name])


def install_pull_policy(st: PlaneState, tarballs: list[Path]) -> None:
    """The plane's stand-in for a registry: pods naming an imported image never pull it (see
    realnode_config.pull_policy_objects)."""
    names = sorted({n for t in tarballs for n in image_names(t)})
    for path, obj in pull_policy_objects(names):
        status, body = comp.api_post(st, path, obj)
        if status not in (201, 409):
            raise RealNodeError(f"POST {path}: {status} {body[:500]!r}")
    if names:
        # Admission loads a new policy from its informer: `up` returns once a dry-run pod shows it applied.
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "localkube-pull-policy-probe"},
            "spec": {"containers": [{"name": "c", "image": names[0], "imagePullPolicy": "Always"}]},
        }

        def applied() -> bool:
            status, body = comp.api_post(st, "/api/v1/namespaces/default/pods?dryRun=All", probe)
            if status != 201:
                return False
            return bool(json.loads(body)["spec"]["containers"][0].get("imagePullPolicy") == "IfNotPresent")

        wait_for(
            "the image pull policy", applied, lambda: True, 60.0, st.root / "logs" / "kube-apiserver.log"
        )


def containerd_ready(node: RealNodeLayout) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(node.containerd_socket))
        except OSError:
            return False
    return True


def wait_for(
    what: str, ready: Callable[[], bool], alive: Callable[[], bool], timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise RealNodeError(f"{what} exited during start-up. Last lines of {log}:\n{comp.tail(log)}")
        if time.monotonic() > deadline:
            raise RealNodeError(
                f"{what} not ready after {timeout:.0f} s. Last lines of {log}:\n{comp.tail(log)}"
            )
        time.sleep(0.1)


# --- start ------------------------------------------------------------------------------------------


def start_containerd(st: PlaneState, spec: nodes.NodeSpec, timeout: float) -> RealNodeLayout:
    node = layout(st, spec)
    rec = comp.spawn(st, containerd_component(spec.name), containerd_argv(node))
    wait_for(
        f"containerd of {spec.name}",
        lambda: containerd_ready(node),
        lambda: comp.alive(rec),
        timeout,
        Path(rec.log),
    )
    return node


def start_kubelet(st: PlaneState, spec: nodes.NodeSpec) -> None:
    comp.spawn(st, kubelet_component(spec.name), kubelet_argv(st, spec, layout(st, spec)))


def start_plane_services(st: PlaneState, timeout: float) -> None:
    """kube-proxy and cluster DNS, once every node's bridge holds its address."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(comp.HACK_DIR), os.environ.get("PYTHONPATH")]))}
    dns = comp.spawn(st, CLUSTER_DNS, cluster_dns_argv(st), env=env)
    proxy = comp.spawn(st, KUBE_PROXY, kube_proxy_argv(st))
    port = st.ports["kube_proxy_healthz"]
    wait_for(
        "kube-proxy",
        lambda: comp.http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
        lambda: comp.alive(proxy),
        timeout,
        Path(proxy.log),
    )
    wait_for("cluster DNS", lambda: _dns_answers(st), lambda: comp.alive(dns), timeout, Path(dns.log))


def _dns_answers(st: PlaneState) -> bool:
    """The DNS process answers a query for the API server's Service on the first node's address."""
    from dnslib import DNSRecord

    query = DNSRecord.question("kubernetes.default.svc.cluster.local").pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(query, (nodes.plane_nodes(st)[0].network.bridge_ip, 53))
            reply = DNSRecord.parse(s.recv(4096))
        except OSError:
            return False
    return len(reply.rr) > 0


def start_nodes(st: PlaneState, say: Say, t0: float, timeout: float) -> None:
    """Prepare every node and start its containerd, import the images into all of them at once, then start
    the kubelets, kube-proxy and DNS."""
    specs = nodes.plane_nodes(st)
    prepare_plane(st)
    tarballs = image_tarballs(st)
    started = []
    for spec in specs:
        prepare_node(st, spec)
        started.append(start_containerd(st, spec, timeout))
    with ThreadPoolExecutor(max_workers=len(started)) as pool:
        list(pool.map(lambda node: import_images(node, tarballs), started))
    say(
        f"localkube: containerd up on {len(specs)} node(s), {len(tarballs)} images imported at {time.monotonic() - t0:.1f} s"
    )
    for spec in specs:
        start_kubelet(st, spec)
    start_plane_services(st, timeout)
    install_pull_policy(st, tarballs)
    say(
        f"localkube: kube-proxy, cluster DNS and the image pull policy ready at {time.monotonic() - t0:.1f} s"
    )
    for spec in specs:
        wait_node_ready(st, spec, timeout)
        say(f"localkube: node {spec.name} ({spec.pod_cidr}, kubelet) Ready at {time.monotonic() - t0:.1f} s")


def wait_node_ready(st: PlaneState, spec: nodes.NodeSpec, timeout: float, since: float = 0.0) -> None:
    rec = st.processes[kubelet_component(spec.name)]
    wait_for(
        f"kubelet of {spec.name}",
        lambda: node_ready(st, spec.name, since),
        lambda: comp.alive(rec),
        timeout,
        Path(rec.log),
    )


def node_ready(st: PlaneState, name: str, since: float = 0.0) -> bool:
    """Ready, untainted by node-lifecycle, and (after a restart) heartbeating since `since`."""
    status, body = comp.api_get(st, f"/api/v1/nodes/{name}")
    if status != 200:
        return False
    node = json.loads(body)
    ready = [c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"]
    if not ready or ready[0].get("status") != "True":
        return False
    if since and _parse_time(ready[0].get("lastHeartbeatTime", "")) < since - 1:
        return False
    taints = node.get("spec", {}).get("taints") or []
    return not any(t.get("key") in comp.NOT_READY_TAINTS for t in taints)


def _parse_time(text: str) -> float:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return 0.0


def healthy(st: PlaneState, component: str) -> bool:
    for spec in nodes.plane_nodes(st):
        if component == containerd_component(spec.name):
            return containerd_ready(layout(st, spec))
        if component == kubelet_component(spec.name):
            return node_ready(st, spec.name)
    if component == KUBE_PROXY:
        return comp.http_get(f"http://127.0.0.1:{st.ports['kube_proxy_healthz']}/healthz")[0] == 200
    if component == CLUSTER_DNS:
        return _dns_answers(st)
    raise ValueError(f"unknown component {component!r}")


# --- stop and clean up ------------------------------------------------------------------------------


def remove_pods(node: RealNodeLayout) -> None:
    """Every pod sandbox through the node's own containerd: CNI DEL frees addresses and iptables rules."""
    if not containerd_ready(node):
        return
    crictl = [str(node.bin_dir / "crictl"), f"--runtime-endpoint={node.runtime_endpoint}", "--timeout=30s"]
    _run([*crictl, "rmp", "--all", "--force"], check=False, timeout=120)


def stop_node(st: PlaneState, spec: nodes.NodeSpec, kubelet_grace: float = 10.0) -> str:
    """The kubelet (SIGKILL with grace 0: a lost machine), its pods, then containerd; the state stays."""
    node = layout(st, spec)
    outcome = "not running"
    kubelet = st.processes.get(kubelet_component(spec.name))
    if kubelet is not None:
        outcome = comp.terminate(kubelet, kubelet_grace)
    remove_pods(node)
    containerd = st.processes.get(containerd_component(spec.name))
    if containerd is not None:
        comp.terminate(containerd, 10.0)
    _kill_shims(node)
    _kill_cgroup_tasks(node.cgroup_root)
    return outcome


def _kill_shims(node: RealNodeLayout) -> None:
    """Shims of this containerd that outlived it (they are re-parented, not its children)."""
    marker = str(node.containerd_socket)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and marker.encode() in cmdline:
                os.kill(int(entry.name), signal.SIGKILL)


def _kill_cgroup_tasks(cgroup_root: str) -> None:
    for top in _cgroup_dirs(cgroup_root):
        if not top.exists():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)


def _remove_cgroups(cgroup_root: str) -> list[str]:
    left = []
    for top in _cgroup_dirs(cgroup_root):
        if not top.exists():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            deadline = time.monotonic() + 5
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    _kill_cgroup_tasks(cgroup_root)
                    time.sleep(0.05)
    return left


def _unmount_under(root: Path) -> None:
    prefix = str(root) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        _run(["umount", "-l", point], check=False)


def clean_node(st: PlaneState, spec: nodes.NodeSpec) -> list[str]:
    """After stop_node: the node's mounts, cgroups and bridge; returns what could not be removed."""
    node = layout(st, spec)
    _unmount_under(node.root)
    problems = [f"cgroup {d} still exists" for d in _remove_cgroups(node.cgroup_root)]
    if _link_exists(node.bridge):
        _run(["ip", "link", "del", node.bridge], check=False)
        if _link_exists(node.bridge):
            problems.append(f"bridge {node.bridge} still exists")
    return problems


def stop_plane(st: PlaneState, say: Say) -> list[str]:
    """Every node (in parallel is not needed: pods go in seconds), kube-proxy's rules, DNS, host settings."""
    problems: list[str] = []
    for spec in nodes.plane_nodes(st):
        say(f"localkube: node {spec.name} (kubelet) {stop_node(st, spec)}")
        problems += clean_node(st, spec)
    for component in (KUBE_PROXY, CLUSTER_DNS):
        rec = st.processes.get(component)
        if rec is not None:
            say(f"localkube: {component} {comp.terminate(rec)}")
    if (node_bin_dir(st) / "kube-proxy").exists() and KUBE_PROXY in st.processes:
        _run([str(node_bin_dir(st) / "kube-proxy"), "--cleanup"], check=False)
    _delete_left_chains()
    while _run(["iptables", "-t", "nat", "-D", *egress_rule(st)], check=False).returncode == 0:
        pass
    before = st.node.get("sysctls_before")
    if isinstance(before, dict):
        with contextlib.suppress(OSError):
            write_sysctls({str(k): str(v) for k, v in before.items()})
    _unmount_under(st.root)
    _unmount_under(data_dir(st))
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(data_dir(st))
    if data_dir(st).exists():
        problems.append(f"could not remove {data_dir(st)}")
    with contextlib.suppress(OSError):
        data_dir(st).parent.rmdir()  # only when no other plane's nodes live there
    return problems


def _delete_left_chains() -> None:
    """Every rule jumping to a LEFT_CHAINS chain (whatever its matches), then the chain."""
    for table, chain in LEFT_CHAINS:
        rules = _run(["iptables-save", "-t", table], check=False).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and f" -j {chain} " in f"{rule} ":
                _run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]], check=False)
        _run(["iptables", "-t", table, "-F", chain], check=False)
        _run(["iptables", "-t", table, "-X", chain], check=False)


def leftovers(roots: list[Path], bridges: list[str], cgroup_roots: list[str]) -> list[str]:
    """What a plane of real nodes would have left behind: for the tests of `down`."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if any(line.split()[4].startswith(str(r)) for r in roots):
            found.append(f"mount {line.split()[4]}")
    found += [f"bridge {b}" for b in bridges if _link_exists(b)]
    for root in cgroup_roots:
        found += [f"cgroup {d}" for d in _cgroup_dirs(root) if d.exists()]
    rules = _run(["iptables-save"], check=False).stdout
    found += [f"iptables {line}" for line in rules.splitlines() if line.startswith((":KUBE-", ":CNI-"))]
    return found
