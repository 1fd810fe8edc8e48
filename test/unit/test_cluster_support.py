"""The small pieces around the cluster reconcilers: expectations, settings, addresses, CLI flags."""

from __future__ import annotations

import pytest

from dask_operator.controller.cli import build_parser
from dask_operator.controller.execute import _older
from dask_operator.controller.expectations import Expectations
from dask_operator.controller.run import parse_address
from dask_operator.controller.settings import from_dask_config


def test_expectations_hold_until_the_cache_shows_the_change_or_they_expire() -> None:
    exp = Expectations(ttl=30)
    exp.created("g", "pod-a", now=100)
    exp.deleted("g", "uid-b", now=100)
    assert exp.pending("g", observed_names=[], live_uids=["uid-b"], now=101) == ({"pod-a"}, {"uid-b"})
    # the cache caught up: pod-a is listed, uid-b is gone
    assert exp.pending("g", observed_names=["pod-a"], live_uids=[], now=102) == (frozenset(), frozenset())
    exp.created("g", "pod-c", now=100)
    assert exp.pending("g", observed_names=[], live_uids=[], now=131) == (frozenset(), frozenset())
    exp.created("h", "pod-d", now=100)
    exp.forget("h")
    assert exp.pending("h", [], [], now=101) == (frozenset(), frozenset())


def test_settings_read_the_reference_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask.config

    with dask.config.set(
        {
            "kubernetes.controller.worker-allocation.batch-size": 3,
            "kubernetes.controller.worker-allocation.delay": 2,
            "kubernetes.controller.events.enabled": "false",
        }
    ):
        settings = from_dask_config(cluster_domain="example.org", force_scale_down_after=None)
    assert (settings.batch_size, settings.batch_delay, settings.events_enabled) == (3, 2.0, False)
    assert settings.cluster_domain == "example.org" and settings.force_scale_down_after == 300
    assert from_dask_config().batch_size is None


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


def test_a_cache_older_than_our_status_write_is_recognised() -> None:
    assert _older("41", "42") and not _older("42", "42") and not _older("43", "42")
    assert not _older(None, "42") and not _older("abc", "42")
