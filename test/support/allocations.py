"""Bytes a piece of code allocates in one module, measured with tracemalloc in a fresh interpreter.

Invariant: tracemalloc counts every thread's allocations, and in the whole suite an earlier test's
controllers and informers may still be applying and storing on their threads; so the measurement runs in a
new Python process, where only the measured code runs. Used by the memory tests of the runtime
(test_runtime_applier.py, test_runtime_store.py).
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

TEST_ROOT = Path(__file__).resolve().parents[1]


def grown_in(module_file: str, prepare: Callable[[], None], run: Callable[[], None]) -> int:
    """Bytes allocated in `module_file` (and still held) by `run`, after `prepare`, in this process."""
    tracemalloc.start()
    try:
        prepare()
        before = tracemalloc.take_snapshot()
        run()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, module_file)]
    return sum(
        s.size_diff for s in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    )


def in_fresh_interpreter(test_file: str, function: str) -> float:
    """`function()` of the test module `test_file` called in a new Python process: the number it returns."""
    module = Path(test_file).stem
    script = (
        f"import sys; sys.path[:0] = [{str(Path(test_file).parent)!r}, {str(TEST_ROOT)!r}]\n"
        f"from {module} import {function}\n"
        f"print({function}())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])
