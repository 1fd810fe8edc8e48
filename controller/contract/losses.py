"""Data a cluster lost, as its status says it: a worker killed while it held data (SIGKILL, the OOM killer,
an eviction), and a scheduler that restarted (Dask keeps a cluster's whole state in the scheduler's memory).

Invariant: pure functions of the observed pods, the previous conditions and `now`. A loss is reported for
LOSS_REPORT_SECONDS after it happened (a condition that then clears by itself) and its Warning Event is
produced exactly once: the condition's message names every loss it reports, and an Event is produced only
for a loss the previous message did not name, so a requeue or an operator restart never repeats one.
Held by test/unit/test_losses.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dask_operator.controller.contract.conditions import Condition, EventSpec, find_condition
from dask_operator.controller.contract.objects import parse_rfc3339, rfc3339

CONDITION_WORKER_LOST = "WorkerLost"
CONDITION_SCHEDULER_RESTARTED = "SchedulerRestarted"
REASON_WORKER_KILLED = "WorkerKilled"
REASON_SCHEDULER_STATE_LOST = "SchedulerStateLost"

# How long a loss stays True on the status: long enough for an alert and a user's `kubectl describe`;
# the Event and the counter keep the record after that.
LOSS_REPORT_SECONDS = 600.0

# A container killed from outside its process: SIGKILL (128 + 9, the OOM killer's signal), or an exit the
# kubelet marks OOMKilled. (A worker asked to stop by SIGTERM closes itself and exits 0.)
_KILLED_EXIT_CODE = 137


# What the upstream kubelet writes for a container it cannot show a real end for when the pod stops: exit
# code 137 with this reason and no startedAt. For a deleted pod that is a container that never ran there (the
# pod was deleted while its image or sandbox was being prepared, e.g. a scale-down of a pod that never
# started): nothing ran, so nothing was lost.
_PLACEHOLDER_REASON = "ContainerStatusUnknown"


def _never_ran_in_a_deleted_pod(terminated: Mapping[str, Any], deleted: bool) -> bool:
    return deleted and terminated.get("reason") == _PLACEHOLDER_REASON and not terminated.get("startedAt")


# A pod deleted because its node is gone (no retirement: the worker's process died with the node).
# Evictions through the API (a drain) are not here: a drained worker may hand its data over first.
_NODE_LOST_REASONS = frozenset({"DeletionByTaintManager", "DeletionByPodGC"})


@dataclass(frozen=True)
class Loss:
    """One container of one pod that stopped without being asked to: when, and how."""

    pod: str
    container: str
    how: str  # "exit code 137 (OOMKilled)", "evicted: ..."
    at: float  # when it stopped (the kubelet's finishedAt, else when the operator saw it)
    restart: int  # restartCount at the time: two kills of one container are two losses

    @property
    def identity(self) -> str:
        """The words the condition's message carries for this loss (and the Event test against it)."""
        return f"{self.pod}/{self.container} {self.how} at {rfc3339(self.at)}"


def _terminated_abnormally(terminated: Mapping[str, Any]) -> str | None:
    code = terminated.get("exitCode")
    reason = terminated.get("reason") or ""
    signal = terminated.get("signal")
    if code == _KILLED_EXIT_CODE or signal == 9 or reason == "OOMKilled":
        return f"exit code {code}" + (f" ({reason})" if reason == "OOMKilled" else "")
    return None


def container_losses(pod: Mapping[str, Any], now: float, any_exit: bool = False) -> list[Loss]:
    """Containers of `pod` that were killed (or, with `any_exit`, stopped at all) and restarted or finished.

    A restarted container shows the kill in `lastState.terminated`; a finished pod in `state.terminated`;
    an evicted pod in its status' reason; a pod deleted with its lost node in its DisruptionTarget condition.
    The kubelet's placeholder for a container that never ran in a deleted pod is not a kill.
    """
    meta = pod.get("metadata", {})
    status = pod.get("status", {})
    name = str(meta.get("name"))
    out: list[Loss] = []
    for cs in status.get("containerStatuses") or []:
        restarts = int(cs.get("restartCount") or 0)
        for terminated, restart in (
            ((cs.get("lastState") or {}).get("terminated"), restarts),
            ((cs.get("state") or {}).get("terminated"), restarts + 1),
        ):
            if not terminated or (restart == restarts and restarts == 0):
                continue
            if _never_ran_in_a_deleted_pod(terminated, bool(meta.get("deletionTimestamp"))):
                continue
            how = _terminated_abnormally(terminated)
            if how is None and any_exit:
                how = f"exit code {terminated.get('exitCode')}"
            if how is not None:
                at = parse_rfc3339(terminated.get("finishedAt")) or now
                out.append(Loss(name, str(cs.get("name")), how, at, restart))
    if status.get("phase") == "Failed" and status.get("reason") == "Evicted" and not out:
        at = parse_rfc3339(meta.get("deletionTimestamp")) or now
        out.append(Loss(name, "*", f"evicted ({status.get('message') or 'no message'})", at, 0))
    lost_node = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "DisruptionTarget"
         and c.get("status") == "True" and c.get("reason") in _NODE_LOST_REASONS),
        None,
    )  # fmt: skip
    if lost_node is not None and meta.get("deletionTimestamp"):
        at = parse_rfc3339(lost_node.get("lastTransitionTime")) or now
        out.append(Loss(name, "*", f"deleted with its lost node ({lost_node['reason']})", at, 0))
    return out


@dataclass(frozen=True)
class LossReport:
    """A loss condition, the Events of losses not reported before, and when to look again (it clears)."""

    condition: Condition
    events: tuple[EventSpec, ...] = ()
    wake_in: float | None = None


def _wake(
    losses: Sequence[Loss], previous: Sequence[Mapping[str, Any]] | None, kind: str, now: float
) -> float:
    """Seconds until the report of `losses` (or the remembered one) runs out, plus a second."""
    if losses:
        return max(1.0, losses[0].at + LOSS_REPORT_SECONDS - now + 1.0)
    since = parse_rfc3339((find_condition(previous, kind) or {}).get("lastTransitionTime")) or now
    return max(1.0, since + LOSS_REPORT_SECONDS - now + 1.0)


def recent(losses: Iterable[Loss], now: float) -> list[Loss]:
    """The losses still reported, newest first."""
    return sorted((x for x in losses if now - x.at < LOSS_REPORT_SECONDS), key=lambda x: (-x.at, x.pod))


def _previous_message(previous: Sequence[Mapping[str, Any]] | None, kind: str) -> str:
    cond = find_condition(previous, kind)
    return str(cond.get("message") or "") if cond and cond.get("status") == "True" else ""


def _remembered(previous: Sequence[Mapping[str, Any]] | None, kind: str, now: float) -> str:
    """The previous True message of `kind` while it is still reported (losses whose pod is gone live on
    only there: a replaced finished pod, a scheduler pod recreated under its fixed name)."""
    cond = find_condition(previous, kind)
    if not cond or cond.get("status") != "True":
        return ""
    since = parse_rfc3339(cond.get("lastTransitionTime"))
    return str(cond.get("message") or "") if since is not None and now - since < LOSS_REPORT_SECONDS else ""


# -- workers ----------------------------------------------------------------------------------------------


def worker_lost(
    pods: Iterable[Mapping[str, Any]], previous: Sequence[Mapping[str, Any]] | None, now: float
) -> LossReport:
    """The group's WorkerLost condition and a Warning Event per worker killed since the last report."""
    losses = recent((x for p in pods for x in container_losses(p, now)), now)
    before = _previous_message(previous, CONDITION_WORKER_LOST)
    if not losses:
        kept = _remembered(previous, CONDITION_WORKER_LOST, now)
        if kept:  # the killed pod was replaced: keep reporting it until its time is up
            cond = Condition(CONDITION_WORKER_LOST, True, REASON_WORKER_KILLED, kept)
            return LossReport(cond, (), _wake(losses, previous, CONDITION_WORKER_LOST, now))
        return LossReport(Condition(CONDITION_WORKER_LOST, False, "NoneLost", ""))
    message = (
        "Workers killed while holding data, which is lost with them (persisted keys only they held are "
        "recomputed; scattered data is gone): " + "; ".join(x.identity for x in losses) + "."
    )
    events = [
        EventSpec(
            "Warning",
            CONDITION_WORKER_LOST,
            f"Worker pod {x.pod} (container {x.container}) was killed ({x.how}) at {rfc3339(x.at)}: the data "
            "it held in memory was lost; Dask recomputes the persisted keys only it held, scattered data is "
            "gone. Check its memory limit.",
        )
        for x in losses
        if x.identity not in before
    ]
    cond = Condition(CONDITION_WORKER_LOST, True, REASON_WORKER_KILLED, message)
    return LossReport(cond, tuple(events), _wake(losses, previous, CONDITION_WORKER_LOST, now))


# -- the scheduler ----------------------------------------------------------------------------------------


def scheduler_restarted(
    scheduler_pods: Iterable[Mapping[str, Any]], previous: Sequence[Mapping[str, Any]] | None, now: float
) -> LossReport:
    """The cluster's SchedulerRestarted condition (reason SchedulerStateLost) and its Warning Event.

    Any stop of a scheduler container loses the cluster's state (tasks, futures, who holds which key), so
    every exit counts, not only kills. It clears LOSS_REPORT_SECONDS after the last restart.
    """
    pods = list(scheduler_pods)
    losses = recent((x for p in pods for x in container_losses(p, now, any_exit=True)), now)
    before = _previous_message(previous, CONDITION_SCHEDULER_RESTARTED)
    if not losses:
        kept = _remembered(previous, CONDITION_SCHEDULER_RESTARTED, now)
        if kept:
            cond = Condition(CONDITION_SCHEDULER_RESTARTED, True, REASON_SCHEDULER_STATE_LOST, kept)
            return LossReport(cond, (), _wake(losses, previous, CONDITION_SCHEDULER_RESTARTED, now))
        return LossReport(Condition(CONDITION_SCHEDULER_RESTARTED, False, "StateKept", ""))
    last = losses[0]
    message = (
        f"The scheduler restarted ({last.pod}/{last.container} {last.how} at {rfc3339(last.at)}): the cluster "
        "lost its state (tasks, futures, persisted and scattered data); clients must submit their work again."
    )
    deleted = any(
        p.get("metadata", {}).get("name") == last.pod and p.get("metadata", {}).get("deletionTimestamp")
        for p in pods
    )
    then = "when its pod was deleted" if deleted else "and was restarted"
    events = []
    if last.identity not in before:
        events.append(
            EventSpec(
                "Warning",
                REASON_SCHEDULER_STATE_LOST,
                f"Scheduler pod {last.pod} stopped ({last.how}) at {rfc3339(last.at)} {then}: the cluster lost "
                "its state (tasks, futures, persisted and scattered data) by Dask's design; clients must submit "
                "their work again.",
            )
        )
    cond = Condition(CONDITION_SCHEDULER_RESTARTED, True, REASON_SCHEDULER_STATE_LOST, message)
    return LossReport(cond, tuple(events), _wake(losses, previous, CONDITION_SCHEDULER_RESTARTED, now))
