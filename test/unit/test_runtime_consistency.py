"""runtime/consistency.py: a key is held back while the cache is older than its own writes, never longer
than max_wait, and only writes made inside `recording()` count; a status write of the watched kind is
remembered until the informer delivers its resourceVersion or a later one."""

from __future__ import annotations

from dask_operator.runtime.consistency import OwnStatusWrites, OwnWrites, note_write, recording
from dask_operator.runtime.kinds import POD, SERVICE, Kind


def pod(rv: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "resourceVersion": rv}}


def test_a_key_waits_until_every_kind_it_wrote_is_seen() -> None:
    seen = {POD: 10, SERVICE: 10}
    clock = [0.0]
    writes = OwnWrites(lambda kind: seen.get(kind), max_wait=30, clock=lambda: clock[0])
    with recording() as written:
        note_write(POD, pod("12"))
        note_write(POD, pod("11"))  # the newest one counts
        note_write(SERVICE, {"kind": "Status", "metadata": {"resourceVersion": "99"}})  # not an object
    assert written == {POD: 12}
    writes.wrote("a", written)
    assert writes.behind("a") and not writes.behind("b")
    seen[POD] = 12
    assert not writes.behind("a")
    seen[POD] = 0
    assert not writes.behind("a"), "caught up once: forgotten"


def test_a_broken_watch_holds_a_key_back_at_most_max_wait() -> None:
    clock = [0.0]
    writes = OwnWrites(lambda kind: 1, max_wait=30, clock=lambda: clock[0])
    writes.wrote("a", {POD: 5})
    assert writes.behind("a")
    clock[0] = 31.0
    assert not writes.behind("a")


def test_writes_outside_a_reconcile_and_kinds_not_cached_are_ignored() -> None:
    note_write(POD, pod("5"))  # no recording(): nothing to remember, no error
    writes = OwnWrites(lambda kind: None)
    writes.wrote("a", {POD: 5})
    assert not writes.behind("a")


def cluster(uid: str, rv: str) -> dict[str, object]:
    return {"apiVersion": "example.org/v1", "kind": "Thing", "metadata": {"uid": uid, "resourceVersion": rv}}


THING = Kind("example.org", "v1", "Thing", "things")


def test_status_writes_of_the_kind_are_remembered_until_delivered() -> None:
    status_writes = OwnStatusWrites(THING)
    with recording(status_writes):
        note_write(THING, cluster("u1", "7"), "status")
        note_write(THING, cluster("u2", "8"))  # the main resource: not a status write
        note_write(POD, {**pod("9"), "metadata": {"uid": "p1", "resourceVersion": "9"}}, "status")
    note_write(THING, cluster("u3", "10"), "status")  # outside a reconcile
    assert len(status_writes) == 1
    assert not status_writes.delivered("u1", "6"), "an older version still in flight"
    assert len(status_writes) == 1
    assert status_writes.delivered("u1", "7"), "exactly our write"
    assert not status_writes.delivered("u1", "7") and len(status_writes) == 0, (
        "delivered once, then forgotten"
    )
    with recording(status_writes):
        note_write(THING, cluster("u1", "11"), "status")
    assert not status_writes.delivered("u1", "12") and len(status_writes) == 0, "a later version passes it"
    with recording(status_writes):
        note_write(THING, cluster("u1", "13"), "status")
    status_writes.forget("u1")
    assert len(status_writes) == 0
