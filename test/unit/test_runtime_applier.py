"""The applier's pure pieces: which kinds' generation follows their spec, and when a live object holds an intent."""

from __future__ import annotations

import pytest

from dask_operator.runtime.applier import generation_tracks_spec, holds
from dask_operator.runtime.kinds import Kind


@pytest.mark.parametrize(
    ("group", "tracks"),
    [
        ("", False),  # core: a Service's generation need not move with its spec
        ("apps", False),
        ("policy", False),
        ("networking.k8s.io", False),
        ("kubernetes.dask.org", True),
        ("kueue.x-k8s.io", True),
        ("runtime.test.dask.org", True),
    ],
)
def test_only_custom_resources_are_trusted_to_move_their_generation_with_the_spec(
    group: str, tracks: bool
) -> None:
    assert generation_tracks_spec(Kind(group, "v1", "Thing", "things")) is tracks


def test_holds_compares_maps_key_by_key_and_everything_else_whole() -> None:
    intent = {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 1}], "size": 2}}
    live = {"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"}, "spec": {"ports": [{"port": 1}], "size": 2,
            "replicas": 3}}  # fmt: skip
    assert holds(live, intent)
    assert not holds({**live, "spec": {**live["spec"], "size": 3}}, intent)
    # a list the server defaulted into is not the list we applied: no skip on that evidence
    assert not holds({**live, "spec": {**live["spec"], "ports": [{"port": 1, "protocol": "TCP"}]}}, intent)
    assert not holds({**live, "metadata": {"labels": {}}}, intent)
    assert not holds({"spec": None}, {"spec": {"size": 1}})
