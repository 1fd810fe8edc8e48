"""How a worker pod leaves when something other than the operator deletes it (a drain, an eviction, `kubectl
delete pod`), and how much of a group a drain may take at once.

Invariant: pure functions. Every worker pod made from a template gets a `preStop` hook on its worker
container (unless the user set one) that asks the scheduler to retire the pod's own workers, by the names the
operator gives them (`DASK_WORKER_NAME`, with `-0..-N` for `--nworkers`), and waits for the answer within the
pod's `terminationGracePeriodSeconds` minus a margin, so SIGTERM only reaches workers whose data has moved; the
retired workers stay connected until that SIGTERM, so the container outlives the hook.
The hook is plain Python with `distributed` (what every Dask image has), never imports dask_operator, speaks
TLS with the worker's own credentials for a `tls://` scheduler, says so in the kubelet's FailedPreStopHook Event
when the image has no usable `distributed`, bounds every call by what is left of its budget, and
does nothing when the pod's workers are already gone (the operator retired them before deleting the pod).
A group with `spec.worker.disruptionBudget` has exactly one PodDisruptionBudget, named after it, owned by
it, selecting its worker pods. Held by test/unit/test_drain.py (the hook run against a real scheduler).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from dask_operator.api.v1.names import worker_selector_labels
from dask_operator.controller.contract.children import owner_reference
from dask_operator.controller.contract.objects import Obj

# Worker pods without a terminationGracePeriodSeconds of their own get this one (Kubernetes' default of 30 s
# leaves little time to move a busy worker's data).
DEFAULT_WORKER_GRACE_SECONDS = 60.0
# Of the grace period, this much is left to the worker to close after SIGTERM (and Python to start the hook).
HOOK_MARGIN_SECONDS = 5.0
WORKER_CONTAINER_NAME = "worker"

# The preStop hook, run as `python -c HOOK <seconds>`. Exit 0: nothing to do, every worker of this pod was
# retired (its data now lives on other workers), or there is no scheduler to ask (without it the workers'
# data is unreachable anyway, e.g. while the whole cluster is deleted). Exit 1, with a sentence the kubelet's
# FailedPreStopHook Event shows: the scheduler could not move the data, or not within the time.
PRESTOP_HOOK = """\
import asyncio, os, re, sys, time

try:
    from distributed.core import rpc
    from distributed.security import Security
except ImportError as e:
    sys.exit(f"this image's Python has no usable distributed ({e}): cannot retire this pod's workers")

async def retire(name, address, deadline):
    # tls:// schedulers: the credentials the worker itself uses (DASK_DISTRIBUTED__COMM__TLS__* variables).
    args = Security().get_connection_args("client")
    connect = max(0.5, min(5.0, deadline - time.monotonic()))
    async with rpc(address, timeout=connect, connection_args=args) as scheduler:
        workers = (await scheduler.identity())["workers"]
        own = re.compile(re.escape(name) + r"(-[0-9]+)?")
        mine = sorted(a for a, w in workers.items() if own.fullmatch(str(w.get("name", ""))))
        if not mine:
            return "no worker of " + name + " is connected: nothing to retire"
        # remove=False: the workers stay connected, closing gracefully (no new tasks; the scheduler drops their
        # copies first), until the kubelet's SIGTERM after this hook. Removed, a worker closes itself at once and
        # its container could end while the kubelet still runs this hook: a FailedPreStopHook with nothing lost.
        retired = await scheduler.retire_workers(workers=mine, close_workers=False, remove=False)
        kept = sorted(set(mine) - set(retired or {}))
        if kept:
            sys.exit("the scheduler could not retire " + ", ".join(kept) + " (no other worker took the data)")
        return "retired " + ", ".join(mine)

name, address = os.environ.get("DASK_WORKER_NAME"), os.environ.get("DASK_SCHEDULER_ADDRESS")
if not name or not address:
    sys.exit("DASK_WORKER_NAME or DASK_SCHEDULER_ADDRESS is not set: cannot retire this pod's workers")
budget = float(sys.argv[1])
try:
    print(asyncio.run(asyncio.wait_for(retire(name, address, time.monotonic() + budget), budget)))
except (asyncio.TimeoutError, TimeoutError):
    sys.exit(f"retiring {name} took longer than {budget:g} s: data not moved yet is lost")
except OSError as e:  # no scheduler (e.g. the whole cluster is being deleted): its workers' data is gone anyway
    print(f"cannot reach the scheduler at {address} to retire {name}: {e}")
"""


def hook_budget(grace_seconds: float) -> float:
    """Seconds the hook may wait for the scheduler within a grace period (at least 1)."""
    return max(1.0, grace_seconds - HOOK_MARGIN_SECONDS)


def prestop_hook(grace_seconds: float) -> Obj:
    return {"exec": {"command": ["python", "-c", PRESTOP_HOOK, f"{hook_budget(grace_seconds):g}"]}}


def worker_container_index(containers: list[Obj]) -> int | None:
    """The container running the Dask worker: the one named `worker`, else the first."""
    if not containers:
        return None
    named = [i for i, c in enumerate(containers) if c.get("name") == WORKER_CONTAINER_NAME]
    return named[0] if named else 0


def with_drain_hook(spec: Mapping[str, Any], default_grace: float) -> Obj:
    """A worker pod spec whose worker hands its data over before it stops.

    The user's terminationGracePeriodSeconds and preStop hook are kept; `default_grace` fills the former.
    A grace period of 0 (SIGKILL at once) or `default_grace` 0 with none set leaves the spec as it was.
    """
    out = copy.deepcopy(dict(spec))
    user_grace = out.get("terminationGracePeriodSeconds")
    grace = float(user_grace) if user_grace is not None else default_grace
    if grace <= 0:
        return out
    containers = out.get("containers") or []
    index = worker_container_index(containers)
    if index is None:
        return out
    container = containers[index]
    lifecycle = container.get("lifecycle") or {}
    if "preStop" in lifecycle:
        return out  # the user's own hook: theirs to make lossless
    if user_grace is None:
        out["terminationGracePeriodSeconds"] = int(grace)
    container["lifecycle"] = {**lifecycle, "preStop": prestop_hook(grace)}
    return out


# -- PodDisruptionBudget ------------------------------------------------------------------------------------


def disruption_budget_name(group_name: str) -> str:
    return group_name


def desired_disruption_budget(group: Mapping[str, Any]) -> Obj | None:
    """The group's PodDisruptionBudget (policy/v1), or None when `spec.worker.disruptionBudget` is unset."""
    budget = group["spec"]["worker"].get("disruptionBudget")
    if not budget:
        return None
    meta = group["metadata"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": disruption_budget_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": worker_selector_labels(group["spec"]["cluster"], meta["name"]),
            "ownerReferences": [owner_reference(group)],
        },
        "spec": {
            "maxUnavailable": budget["maxUnavailable"],
            "selector": {"matchLabels": worker_selector_labels(group["spec"]["cluster"], meta["name"])},
        },
    }
