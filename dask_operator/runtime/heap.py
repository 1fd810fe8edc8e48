"""The C heap under a long-running operator: few malloc arenas, and freed pages handed back to the OS.

Invariant: on glibc, `limit_arenas()` caps malloc at ARENA_MAX arenas (otherwise every thread that allocates
may get its own, up to 8 per core, each keeping its own freed pages), and `trim()` returns the free pages of
every arena to the OS (`malloc_trim(0)`: a burst, such as a LIST of thousands of objects, no longer sets the
process's RSS for good). Without glibc (musl, macOS) both do nothing and return False; neither ever raises.
`Trimmer` calls `trim()` every `interval` seconds on a daemon thread until stopped.
Held by test/unit/test_runtime_heap.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any

# glibc's mallopt parameter for the arena cap (malloc.h: #define M_ARENA_MAX -8)
M_ARENA_MAX = -8
# Two: the main thread's and one shared by every other thread (the workers, informers, HTTP servers).
ARENA_MAX = 2
DEFAULT_TRIM_INTERVAL = 5.0


def _load_glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim  # glibc only: musl has neither
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


_glibc = _load_glibc()


def available() -> bool:
    return _glibc is not None


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap malloc's arenas (call it before threads start: an arena, once made, stays); True if glibc took it."""
    if _glibc is None:
        return False
    return bool(_glibc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give free heap pages back to the OS; True if glibc released any."""
    if _glibc is None:
        return False
    return bool(_glibc.malloc_trim(0))


class Trimmer:
    """`trim()` every `interval` seconds on a daemon thread, from `start()` until `stop()`."""

    def __init__(self, interval: float = DEFAULT_TRIM_INTERVAL) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if _glibc is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            trim()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
