"""The package resolves only under the dask_operator namespace, and the console script exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask_operator
import dask_operator.api
import dask_operator.controller
from dask_operator.controller.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_subpackages_live_under_dask_operator() -> None:
    assert dask_operator.api.__name__ == "dask_operator.api"
    assert dask_operator.controller.__name__ == "dask_operator.controller"
    assert Path(dask_operator.api.__file__).resolve() == (REPO / "api" / "__init__.py").resolve()


def test_top_level_api_is_not_importable_from_elsewhere(tmp_path: Path) -> None:
    # A user's notebook folder with no api.py must not find ours as `api`.
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('api') is None else 1)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, "a top-level `api` module is importable outside the repository"
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('controller') is None else 1)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=tmp_path).returncode == 0


def test_console_script_help(capsys: object) -> None:
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "dask-operator" in out


def test_module_entry_point_matches_console_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dask_operator.controller", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: dask-operator" in result.stdout
