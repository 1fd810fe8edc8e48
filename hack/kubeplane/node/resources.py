"""The node's record of what it created on the host: `$STATE/node/resources.json`.

Invariant: a resource is recorded *before* it is created and forgotten only *after* it is removed, so
after a crash (`kill -9`) the file names a superset of what exists; the file is replaced atomically.
Processes are recorded with their /proc start time, so a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Resources:
    bridge: str = ""
    netns: dict[str, str] = field(default_factory=dict)  # netns name -> host veth name
    processes: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> {pid, start_time}
    mounts: list[str] = field(default_factory=list)  # host mount points (emptyDir tmpfs)

    def to_json(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge,
            "netns": self.netns,
            "processes": self.processes,
            "mounts": self.mounts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resources:
        return cls(
            bridge=str(data.get("bridge", "")),
            netns=dict(data.get("netns", {})),
            processes={k: dict(v) for k, v in data.get("processes", {}).items()},
            mounts=[str(m) for m in data.get("mounts", [])],
        )


def resources_path(state_dir: Path) -> Path:
    return state_dir / "node" / "resources.json"


def load(state_dir: Path) -> Resources:
    path = resources_path(state_dir)
    if not path.is_file():
        return Resources()
    return Resources.from_json(json.loads(path.read_text()))


class ResourceRecord:
    def __init__(self, state_dir: Path) -> None:
        self.path = resources_path(state_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.current = Resources()
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.current.to_json(), indent=1))
        tmp.replace(self.path)

    def set_bridge(self, bridge: str) -> None:
        with self._lock:
            self.current.bridge = bridge
            self._save()

    def add_netns(self, netns: str, veth: str) -> None:
        with self._lock:
            self.current.netns[netns] = veth
            self._save()

    def remove_netns(self, netns: str) -> None:
        with self._lock:
            if self.current.netns.pop(netns, None) is not None:
                self._save()

    def add_process(self, key: str, pid: int, start_time: int) -> None:
        with self._lock:
            self.current.processes[key] = {"pid": pid, "start_time": start_time}
            self._save()

    def remove_process(self, key: str) -> None:
        with self._lock:
            if self.current.processes.pop(key, None) is not None:
                self._save()

    def add_mount(self, path: str) -> None:
        with self._lock:
            if path not in self.current.mounts:
                self.current.mounts.append(path)
                self._save()

    def remove_mount(self, path: str) -> None:
        with self._lock:
            if path in self.current.mounts:
                self.current.mounts.remove(path)
                self._save()

    def clear(self) -> None:
        with self._lock:
            self.current = Resources()
            self._save()
