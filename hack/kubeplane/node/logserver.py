"""What the kubelet's `/containerLogs/{ns}/{pod}/{c}` answers: which log file, which lines, and follow.

Invariant: supports follow, tailLines, previous, timestamps, sinceSeconds, sinceTime and limitBytes with
the kubelet's meanings; a follow stream ends when the container's output closes (or the reader stops
wanting more). Served by kubeletserver.py; held by test/e2e/test_process_node.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import logfiles


class LogUnavailable(Exception):
    """The request cannot be answered; `status` is the HTTP status the kubelet would give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def container_logs(pod_dir: Path, container: str) -> list[Path]:
    """Log files of one container, oldest start first."""
    cdir = pod_dir / container
    if not cdir.is_dir():
        return []
    files = [p for p in cdir.glob("*.log") if p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


@dataclass(frozen=True)
class LogRequest:
    previous: bool = False
    follow: bool = False
    tail: int | None = None
    since: float | None = None
    timestamps: bool = False
    limit: int | None = None

    @classmethod
    def from_query(cls, q: Mapping[str, str], now: float | None = None) -> LogRequest:
        now = time.time() if now is None else now
        previous = q.get("previous", "false").lower() == "true"
        since: float | None = None
        if q.get("sinceSeconds", "").isdigit():
            since = now - int(q["sinceSeconds"])
        elif q.get("sinceTime"):
            with contextlib.suppress(ValueError):
                since = logfiles.parse_ts(q["sinceTime"])
        return cls(
            previous=previous,
            follow=q.get("follow", "false").lower() == "true" and not previous,
            tail=int(q["tailLines"]) if q.get("tailLines", "").lstrip("-").isdigit() else None,
            since=since,
            timestamps=q.get("timestamps", "false").lower() == "true",
            limit=int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None,
        )


def log_file(req: LogRequest, pod_dir: Path, pod: str, container: str) -> Path:
    files = container_logs(pod_dir, container)
    if req.previous:
        if len(files) < 2:
            raise LogUnavailable(400, f'previous terminated container "{container}" in pod "{pod}" not found')
        return files[-2]
    if not files:
        raise LogUnavailable(400, f'container "{container}" in pod "{pod}" is waiting to start')
    return files[-1]


def log_chunks(
    req: LogRequest, path: Path, is_open: Callable[[Path], bool], wanted: Callable[[], bool]
) -> Iterator[bytes]:
    """The response body, chunk by chunk (blocking: follow polls the file)."""
    sent = 0

    def cut(line: logfiles.LogLine) -> bytes:
        nonlocal sent
        data = line.render(req.timestamps)
        if req.limit is not None and sent + len(data) > req.limit:
            data = data[: max(0, req.limit - sent)]
        sent += len(data)
        return data

    def exhausted() -> bool:
        return req.limit is not None and sent >= req.limit

    size = path.stat().st_size
    batch = b"".join(cut(ln) for ln in logfiles.select_lines(logfiles.read_lines(path), req.tail, req.since))
    if batch:
        yield batch
    if not req.follow or exhausted():
        return
    for line in logfiles.follow(path, size, lambda: is_open(path) and wanted()):
        yield cut(line)
        if exhausted():
            return
