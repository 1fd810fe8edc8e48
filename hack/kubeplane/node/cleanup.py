"""Removes what a crashed node left behind, from `$STATE/node/resources.json` alone.

Invariant: only recorded things are touched. A recorded process group is signalled only while its
leader's /proc start time still matches (or, once the leader is gone, members whose group id is the
recorded PID and who started after it); every process inside a recorded netns is ours by construction.
Idempotent: running it twice, or after a clean shutdown, does nothing harmful.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from . import netns as net
from .process import proc_start_time
from .resources import load, resources_path


def _group_members(pgid: int, not_before: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and int(fields[19]) >= not_before:
            members.append(int(entry.name))
    return members


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _ours(record: dict[str, int]) -> list[int]:
    pid, start = int(record["pid"]), int(record["start_time"])
    if proc_start_time(pid) == start:
        return [pid, *(_group_members(pid, start))]
    return _group_members(pid, start)


def cleanup(state_dir: Path) -> None:
    """Kills recorded pod processes, deletes recorded netns, /etc/netns dirs, tmpfs mounts and the bridge."""
    state_dir = Path(state_dir)
    res = load(state_dir)
    victims: set[int] = set()
    for record in res.processes.values():
        victims.update(_ours(record))
    for ns in res.netns:
        victims.update(net.netns_pids(ns))
    victims.discard(os.getpid())
    if victims:
        _kill(sorted(victims), signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(proc_start_time(p) is not None for p in victims):
            time.sleep(0.05)
        _kill(sorted(victims), signal.SIGKILL)
    for ns, veth in res.netns.items():
        for pid in net.netns_pids(ns):  # anything that entered meanwhile
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        net.delete_pod_network(ns, veth)
    for mount in res.mounts:  # after the processes: nothing holds them any more
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    if res.bridge:
        net.delete_bridge(res.bridge)
    with contextlib.suppress(FileNotFoundError):
        resources_path(state_dir).unlink()
