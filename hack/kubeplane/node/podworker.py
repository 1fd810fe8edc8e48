"""One real pod on this node: its sandbox (netns + IP), its containers' lifecycle, probes and status.

Invariant: one thread owns one pod; only it starts, signals or reaps that pod's processes and writes
that pod's status. Init containers run one at a time to completion (native sidecars are started and
kept running), then the main containers; a container that cannot be configured or started never
raises out of the loop: it gets a waiting/terminated state with a kubelet-style reason. Deletion is
SIGTERM to each process group, SIGKILL at the grace deadline, then the final DELETE with a UID
precondition; the sandbox is always torn down when the thread ends.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import netns as net
from .backoff import RestartBackoff, go_duration
from .context import BACKOFF_ANNOTATION, NodeContext, container_path
from .envvars import ConfigError, resolve_env
from .images import argv_for
from .ipam import AddressPoolExhausted
from .kubeapi import STRATEGIC_PATCH, ApiError
from .podstatus import INIT, MAIN, SIDECAR, ContainerView, PodView, build_pod_status, pod_phase
from .probes import LIVENESS, READINESS, STARTUP, ProbeSpec, ProbeState, run_probe
from .process import (
    IP,
    NSENTER,
    StartError,
    exit_code,
    launch,
    proc_start_time,
    program_files,
    signal_group,
)
from .securitycontext import identity_for, reveal_script
from .volumes import PodVolumes, container_mounts, mount_script, resolve_sources

log = logging.getLogger(__name__)

JSON = dict[str, Any]
PROJECT_DIR = Path(__file__).resolve().parents[3]  # hack/kubeplane/node/ -> the repository
TICK = 0.2  # how often running processes are polled for exit


class Container:
    def __init__(
        self, spec: JSON, role: str, pod_dir: Path, backoff: RestartBackoff, waiting_reason: str
    ) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.role = role
        self.view = ContainerView(
            name=self.name, image=spec.get("image", ""), role=role, reason=waiting_reason
        )
        self.backoff = backoff
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.last_exit: JSON | None = None
        self.finished_at = 0.0
        self.next_attempt = 0.0
        self.kill_deadline: float | None = None
        self.probes: dict[str, ProbeState] = {}
        self.env: dict[str, str] = {}
        self.log_dir = pod_dir / self.name
        self.named_ports = {
            p["name"]: int(p["containerPort"]) for p in spec.get("ports") or [] if p.get("name")
        }
        self.backoff_announced = 0.0
        self.announced_error = ""
        self.mount_targets: list[str] = []

    @property
    def running(self) -> bool:
        return self.proc is not None

    def restart_policy(self, pod_policy: str) -> str:
        if self.role == SIDECAR:
            return "Always"
        if self.role == INIT:
            return "Never" if pod_policy == "Never" else "OnFailure"
        return pod_policy


class PodRuntime:
    def __init__(self, ctx: NodeContext, pod: JSON) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        spec = pod["spec"]
        self.policy: str = spec.get("restartPolicy") or "Always"
        self.hostname: str = (spec.get("hostname") or self.name)[:63]
        sub = spec.get("subdomain")
        self.fqdn = f"{self.hostname}.{sub}.{self.ns}.svc.{ctx.cfg.cluster_domain}" if sub else ""
        self.pod_dir = ctx.cfg.pods_dir / f"{self.ns}_{self.name}_{self.uid}"
        self.netns = net.pod_netns_name(ctx.cfg.bridge, self.uid)
        self.veth = net.pod_veth_name(ctx.cfg.bridge, self.uid)
        self.pod_ip = ""
        self.sandbox = False
        self.start_time = time.time()
        self.terminal = False
        self.initialized = False
        self.last_status: JSON | None = None
        self.wake = threading.Event()
        self.gone = False
        self.shutdown = False
        self.done = threading.Event()
        self.warned: set[str] = set()
        base = float((meta.get("annotations") or {}).get(BACKOFF_ANNOTATION, 10) or 10)
        inits = spec.get("initContainers") or []
        self.containers: list[Container] = []
        for c in inits:
            role = SIDECAR if c.get("restartPolicy") == "Always" else INIT
            self.containers.append(
                Container(c, role, self.pod_dir, RestartBackoff(base, base * 30), "PodInitializing")
            )
        waiting = "PodInitializing" if inits else "ContainerCreating"
        for c in spec.get("containers") or []:
            self.containers.append(Container(c, MAIN, self.pod_dir, RestartBackoff(base, base * 30), waiting))
        if inits:
            self.containers[0].view.reason = "ContainerCreating"
        self.volumes = PodVolumes(
            pod, self.pod_dir, ctx.client, ctx.allocatable, ctx.record.add_mount, ctx.record.remove_mount
        )
        self.thread = threading.Thread(target=self._run, name=f"pod {self.ns}/{self.name}", daemon=True)

    # --- called from other threads ------------------------------------------------------------------

    def start(self) -> PodRuntime:
        self.thread.start()
        return self

    def update(self, pod: JSON) -> None:
        self.pod = pod
        self.wake.set()

    def mark_gone(self) -> None:
        self.gone = True
        self.wake.set()

    def stop_for_shutdown(self) -> None:
        self.shutdown = True
        self.wake.set()

    # --- the pod's thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._main()
        except Exception:
            log.exception("pod %s/%s: runtime failed", self.ns, self.name)
        finally:
            try:
                self._stop_all(grace=2.0)
                self._teardown_sandbox()
            finally:
                self.done.set()

    def _deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _main(self) -> None:
        while not self.sandbox:
            if self.gone or self.shutdown:
                return
            if self._deleting():
                self._graceful_delete()
                return
            self._setup_sandbox()
            self._write_status()
            if not self.sandbox:
                self.wake.wait(2.0)
                self.wake.clear()
        while True:
            if self.gone or self.shutdown:
                return
            if self._deleting():
                self._graceful_delete()
                return
            now = time.time()
            try:
                self._refresh_volumes(now)
                self._reap(now)
                if not self.terminal:
                    self._advance(now)
                    self._probe(now)
                    self._enforce_kills(now)
                self._write_status()
            except Exception:  # a bug in one step must not orphan the pod's processes
                log.exception("pod %s/%s: step failed; retrying", self.ns, self.name)
                self.wake.wait(1.0)
            if self.terminal and not any(c.running for c in self.containers):
                self._teardown_sandbox()
                self.wake.wait(30.0)  # parked until deleted: nothing runs any more
            else:
                self.wake.wait(self._next_wake(now))
            self.wake.clear()

    def _next_wake(self, now: float) -> float:
        times = [now + (TICK if any(c.running for c in self.containers) else 5.0)]
        if self.volumes.ready:
            times.append(self.volumes.next_refresh)
        for c in self.containers:
            times += [p.next_at for p in c.probes.values()]
            if c.next_attempt > now:
                times.append(c.next_attempt)
            if c.kill_deadline is not None:
                times.append(c.kill_deadline)
        return max(0.01, min(times) - now)

    # --- sandbox -----------------------------------------------------------------------------------------

    def _setup_sandbox(self) -> None:
        cfg = self.ctx.cfg
        try:
            ip = self.ctx.ipam.allocate(self.uid)
            self.ctx.record.add_netns(self.netns, self.veth)
            net.create_pod_network(
                self.netns,
                self.veth,
                cfg.bridge,
                ip,
                cfg.prefixlen,
                cfg.node_ip if self.ctx.default_route else "",
                net.hosts_file(ip, self.hostname, self.fqdn),
                net.resolv_file(cfg.node_ip, self.ns, cfg.cluster_domain),
                # Without a default route (the host forwards IP) Services are still reached through the node.
                () if self.ctx.default_route else ((cfg.service_cidr, cfg.node_ip),),
            )
            (self.pod_dir / "home").mkdir(parents=True, exist_ok=True)
            (self.pod_dir / "workdir").mkdir(parents=True, exist_ok=True)
        except (OSError, net.NetworkError, AddressPoolExhausted, subprocess.SubprocessError) as e:
            log.warning("pod %s/%s: sandbox setup failed: %s", self.ns, self.name, e)
            for c in self.containers:
                c.view.message = f"failed to create pod sandbox: {e}"
            return
        for c in self.containers:
            c.view.message = ""
        self.pod_ip = ip
        self.sandbox = True
        log.info("pod %s/%s: sandbox %s ip %s", self.ns, self.name, self.netns, ip)

    def _refresh_volumes(self, now: float) -> None:
        if not self.volumes.ready or self.terminal or now < self.volumes.next_refresh:
            return
        try:
            self.volumes.refresh(now)
        except (ConfigError, OSError) as e:  # keep the last good files; try again shortly
            log.warning("pod %s/%s: volume refresh: %s", self.ns, self.name, e)
            self.volumes.next_refresh = now + 5.0

    def _teardown_sandbox(self) -> None:
        self.volumes.teardown()
        if not self.sandbox and not self.ctx.ipam.owned(self.uid):
            return
        try:
            net.delete_pod_network(self.netns, self.veth)
            self.ctx.record.remove_netns(self.netns)
        except (OSError, net.NetworkError, subprocess.SubprocessError) as e:
            log.warning("pod %s/%s: sandbox teardown: %s", self.ns, self.name, e)
        self.ctx.ipam.release(self.uid)
        self.sandbox = False

    # --- containers ---------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if not self.initialized:
            for c in self.containers:
                if c.role == INIT:
                    if c.view.completed:
                        continue
                    if not c.running:
                        self._maybe_start(c, now)
                    return
                if c.role == SIDECAR:
                    if not c.running:
                        self._maybe_start(c, now)
                    if not c.view.started:
                        return
            self.initialized = True
            for c in self.containers:
                if c.role == MAIN and c.view.reason == "PodInitializing":
                    c.view.reason = "ContainerCreating"
        for c in self.containers:
            if c.role in (SIDECAR, MAIN) and not c.running:
                self._maybe_start(c, now)

    def _maybe_start(self, c: Container, now: float) -> None:
        if c.last_exit is not None:
            policy = c.restart_policy(self.policy)
            code = c.last_exit.get("exitCode", 0)
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            at = c.backoff.restart_at(c.finished_at)
            if now < at:
                msg = (
                    f"back-off {go_duration(c.backoff.current)} restarting failed container={c.name} "
                    f"pod={self.name}_{self.ns}({self.uid})"
                )
                c.view.state, c.view.reason, c.view.message = "waiting", "CrashLoopBackOff", msg
                c.view.last_terminated = c.last_exit
                c.view.ready = c.view.started = False
                c.next_attempt = at
                if c.backoff_announced != c.finished_at:
                    c.backoff_announced = c.finished_at
                    self.ctx.event(
                        self.pod, "BackOff", "Back-off restarting failed container " + c.name, "Warning"
                    )
                return
        if now < c.next_attempt:
            return
        self._start(c, now)

    def _pod_for_env(self) -> JSON:
        pod = copy.deepcopy(self.pod)
        st = pod.setdefault("status", {})
        st["podIP"], st["podIPs"] = self.pod_ip, [{"ip": self.pod_ip}]
        st["hostIP"], st["hostIPs"] = self.ctx.cfg.node_ip, [{"ip": self.ctx.cfg.node_ip}]
        return pod

    def _env_for(self, c: Container) -> dict[str, str]:
        base = {
            "PATH": container_path(None),
            "HOSTNAME": self.hostname,
            "HOME": str(self.pod_dir / "home"),
        }
        base.update(self.ctx.service_env(self.ns) if self.pod["spec"].get("enableServiceLinks", True) else {})
        base.update(self.ctx.service_env(""))  # KUBERNETES_SERVICE_*: every pod, service links or not
        env = resolve_env(
            self._pod_for_env(), c.spec, base, self.ctx.configmap, self.ctx.secret, self.ctx.allocatable
        )
        env["PATH"] = container_path(env.get("PATH"))
        return env

    def _prepare(self, c: Container, now: float) -> tuple[list[str], str, tuple[str, ...]]:
        """argv, mount script and setpriv prefix of `c`; raises ConfigError when it cannot be configured."""
        if not self.volumes.ready:
            try:
                self.volumes.setup(now)
            except OSError as e:
                raise ConfigError(f"cannot set up volumes: {e}") from e
        c.env = self._env_for(c)
        argv = argv_for(c.spec, c.env)
        # The venv's bin is on every container's PATH, so its Python is needed even behind `sh -c`.
        needed = [
            *program_files(argv[0], c.env.get("PATH", ""), c.spec.get("workingDir") or "/"),
            os.path.realpath(sys.executable),
            sys.base_prefix,
            sys.prefix,
            str(PROJECT_DIR),  # an editable install imports the project from its checkout
            str(self.pod_dir),
        ]
        identity = identity_for(self.pod, c.spec, needed)
        for warning in identity.warnings:
            if warning not in self.warned:
                self.warned.add(warning)
                self.ctx.event(self.pod, "SecurityContextNotApplied", warning, "Warning")
        try:
            mounts = resolve_sources(
                container_mounts(c.spec, self.volumes.sources, c.env), self.volumes.sources
            )
        except OSError as e:
            raise ConfigError(f"cannot prepare subPath: {e}") from e
        if identity.uid:
            for d in (self.pod_dir / "home", self.pod_dir / "workdir"):
                os.chown(d, identity.uid, -1)
        setup = mount_script(mounts, identity.read_only_root, reveal_script(identity.reveal))
        c.mount_targets = [m.target for m in mounts]
        return argv, setup, identity.setpriv

    def _start(self, c: Container, now: float) -> None:
        v = c.view
        try:
            argv, setup, identity = self._prepare(c, now)
        except ConfigError as e:
            v.state, v.reason, v.message = "waiting", "CreateContainerConfigError", str(e)
            c.next_attempt = now + 2.0
            if v.message != c.announced_error:
                c.announced_error = v.message
                self.ctx.event(self.pod, "Failed", f"Error: {e}", "Warning")
            return
        except ApiError as e:
            v.state, v.reason, v.message = "waiting", "CreateContainerConfigError", f"cannot read config: {e}"
            c.next_attempt = now + 2.0
            return
        cwd = c.spec.get("workingDir") or str(self.pod_dir / "workdir")
        try:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            v.state, v.reason, v.message = (
                "waiting",
                "CreateContainerError",
                f"cannot create workingDir {cwd}: {e}",
            )
            c.next_attempt = now + 5.0
            return
        if c.last_exit is not None:
            v.restart_count += 1
            v.last_terminated = c.last_exit
            c.backoff.record_restart(now)
        log_path = c.log_dir / f"{c.runs}.log"
        c.runs += 1
        c.probes = {}
        c.kill_deadline = None
        try:
            stdin = bool(c.spec.get("stdin"))  # kept open for `kubectl attach -i`
            proc = launch(
                argv,
                c.env,
                cwd,
                self.netns,
                self.hostname,
                log_path,
                self.ctx.pump,
                setup,
                identity,
                c.mount_targets,
                stdin=stdin,
            )
        except StartError as e:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
            v.state, v.reason, v.message = "terminated", "StartError", str(e)
            v.exit_code, v.started_at, v.finished_at = 128, now, now
            v.container_id, v.ready, v.started = "", False, False
            c.last_exit, c.finished_at = v.terminated_json(), now
            self.ctx.event(self.pod, "Failed", f"Error: {e}", "Warning")
            return
        c.proc = proc
        start_time = proc_start_time(proc.pid)
        self.ctx.record.add_process(f"{self.uid}/{c.name}/{c.runs}", proc.pid, start_time or 0)
        v.state, v.reason, v.message = "running", "", ""
        v.exit_code, v.started_at, v.finished_at = None, now, None
        v.container_id = f"process://{proc.pid}"
        v.ready = False
        for kind, key in (
            (STARTUP, "startupProbe"),
            (READINESS, "readinessProbe"),
            (LIVENESS, "livenessProbe"),
        ):
            if c.spec.get(key):
                c.probes[kind] = ProbeState(kind, ProbeSpec.from_json(c.spec[key]), started_at=now)
        v.started = STARTUP not in c.probes
        v.ready = v.started and READINESS not in c.probes
        self.ctx.event(self.pod, "Started", f"Started container {c.name}")
        log.info("pod %s/%s: started %s pid %s: %s", self.ns, self.name, c.name, proc.pid, argv)

    def _reap(self, now: float) -> None:
        for c in self.containers:
            if c.proc is None:
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            signal_group(c.proc.pid, signal.SIGKILL)  # strays left in the container's group
            self.ctx.record.remove_process(f"{self.uid}/{c.name}/{c.runs}")
            c.proc = None
            code = exit_code(rc)
            v = c.view
            v.state, v.exit_code, v.finished_at = "terminated", code, now
            v.reason = "Completed" if code == 0 else "Error"
            v.message = ""
            v.ready = v.started = False
            c.last_exit, c.finished_at = v.terminated_json(), now
            c.probes, c.kill_deadline = {}, None
            if c.role == INIT and code == 0:
                v.completed = True
            log.info("pod %s/%s: %s exited with %s", self.ns, self.name, c.name, code)
        if not self.terminal:
            phase = pod_phase(self.policy, [c.view for c in self.containers])
            if phase in ("Succeeded", "Failed"):
                self.terminal = True
                for c in self.containers:  # sidecars (and anything else) stop with the pod
                    if c.proc is not None:
                        signal_group(c.proc.pid, signal.SIGTERM)
                        c.kill_deadline = now + self._grace()

    def _probe(self, now: float) -> None:
        for c in self.containers:
            if c.proc is None or c.kill_deadline is not None:
                continue
            prefix = self._enter(c)
            v = c.view
            for kind in (STARTUP, READINESS, LIVENESS):
                p = c.probes.get(kind)
                if p is None or not p.due(now):
                    continue
                if kind != STARTUP and not v.started:
                    continue
                if kind == STARTUP and p.result:
                    continue
                ok, msg = run_probe(p.spec, self.pod_ip, c.named_ports, prefix, c.env)
                p.record(ok, time.time(), msg)
                if not ok:
                    self.ctx.event(
                        self.pod, "Unhealthy", f"{kind.capitalize()} probe failed: {msg}", "Warning"
                    )
                if kind == STARTUP:
                    if p.result:
                        v.started = True
                        v.ready = READINESS not in c.probes
                    elif p.failures >= p.spec.failure_threshold:
                        self._kill_for_restart(c, now, "failed startup probe")
                elif kind == READINESS:
                    v.ready = p.result
                elif kind == LIVENESS and not p.result:
                    self._kill_for_restart(c, now, "failed liveness probe")

    def _enter(self, c: Container) -> list[str]:
        """argv prefix running a command in `c`'s namespaces (network, mount: its volumes, hostname)."""
        if c.proc is not None and NSENTER:
            return [NSENTER, "-t", str(c.proc.pid), "-n", "-m", "-u", "--"]
        return [IP, "netns", "exec", self.netns]

    def _kill_for_restart(self, c: Container, now: float, why: str) -> None:
        assert c.proc is not None
        self.ctx.event(self.pod, "Killing", f"Container {c.name} {why}, will be restarted")
        signal_group(c.proc.pid, signal.SIGTERM)
        c.kill_deadline = now + self._grace()
        c.view.ready = False

    def _enforce_kills(self, now: float) -> None:
        for c in self.containers:
            if c.proc is not None and c.kill_deadline is not None and now >= c.kill_deadline:
                signal_group(c.proc.pid, signal.SIGKILL)

    def _grace(self) -> float:
        g = self.pod["spec"].get("terminationGracePeriodSeconds")
        return float(30 if g is None else g)

    # --- stopping -----------------------------------------------------------------------------------

    def _wait_exit(self, containers: list[Container], deadline: float) -> None:
        while any(c.proc is not None for c in containers) and time.monotonic() < deadline:
            self._reap(time.time())
            time.sleep(0.05)
        self._reap(time.time())

    def _stop_all(self, grace: float) -> None:
        running = [c for c in self.containers if c.proc is not None]
        if not running:
            return
        for c in running:
            signal_group(c.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        self._wait_exit(running, time.monotonic() + grace)
        for c in running:
            if c.proc is not None:
                signal_group(c.proc.pid, signal.SIGKILL)
        self._wait_exit(running, time.monotonic() + 5.0)

    def _pre_stop(self, c: Container, deadline: float) -> None:
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if not hook or c.proc is None:
            return
        budget = max(0.5, deadline - time.monotonic())
        spec = ProbeSpec(action=hook, timeout=budget)
        ok, msg = run_probe(spec, self.pod_ip, c.named_ports, self._enter(c), c.env)
        if not ok:
            self.ctx.event(self.pod, "FailedPreStopHook", f"PreStopHook failed: {msg}", "Warning")

    def _graceful_delete(self) -> None:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        grace = self._grace() if grace is None else float(grace)
        deadline = time.monotonic() + grace
        mains = [c for c in self.containers if c.role == MAIN and c.proc is not None]
        others = [c for c in reversed(self.containers) if c.role != MAIN and c.proc is not None]
        if mains or others:
            self.ctx.event(self.pod, "Killing", f"Stopping pod (grace period {grace:g}s)")
        for c in mains:
            self._pre_stop(c, deadline)
            if c.proc is not None:
                signal_group(c.proc.pid, signal.SIGTERM)
        self._wait_exit(mains, deadline)
        for c in others:
            if c.proc is not None:
                signal_group(c.proc.pid, signal.SIGTERM)
        self._wait_exit(others, deadline)
        for c in self.containers:
            if c.proc is not None:
                signal_group(c.proc.pid, signal.SIGKILL)
        self._wait_exit(self.containers, time.monotonic() + 5.0)
        self.policy = "Never"  # a deleted pod restarts nothing: its phase becomes terminal
        if self.sandbox or self.last_status is not None:
            self._write_status()
        self._teardown_sandbox()
        try:
            self.ctx.client.request(
                "DELETE",
                f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", self.ns, self.name, e)
        log.info("pod %s/%s: deleted after %.1fs grace", self.ns, self.name, grace)

    # --- status ----------------------------------------------------------------------------------------

    def _write_status(self) -> None:
        previous = (self.last_status or self.pod.get("status") or {}).get("conditions") or []
        view = PodView(
            restart_policy=self.policy,
            containers=[c.view for c in self.containers],
            pod_ip=self.pod_ip,
            host_ip=self.ctx.cfg.node_ip,
            start_time=self.start_time,
            sandbox_ready=self.sandbox,
            previous_conditions=previous,
        )
        status = build_pod_status(view, time.time())
        if not self.pod_ip:
            status.pop("podIP", None)
        if status == self.last_status:
            return
        try:
            self.ctx.client.request(
                "PATCH",
                f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                body={"metadata": {"uid": self.uid}, "status": status},
                content_type=STRATEGIC_PATCH,
            )
            self.last_status = status
        except ApiError as e:
            if e.status in (404, 409):  # deleted, or replaced by a pod with another UID
                self.gone = True
            log.debug("pod %s/%s: status write failed: %s", self.ns, self.name, e)
