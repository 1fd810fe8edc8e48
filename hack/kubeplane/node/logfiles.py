"""Container logs: one pump thread copies every container's output into CRI-format files, and readers.

Invariant: a log file holds whole lines `<RFC3339Nano> <stream> F <text>` in arrival order, one file
per container start (`<container>/<restartCount>.log`), so `--previous` is the file before the
newest. A file is "open" until the container's output pipe reaches EOF; `follow` ends after that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_LINE = 16 * 1024


def rfc3339nano(ts: float) -> str:
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}000Z"


def parse_ts(text: str) -> float:
    base, _, frac = text.rstrip("Z").partition(".")
    d = dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    return d.timestamp() + (float("0." + frac) if frac else 0.0)


@dataclass(frozen=True)
class LogLine:
    ts: float
    stamp: str
    text: bytes  # including the trailing newline

    @classmethod
    def parse(cls, raw: bytes) -> LogLine | None:
        parts = raw.split(b" ", 3)
        if len(parts) < 4:
            return None
        stamp = parts[0].decode()
        try:
            ts = parse_ts(stamp)
        except ValueError:
            return None
        text = parts[3]
        return cls(ts=ts, stamp=stamp, text=text if text.endswith(b"\n") else text + b"\n")

    def render(self, timestamps: bool) -> bytes:
        return (self.stamp.encode() + b" " + self.text) if timestamps else self.text


class LogPump:
    """Reads all container pipes on one thread (no thread per container)."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Path]] = []
        self._open: set[Path] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="log pump", daemon=True)
        self._thread.start()

    def attach(self, fd: int, path: Path) -> None:
        """Takes ownership of `fd` (the read end of the container's stdout+stderr pipe)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        with self._lock:
            self._open.add(path)
            self._pending.append((fd, path))
        os.write(self._wake_w, b"x")

    def is_open(self, path: Path) -> bool:
        with self._lock:
            return path in self._open

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        buffers: dict[int, bytes] = {}
        files: dict[int, tuple[Path, object]] = {}
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                fd = key.fd
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 4096)
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for pfd, path in pending:
                        os.set_blocking(pfd, False)
                        files[pfd] = (path, open(path, "ab", buffering=0))  # noqa: SIM115
                        buffers[pfd] = b""
                        self._sel.register(pfd, selectors.EVENT_READ, path)
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                path, fh = files[fd]
                data = buffers[fd] + chunk
                lines = data.split(b"\n")
                rest = lines.pop()
                if not chunk:  # EOF: flush what is left and close
                    if rest:
                        lines.append(rest)
                    rest = b""
                while len(rest) > MAX_LINE:
                    lines.append(rest[:MAX_LINE])
                    rest = rest[MAX_LINE:]
                if lines:
                    stamp = rfc3339nano(time.time()).encode()
                    fh.write(b"".join(stamp + b" stdout F " + line + b"\n" for line in lines))  # type: ignore[attr-defined]
                buffers[fd] = rest
                if not chunk:
                    self._sel.unregister(fd)
                    os.close(fd)
                    fh.close()  # type: ignore[attr-defined]
                    del files[fd], buffers[fd]
                    with self._lock:
                        self._open.discard(path)


def read_lines(path: Path) -> list[LogLine]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines(keepends=True):
        parsed = LogLine.parse(line)
        if parsed is not None:
            out.append(parsed)
    return out


def select_lines(lines: list[LogLine], tail: int | None = None, since: float | None = None) -> list[LogLine]:
    if since is not None:
        lines = [ln for ln in lines if ln.ts >= since]
    if tail is not None and tail >= 0:
        lines = lines[-tail:] if tail else []
    return lines


def follow(path: Path, offset: int, still_open: Callable[[], bool], poll: float = 0.2) -> Iterator[LogLine]:
    """Yields lines appended after byte `offset` until the file is closed and fully read."""
    pending = b""
    while True:
        closed = not still_open()
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        offset += len(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            parsed = LogLine.parse(raw + b"\n")
            if parsed is not None:
                yield parsed
        if closed and not chunk:
            return
        time.sleep(poll)
