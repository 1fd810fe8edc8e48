"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's algorithm and timings.

Invariant: a candidate takes the lease only after it has seen the record unchanged for leaseDurationSeconds
on its own monotonic clock (never by comparing renewTime with local time); every write carries the
resourceVersion it read, so of two racing candidates at most one succeeds; a leader that cannot renew for
renew_deadline stops leading (is_leader turns false by the clock even while a renew hangs, and any
failure of the elector ends leadership); a clean shutdown releases the lease (holder "", duration 1 s).
Held by test/integration/test_runtime_leader.py, test/unit/test_runtime_handlers.py.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from dask_operator.runtime import metrics
from dask_operator.runtime.client import ApiError, Client, ConnectionFailure
from dask_operator.runtime.kinds import LEASE
from dask_operator.runtime.objects import Obj

log = structlog.get_logger("dask_operator.runtime.leaderelection")

JITTER_FACTOR = 1.2
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def micro_time(moment: datetime.datetime) -> str:
    """MicroTime as the API server parses it: always six fractional digits (isoformat drops them at .000000)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def default_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip()
    except OSError:
        raise ValueError(
            "unable to find the leader election namespace: please set LeaderElectionConfig.namespace"
        ) from None


@dataclass(frozen=True)
class LeaderElectionConfig:
    name: str
    namespace: str | None = None
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError("leader election needs lease_duration > renew_deadline > 1.2 * retry_period")


class LeaderElector:
    def __init__(
        self,
        client: Client,
        config: LeaderElectionConfig,
        *,
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.namespace = config.namespace or default_namespace()
        # own connections and a short timeout, so one hung request cannot eat the renew deadline
        self.client = client.clone(
            timeout=max(config.renew_deadline / 2, 1.0),
            connect_timeout=max(config.renew_deadline / 2, 1.0),
            max_attempts=1,
        )
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._lease: Obj | None = None  # the last Lease we read or wrote (carries its resourceVersion)
        self._observed_spec: Obj | None = None
        self._observed_time = 0.0
        self._leading = threading.Event()
        self._forbidden: str | None = None  # the API server's 403 on the lease, until an access succeeds
        self._status = metrics.LEADER_ELECTION_MASTER_STATUS.labels(config.name)
        self._status.set(0)
        self._log = log.bind(lease=f"{self.namespace}/{config.name}", identity=config.identity)

    @property
    def identity(self) -> str:
        return self.config.identity

    def is_leader(self) -> bool:
        """Leading, and the last successful renew is younger than renew_deadline: a renew attempt that
        hangs (a dead connection) ends leadership by the clock, before another candidate can take the
        lease (lease_duration > renew_deadline), not when the attempt finally fails."""
        return self._leading.is_set() and self._clock() < self._observed_time + self.config.renew_deadline

    def access_check(self) -> str | None:
        """For /readyz: fails while the API server forbids this replica the lease (it can never lead)."""
        return self._forbidden

    def _refused(self, verb: str, error: ApiError | ConnectionFailure) -> None:
        """A 403 on the lease is a configuration error a user must fix: said loudly, and kept for /readyz."""
        if isinstance(error, ApiError) and error.status == 403:
            message = (
                f"forbidden to {verb} Lease {self.namespace}/{self.config.name}: grant this service account "
                "get/create/update on leases in that namespace (manifests/rbac), or set "
                f"--leader-election-namespace to a namespace where it has them ({error.message or error})"
            )
            if self._forbidden != message:
                self._log.error("leader election forbidden", error=message)
            self._forbidden = message
        else:
            self._log.info(f"lease {verb} failed", error=str(error))

    def check(self, max_tolerable_expired: float = 20.0) -> str | None:
        """For /healthz: fails when we lead on a lease we have not renewed for too long."""
        if (
            self.is_leader()
            and self._clock() > self._observed_time + self.config.lease_duration + max_tolerable_expired
        ):
            return "the leader has not renewed its lease in time"
        return None

    def run(self, stop: threading.Event) -> bool:
        """Acquire, lead (calling on_started_leading), renew until stop or loss; True if leadership was lost.
        Any failure of the elector itself counts as a loss (on_stopped_leading runs), never as a leader
        that silently stops renewing."""
        try:
            return self._run(stop)
        except Exception as error:  # noqa: BLE001  (a crashed elector must not leave a leader acting)
            self._log.error("leader election failed", error=repr(error))
            self._leading.clear()
            self._status.set(0)
            self._on_stopped()
            return True

    def _run(self, stop: threading.Event) -> bool:
        if not self._acquire(stop):
            return False
        self._leading.set()
        self._status.set(1)
        self._log.info("successfully acquired lease")
        threading.Thread(target=self._on_started, name="leader-elected", daemon=True).start()
        lost = self._renew(stop)
        self._leading.clear()
        self._status.set(0)
        if lost:
            self._log.error("failed to renew lease: leader election lost")
            self._on_stopped()
            return True
        if self.config.release_on_cancel:
            self.release()
        return False

    def _acquire(self, stop: threading.Event) -> bool:
        self._log.info("attempting to acquire leader lease")
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            stop.wait(self.config.retry_period * (1 + self._rng.random() * JITTER_FACTOR))
        return False

    def _renew(self, stop: threading.Event) -> bool:
        while not stop.wait(self.config.retry_period):
            deadline = self._clock() + self.config.renew_deadline
            while True:
                renewed = self.try_acquire_or_renew()
                if self._clock() > deadline:
                    return True  # the attempt as a whole took longer than renew_deadline: lost
                if renewed:
                    break
                if stop.is_set():
                    return False
                if self._clock() + self.config.retry_period > deadline:
                    return True
                stop.wait(self.config.retry_period)
        return False

    def try_acquire_or_renew(self) -> bool:
        now_wall = micro_time(self._wall())
        cfg = self.config
        # fast path: we lead and our lease is still valid locally: update what we last wrote
        if (
            self.is_leader()
            and self._lease is not None
            and self._observed_time + cfg.lease_duration > self._clock()
        ):
            lease = _copy_lease(self._lease)
            lease["spec"]["renewTime"] = now_wall
            lease["spec"]["leaseDurationSeconds"] = int(cfg.lease_duration)
            if self._write(lease, create=False):
                return True
        try:
            current = self.client.get(LEASE, self.namespace, cfg.name)
        except (ApiError, ConnectionFailure) as error:
            self._refused("get", error)
            return False
        if current is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": cfg.identity,
                    "leaseDurationSeconds": int(cfg.lease_duration),
                    "acquireTime": now_wall,
                    "renewTime": now_wall,
                    "leaseTransitions": 0,
                },
            }
            return self._write(lease, create=True)
        spec = current.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_time = self._clock()
        self._lease = current
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != cfg.identity and self._observed_time + duration > self._clock():
            return False  # held by someone else and not expired by our own clock
        lease = _copy_lease(current)
        new_spec = lease["spec"]
        if holder != cfg.identity:
            new_spec["acquireTime"] = now_wall
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        new_spec["holderIdentity"] = cfg.identity
        new_spec["leaseDurationSeconds"] = int(cfg.lease_duration)
        new_spec["renewTime"] = now_wall
        return self._write(lease, create=False)

    def _write(self, lease: Obj, create: bool) -> bool:
        try:
            written = self.client.create(lease) if create else self.client.replace(lease)
        except (ApiError, ConnectionFailure) as error:
            self._refused("create" if create else "update", error)
            return False
        self._forbidden = None
        self._lease = written
        self._observed_spec = written.get("spec") or {}
        self._observed_time = self._clock()
        return True

    def release(self) -> bool:
        """Give the lease up (holder "", duration 1 s) so a standby takes over at once."""
        deadline = self._clock() + self.config.renew_deadline
        while self._clock() < deadline:
            lease = self._lease
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return False
            released = _copy_lease(lease)
            now_wall = micro_time(self._wall())
            released["spec"].update(
                {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": now_wall,
                    "acquireTime": now_wall,
                }
            )
            try:
                self._lease = self.client.replace(released)
                self._log.info("released lease")
                return True
            except ApiError as error:
                if not error.conflict:
                    return False
                try:
                    self._lease = self.client.get(LEASE, self.namespace, self.config.name)
                except (ApiError, ConnectionFailure):
                    return False
            except ConnectionFailure:
                time.sleep(0.2)
        return False


def _copy_lease(lease: Obj) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            key: lease["metadata"][key]
            for key in ("name", "namespace", "resourceVersion", "uid")
            if key in lease["metadata"]
        },
        "spec": dict(lease.get("spec") or {}),
    }


def exit_now(code: int = 1) -> None:
    """Leave the process at once, skipping graceful drain (a lost lease must not keep acting)."""
    os._exit(code)
