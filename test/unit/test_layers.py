"""The layers in setup.cfg cover the whole package, and what the code says about its tests is true.

`lint-imports` checks the one `layers` contract; these checks keep it honest: a module in no layer escapes
it, so every module under dask_operator must sit in one (or below one). And every docstring or comment
that says a test holds it names a test file that exists.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dask_operator"


def _modules() -> list[str]:
    """Every module under dask_operator (the api and controller folders through their symlinks)."""
    found = []
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        base = Path(folder).relative_to(PACKAGE)
        for file in files:
            if file.endswith(".py"):
                parts = ["dask_operator", *base.parts, file[:-3]]
                if parts[-1] == "__init__":
                    parts.pop()
                found.append(".".join(parts))
    return sorted(found)


def _layers() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    raw = config["importlinter:contract:layers"]["layers"]
    return [m.strip() for line in raw.splitlines() for m in re.split(r"[:|]", line) if m.strip()]


def test_every_module_is_in_a_layer() -> None:
    layers = _layers()
    outside = [
        m
        for m in _modules()
        if not any(m == layer or m.startswith(layer + ".") or layer.startswith(m + ".") for layer in layers)
    ]  # a module is in a layer, or is a package that holds layers (dask_operator, dask_operator.controller)
    assert not outside, f"modules in no layer of setup.cfg's layers contract: {outside}"


def test_every_layer_names_a_module() -> None:
    modules = set(_modules())
    assert [layer for layer in _layers() if layer not in modules] == []


HELD_BY = re.compile(r"[Hh]eld\s+by\b(.{0,400}?)(?:\.\s|\.$|\"\"\"|$)", re.DOTALL)
TEST_PATH = re.compile(r"(test/[\w/]+\.py|test_\w+\.py)")


def _sources() -> list[Path]:
    files = []
    for folder, _, names in os.walk(PACKAGE, followlinks=True):
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return files


def _exists(reference: str) -> bool:
    if "/" in reference:
        return (ROOT / reference).is_file()
    return any(ROOT.joinpath("test").rglob(reference))


def test_every_held_by_names_a_test_that_exists() -> None:
    missing = []
    for path in _sources():
        text = path.read_text()
        for match in HELD_BY.finditer(text):
            named = TEST_PATH.findall(match.group(1))
            missing += [f"{path.relative_to(PACKAGE)}: {ref}" for ref in named if not _exists(ref)]
    assert missing == [], "held by tests that do not exist"


def test_no_reference_to_documents_outside_the_repository() -> None:
    outside = re.compile(r"ARCHITECTURE|research/|/work/shared|STYLE\.md")
    found = [str(p.relative_to(PACKAGE)) for p in _sources() if outside.search(p.read_text())]
    assert found == []
    assert not outside.search((ROOT / "setup.cfg").read_text())


def test_obj_is_declared_once() -> None:
    declared = [
        str(p.relative_to(PACKAGE)) for p in _sources() if re.search(r"^Obj = ", p.read_text(), re.MULTILINE)
    ]
    assert declared == ["runtime/objects.py"]


def test_label_and_annotation_keys_are_written_once() -> None:
    """A key of the dask.org, kubernetes.dask.org or kueue.x-k8s.io prefixes is a string literal only where its
    constant is declared (api/v1/names.py), never beside it."""
    key = re.compile(r"[\"'](?:kubernetes\.)?dask\.org/[a-z-]+[\"']|[\"']kueue\.x-k8s\.io/[a-z-]+[\"']")
    found = [
        f"{p.relative_to(PACKAGE)}: {m.group(0)}"
        for p in _sources()
        if p.name != "names.py"
        for m in key.finditer(p.read_text())
    ]
    assert found == []
