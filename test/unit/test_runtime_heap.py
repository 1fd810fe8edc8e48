"""runtime/heap.py: on glibc, trim() gives freed heap pages back to the OS (the RSS falls); without glibc every
call is a no-op that returns False; the Trimmer trims on its own thread and stops."""

from __future__ import annotations

import os
import time

import pytest

from dask_operator.runtime import heap

glibc = pytest.mark.skipif(not heap.available(), reason="glibc only")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@glibc
def test_trim_gives_freed_heap_pages_back_to_the_os() -> None:
    assert heap.limit_arenas()
    # 64 MiB of heap chunks (above pymalloc's 512 bytes, below malloc's mmap threshold), then free 15 in 16:
    # the holes are inside the heap, where free() alone never returns them
    chunks = [bytes(16_000) for _ in range(4_096)]
    chunks = chunks[::16]
    held = rss_bytes()
    assert heap.trim()
    assert held - rss_bytes() > 32 * 2**20
    del chunks


def test_without_glibc_every_call_is_a_harmless_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_glibc", None)
    assert not heap.available()
    assert not heap.limit_arenas()
    assert not heap.trim()
    trimmer = heap.Trimmer(0.01)
    trimmer.start()
    trimmer.stop()


@glibc
def test_the_trimmer_trims_on_its_own_thread_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(time.monotonic()) or True)
    trimmer = heap.Trimmer(0.01)
    trimmer.start()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    assert len(calls) >= 3
    stopped = len(calls)
    time.sleep(0.05)
    assert len(calls) == stopped
