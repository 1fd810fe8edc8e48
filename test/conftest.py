"""Test-suite wiring: layer markers follow the directory a test lives in.

test/unit -> unit, test/integration -> integration, test/e2e -> e2e, test/bench -> bench,
test/realnode -> realnode. Benchmarks and real-node tests are deselected by the default command (setup.cfg).
"""

from __future__ import annotations

from pathlib import Path

import pytest

_LAYERS = ("unit", "integration", "e2e", "bench", "realnode")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))


# Fixtures shared by the integration and e2e layers: the control plane, a namespace per test; for e2e,
# the CRDs installed (`plane`) and an operator subprocess per test (`dask_operator`), in support.operator;
# a real Kueue for the modules that ask for it (`kueue`), in support.kueue; a user's shell (`user_env`), in
# support.user_shell.
pytest_plugins = ["support.fixtures", "support.operator", "support.kueue", "support.user_shell"]
