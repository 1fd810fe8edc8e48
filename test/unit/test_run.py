"""`dask-operator run`: its flags and bind addresses."""

from __future__ import annotations

import pytest

from dask_operator.controller.cli import build_parser
from dask_operator.controller.run import parse_address


@pytest.mark.parametrize(
    ("value", "expected"),
    [(":8080", ("0.0.0.0", 8080)), ("127.0.0.1:9", ("127.0.0.1", 9)), ("0", None), ("", None)],
)
def test_bind_addresses(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_address(value) == expected


def test_run_flags() -> None:
    args = build_parser().parse_args(["run", "--namespace", "ns", "--leader-elect", "--concurrency", "8"])
    assert (args.command, args.namespace, args.leader_elect, args.concurrency) == ("run", "ns", True, 8)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--namespace", "ns", "--all-namespaces"])
