"""Demand per worker group: which group a task's resource restrictions send it to, and how many workers of
that group the waiting, running and next-up work (controller/demand_extension.py) warrants.

Invariant: pure functions of the scheduler's demand report (as parsed by the scheduler client) and the
groups' specs. Every restriction set goes to at most one group: among the groups whose workers offer every
resource it names in at least the amount asked, the one offering the fewest other resources (then the first
by name), so tasks without restrictions go to groups without resources and never grow a GPU group while a
plain group exists. A group's warrant is the sum over the sets routed to it of ceil(slots wanted / slots per
pod), where slots wanted = min(tasks, seconds / TARGET_DURATION) and a pod's slots for a set are its threads
limited by how many such tasks its resources hold at once; any routed task warrants at least one worker.
A group whose workers are the only ones left while the cluster holds data keeps one worker
(`data_floor`): retiring the last worker cannot move its data anywhere, so going to zero would lose it.
Held by test/unit/test_demand.py.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Seconds of work one thread should have queued before another worker is warranted (Dask's own
# `distributed.adaptive.target-duration` default).
TARGET_DURATION = 5.0
# Worker resources given through the environment, as Dask reads them (it lowercases the name).
RESOURCES_ENV_PREFIX = "DASK_DISTRIBUTED__WORKER__RESOURCES__"
WORKER_CONTAINER = "worker"

Restrictions = tuple[tuple[str, float], ...]  # a resource-restriction set, sorted by name


@dataclass(frozen=True)
class Need:
    """The tasks of one restriction set that are queued, unrunnable or processing, and their expected
    seconds of work."""

    resources: Restrictions
    tasks: int
    seconds: float


@dataclass(frozen=True)
class Holding:
    """A worker as the demand report names it, with the bytes of data it holds."""

    name: str
    nbytes: int = 0


@dataclass(frozen=True)
class SchedulerDemand:
    """The scheduler's demand report: one Need per restriction set, and the workers with their data."""

    needs: tuple[Need, ...] = ()
    truncated: bool = False
    workers: tuple[Holding, ...] = ()

    def tasks_needing(self, resources: Mapping[str, float]) -> int:
        key = restrictions(resources)
        return sum(n.tasks for n in self.needs if n.resources == key)


@dataclass(frozen=True)
class DemandAnswer:
    """What the scheduler said about its demand: the extension's report, or (`demand` None: the scheduler
    has no demand route) its adaptive target, which is about the whole cluster."""

    demand: SchedulerDemand | None
    adaptive_target: int | None = None
    why_no_demand: str = ""


@dataclass(frozen=True)
class GroupProfile:
    """What one worker pod of a group offers, read from the group's worker container."""

    name: str
    resources: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1  # per Dask worker; 1 when `--nthreads` is not given (the pod's CPUs are unknown here)
    workers: int = 1  # Dask workers per pod (`--nworkers`)


def restrictions(resources: Mapping[str, float]) -> Restrictions:
    return tuple(sorted((str(k), float(v)) for k, v in resources.items()))


def _words(container: Mapping[str, Any]) -> list[str]:
    """The container's command and args as words; a whole command line in one word (`sh -c "dask worker
    --resources GPU=1"`) is split too, a value with spaces (`--resources`, `"GPU=1 MEM=2"`) is not."""
    words: list[str] = []
    for word in map(str, [*(container.get("command") or []), *(container.get("args") or [])]):
        try:
            words += shlex.split(word) if " --" in word else [word]
        except ValueError:
            words.append(word)
    return words


def _option(words: Sequence[str], name: str) -> str | None:
    """The last value of `--name V` or `--name=V` in `words`."""
    found = None
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            found = words[i + 1]
        elif word.startswith(name + "="):
            found = word.split("=", 1)[1]
    return found


def _resources_of(text: str) -> dict[str, float]:
    """`GPU=1 MEM=10e9` or `GPU=1,MEM=10e9`, as `dask worker --resources` reads it; bad pairs are skipped."""
    found: dict[str, float] = {}
    for pair in text.replace(",", " ").split():
        name, _, amount = pair.partition("=")
        try:
            value = float(amount)
        except ValueError:
            continue
        if name and math.isfinite(value) and value >= 0:
            found[name] = value
    return found


def _count(text: str | None) -> int:
    try:
        return max(1, int(text)) if text is not None else 1
    except ValueError:
        return 1


def group_profile(group: Mapping[str, Any]) -> GroupProfile:
    """A group's workers as its spec declares them: `--resources`, `--nthreads`, `--nworkers` of its worker
    container (named `worker`, else the first) and `DASK_DISTRIBUTED__WORKER__RESOURCES__*` variables."""
    containers = (((group.get("spec") or {}).get("worker") or {}).get("spec") or {}).get("containers") or []
    named = [c for c in containers if isinstance(c, dict) and c.get("name") == WORKER_CONTAINER]
    container = (
        named[0] if named else (containers[0] if containers and isinstance(containers[0], dict) else {})
    )
    words = _words(container)
    resources = _resources_of(_option(words, "--resources") or "")
    for variable in container.get("env") or []:
        name = str(variable.get("name") or "")
        if name.startswith(RESOURCES_ENV_PREFIX) and isinstance(variable.get("value"), str):
            resources.update(
                _resources_of(f"{name[len(RESOURCES_ENV_PREFIX) :].lower()}={variable['value']}")
            )
    workers = _option(words, "--nworkers") or _option(words, "--nprocs")
    return GroupProfile(
        str(group.get("metadata", {}).get("name", "")),
        resources,
        _count(_option(words, "--nthreads")),
        _count(workers),
    )


def offers(profile: GroupProfile, need: Restrictions) -> bool:
    return all(profile.resources.get(name, 0.0) >= amount for name, amount in need)


def route(need: Restrictions, profiles: Sequence[GroupProfile]) -> str | None:
    """The group a restriction set's tasks grow, or None when no group's workers can run them."""
    able = [p for p in profiles if offers(p, need)]
    if not able:
        return None
    asked = {name for name, _ in need}
    return min(able, key=lambda p: (len(set(p.resources) - asked), p.name)).name


def slots_per_pod(profile: GroupProfile, need: Restrictions) -> int:
    """Tasks of this set one pod of the group runs at once: threads, limited by the resources."""
    per_worker = profile.threads
    for name, amount in need:
        if amount > 0:
            per_worker = min(per_worker, math.floor(profile.resources.get(name, 0.0) / amount))
    return max(1, per_worker) * profile.workers


def warranted_workers(
    demand: SchedulerDemand,
    profiles: Sequence[GroupProfile],
    group: str,
    target_duration: float = TARGET_DURATION,
) -> int:
    """Worker pods of `group` that the demand routed to it warrants (before the autoscaler's bounds)."""
    by_name = {p.name: p for p in profiles}
    profile = by_name.get(group)
    if profile is None:
        return 0
    total = 0
    for need in demand.needs:
        if need.tasks <= 0 or route(need.resources, profiles) != group:
            continue
        wanted = min(float(need.tasks), need.seconds / target_duration)
        total += max(1, math.ceil(wanted / slots_per_pod(profile, need.resources)))
    return total


def unroutable(demand: SchedulerDemand, profiles: Sequence[GroupProfile]) -> list[Need]:
    """Needs no group can run (e.g. tasks asking for a resource no group's workers declare)."""
    return [n for n in demand.needs if n.tasks > 0 and route(n.resources, profiles) is None]


def _runs_in(worker: str, pods: Collection[str]) -> bool:
    """Workers are named after their pod (`--name $(DASK_WORKER_NAME)`); `--nworkers N` appends `-0..-N-1`."""
    if worker in pods:
        return True
    base, _, number = worker.rpartition("-")
    return number.isdigit() and base in pods


def data_floor(demand: SchedulerDemand, group_pods: Collection[str]) -> int:
    """1 when the cluster's workers hold data and every one of them runs in this group's pods (no other
    worker could take the data if these went), else 0."""
    if not any(w.nbytes > 0 for w in demand.workers):
        return 0
    return 0 if any(not _runs_in(w.name, group_pods) for w in demand.workers) else 1
