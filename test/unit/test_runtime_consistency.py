"""runtime/consistency.py: a key is held back while the cache is older than its own writes, never longer
than max_wait, and only writes made inside `recording()` count; a status write of the watched kind is
remembered until the informer delivers its resourceVersion or a later one."""

from __future__ import annotations

from dask_operator.runtime.consistency import OwnStatusWrites, OwnWrites, note_write, recording, status_write
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


def thing(rv: str, name: str = "t") -> dict[str, object]:
    return {"apiVersion": "example.org/v1", "kind": "Thing",
            "metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}  # fmt: skip


THING = Kind("example.org", "v1", "Thing", "things")


def test_status_writes_of_the_kind_are_remembered_until_delivered() -> None:
    status_writes = OwnStatusWrites(THING)
    with recording(status_writes):
        note_write(THING, thing("7"), "status")
        note_write(THING, thing("8", "main"))  # the main resource: not a status write
        note_write(
            POD, {**pod("9"), "metadata": {"namespace": "ns", "name": "p", "resourceVersion": "9"}}, "status"
        )
    note_write(THING, thing("10", "outside"), "status")  # outside a reconcile
    assert len(status_writes) == 1
    assert not status_writes.delivered("ns", "t", "6"), "an older version still in flight"
    assert len(status_writes) == 1
    assert status_writes.delivered("ns", "t", "7"), "exactly our write"
    assert not status_writes.delivered("ns", "t", "7") and len(status_writes) == 0, (
        "delivered once, then forgotten"
    )
    with recording(status_writes):
        note_write(THING, thing("11"), "status")
    status_writes.passed("ns", "t", "10")
    assert len(status_writes) == 1, "an older version passes nothing"
    assert not status_writes.delivered("ns", "t", "12") and len(status_writes) == 0, (
        "a later version passes it"
    )
    with recording(status_writes):
        note_write(THING, thing("13"), "status")
    status_writes.forget("ns", "t")
    assert len(status_writes) == 0


def test_an_echo_that_overtakes_its_write_is_held_not_waited_for_and_judged_when_the_write_ends() -> None:
    status_writes = OwnStatusWrites(THING)
    handed_back: list[str] = []
    with recording(status_writes), status_write(THING, "ns", "t"):
        # the echo arrives first: nothing says yet whether it is ours; the call returns at once, holding it
        assert status_writes.delivered("ns", "t", "21", lambda: handed_back.append("21"))
        assert status_writes.held() == 1 and handed_back == []
        note_write(THING, thing("21"), "status")  # the reply
        assert handed_back == [], "held until the write has ended, not merely answered"
    assert handed_back == ["21"] and status_writes.held() == 0
    assert status_writes.delivered("ns", "t", "21"), "judged again: exactly our write"
    # a write that fails (no reply recorded): the held event comes back and is nobody's echo
    with recording(status_writes), status_write(THING, "ns", "t"):
        assert status_writes.delivered("ns", "t", "30", lambda: handed_back.append("30"))
    assert handed_back[-1] == "30" and not status_writes.delivered("ns", "t", "30")
    # two writes in flight: handed back only when the last one ends
    status_writes.begin(THING, "ns", "t")
    status_writes.begin(THING, "ns", "t")
    assert status_writes.delivered("ns", "t", "40", lambda: handed_back.append("40"))
    status_writes.end(THING, "ns", "t")
    assert handed_back[-1] == "30"
    status_writes.end(THING, "ns", "t")
    assert handed_back[-1] == "40"
    # without a way to hand it back, an event that cannot be told is not taken for an echo
    status_writes.begin(THING, "ns", "t")
    assert not status_writes.delivered("ns", "t", "50") and status_writes.held() == 0
    status_writes.end(THING, "ns", "t")


def test_watermarks_of_keys_never_reconciled_again_are_dropped_once_seen_or_too_old() -> None:
    seen = {POD: 10, SERVICE: 10}
    clock = [0.0]
    writes = OwnWrites(lambda kind: seen.get(kind), max_wait=30, clock=lambda: clock[0], sweep_interval=1)
    for i in range(1000):  # e.g. clusters whose last write's echo is filtered out: never reconciled again
        writes.wrote(f"k{i}", {POD: 11 + i % 2})
    writes.wrote("stuck", {SERVICE: 50})  # a kind whose watch is broken
    assert len(writes) == 1001
    seen[POD] = 11
    clock[0] = 1.0
    writes.wrote("new", {POD: 13})
    assert len(writes) == 502, "the keys whose writes the cache shows are dropped, the others kept"
    assert writes.behind("k1") and writes.behind("stuck") and not writes.behind("k0")
    seen[POD] = 13
    clock[0] = 1.5
    writes.wrote("newer", {POD: 14})
    assert len(writes) == 503, "at most one sweep per interval"
    clock[0] = 31.5
    writes.wrote("newest", {POD: 15})
    assert len(writes) == 2 and writes.behind("newer") and writes.behind("newest"), (
        "caught up or older than max_wait: gone"
    )
    assert not writes.behind("stuck")
