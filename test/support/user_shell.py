"""A user's shell for tests that type commands: `kubectl` and its plugins (kubectl-dask) from the venv,
talking to the plane. Registered as a plugin in test/conftest.py; used by test/e2e/test_kubectl_dask.py and
test/e2e/test_kubectl_dask_job.py.

Invariant: the commands run are the installed console scripts, found on PATH as a user's shell finds them,
never imported functions; nothing of the machine's own kubectl or kubeconfig is read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def user_env(plane: Any) -> dict[str, str]:
    """A shell where `kubectl` and its plugins come from the venv and talk to the plane."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "KUBECONFIG": str(plane.kubeconfig),
    }


def kubectl(
    env: dict[str, str], *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
