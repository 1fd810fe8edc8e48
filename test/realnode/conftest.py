"""The real-node plane for test/realnode: the session's plane when K8S_TEST_BACKEND=containerd, else one of
this module's own (upstream kubelet, containerd, runc; images from hack/build-images.sh). Only one plane of
real nodes runs at a time: they share the host's iptables through kube-proxy.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import KubePlane, _bin_dir, _default_dir

REAL_NODES = int(os.environ.get("K8S_TEST_NODES", "2"))


@contextlib.contextmanager
def own_real_plane(name: str, nodes: int) -> Iterator[KubePlane]:
    from kubeplane.plane import Plane, PlaneError, UpOptions

    opts = UpOptions(
        name=name, bin_dir=_bin_dir(), force=True, runtime="containerd", nodes=nodes, timeout=180.0
    )
    t0 = time.monotonic()
    try:
        plane = Plane.up(opts)
    except PlaneError as e:
        with contextlib.suppress(PlaneError, OSError):
            Plane.load(_default_dir(opts.name)).down()
        pytest.fail(f"plane of real nodes did not come up: {e}", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="kube-plane-real-") as tmp:
        kp = KubePlane("containerd", plane.kubeconfig, Path(tmp), plane)
        kp.up_seconds = time.monotonic() - t0
        try:
            yield kp
        finally:
            kp.close()
            with contextlib.suppress(PlaneError):
                plane.down()  # reads the recorded processes again: nodes a test restarted stop too


@pytest.fixture(scope="module")
def real_plane(request: pytest.FixtureRequest) -> Iterator[KubePlane]:
    if os.environ.get("K8S_TEST_BACKEND") == "containerd":
        yield request.getfixturevalue("kube_plane")
        return
    with own_real_plane(f"pytest-{os.getpid()}-realnode", REAL_NODES) as kp:
        yield kp
