"""The chaos matrix (issue 16): every module here is a fault-injection story with real Dask data, marked
`chaos` so the default command deselects it (like `bench`), except the few also marked `chaos_smoke`
(a worker SIGKILL, a 20 s operator kill storm: about a minute), which the default command keeps. Run the
whole matrix with `hack/test test/chaos -m chaos`; the shared workload and its data ledger live in
test/support/chaos_workload.py.

Invariant: every test collected under test/chaos carries the `chaos` marker (added here, whatever the
module declares), so only those marked `chaos_smoke` run in the default suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.chaos)
