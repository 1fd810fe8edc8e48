"""The host's PID of a process in a pod, on either kind of node, for tests that signal it from the host.

Invariant: a PID is returned only for a process that is provably the one asked for, never a guess. On the
process node a pod's processes share the host's PID namespace, so a PID seen inside the pod is the host's.
On a real node each container has a PID namespace of its own: the process is found by the last entry of
its `NSpid` (the PID the container saw) together with its cgroup, whose last part is the container's ID (the
kubelet's cgroupfs layout, `.../pod<uid>/<container id>`), so two containers' processes with the same PID
(every pause container is a PID 1) are never confused.
Held by test/unit/test_hostpid.py and by the chaos tests that SIGKILL a worker, a scheduler and the
operator's leader on both runtimes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def _nspid(status: str) -> list[int]:
    found = re.search(r"^NSpid:\s+(.+)$", status, re.MULTILINE)
    return [int(p) for p in found.group(1).split()] if found else []


def candidates(pid_in_pod: int, container_id: str, proc: Path = PROC) -> list[int]:
    """Host PIDs whose innermost PID is `pid_in_pod` and whose cgroup is the container `container_id`'s."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            nspid = _nspid((entry / "status").read_text())
            if not nspid or nspid[-1] != pid_in_pod:
                continue
            cgroups = (entry / "cgroup").read_text().splitlines()
        except OSError:  # the process ended while we looked
            continue
        if any(line.rstrip("/").endswith("/" + container_id) for line in cgroups):
            found.append(int(entry.name))
    return found


def host_pid(pod: dict[str, Any], pid_in_pod: int) -> int:
    """The host's PID of the process `pod`'s first container sees as `pid_in_pod` (e.g. a Dask
    `client.run(os.getpid)`)."""
    runtime, _, container_id = pod["status"]["containerStatuses"][0]["containerID"].partition("://")
    if runtime == "process":  # the process node: the host's PID namespace
        return pid_in_pod
    found = candidates(pid_in_pod, container_id)
    if len(found) != 1:
        raise LookupError(
            f"pod {pod['metadata']['name']}, container {container_id}: host PIDs for its PID {pid_in_pod}: {found}"
        )
    return found[0]


def container_pid(pod: dict[str, Any]) -> int:
    """The host's PID of the first process of `pod`'s first container (PID 1 in its namespace on a real node)."""
    runtime, _, pid = pod["status"]["containerStatuses"][0]["containerID"].partition("://")
    return int(pid) if runtime == "process" else host_pid(pod, 1)
