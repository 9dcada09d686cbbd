"""The put/get state machines driven without sockets: replies and deadlines are plain calls."""

from __future__ import annotations

from typing import Any, Callable

from dynq.kv.coordinator import GetCoordinator, PutCoordinator, PutState
from dynq_client.errors import DynqError, QuorumError, QuorumTimeout, StorageError, Timeout
from dynq_client.protocol import DEFAULT_LIMITS, Reply
from dynq_client.versions import VersionedObject, encode_object, update


class FakeTimer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeReplicas:
    """Records what a coordinator asks for; the test plays the network and the disk."""

    name = "a"
    limits = DEFAULT_LIMITS

    def __init__(self) -> None:
        self.staged: list[Callable[[StorageError | None], None]] = []
        self.sent: dict[str, Callable[[Reply | None, DynqError | None], None]] = {}
        self.sent_ops: list[str] = []
        self.timers: list[FakeTimer] = []
        self.local: bytes | None = None
        self.bodies: dict[str, dict[str, Any]] = {}
        self.staged_hints: list[str | None] = []
        self.repaired: list[tuple[bytes, list[str]]] = []

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: Callable[[StorageError | None], None],
                    hint_for: str | None = None) -> None:
        self.staged.append(done)
        self.staged_hints.append(hint_for)

    def read_repair(self, key: bytes, merged: VersionedObject, stale: list[str]) -> None:
        self.repaired.append((key, stale))

    def read_local(self, key: bytes) -> bytes | None:
        return self.local

    def replicate(self, target: str, key: bytes, blob: bytes, hint: str | None, timeout_s: float,
                  done: Callable[[Reply | None, DynqError | None], None]) -> None:
        self._sent(target, "replica_put", {"k": key, "ob": blob} if hint is None else {"k": key, "ob": blob, "h": hint},
                   done)

    def fetch(self, target: str, key: bytes, timeout_s: float, done: Callable[[Reply | None, DynqError | None], None]
              ) -> None:
        self._sent(target, "replica_get", {"k": key}, done)

    def _sent(self, replica: str, op: str, body: dict[str, Any], done: Callable[[Reply | None, DynqError | None], None]
              ) -> None:
        self.sent[replica] = done
        self.sent_ops.append(op)
        self.bodies[replica] = body

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(callback)
        self.timers.append(timer)
        return timer


def ok(body: dict[str, Any] | None = None) -> Reply:
    return Reply(1, 1, True, body or {})


def make_put(w: int, targets: list[tuple[str, str | None]] | None = None, pw: int = 0
             ) -> tuple[FakeReplicas, PutCoordinator, list[tuple[Any, Any]]]:
    fake = FakeReplicas()
    obj = update(None, {}, "a", b"v", 1)
    outcomes: list[tuple[Any, Any]] = []
    put = PutCoordinator(fake, b"k", obj, encode_object(obj), targets or [("a", None), ("b", None), ("c", None)],
                         w, 1.0, lambda body, err: outcomes.append((body, err)), pw)
    put.start()
    return fake, put, outcomes


def test_put_sends_to_remotes_only_after_local_commit() -> None:
    """The new dot reaches no other replica before it is durable on the coordinator."""
    fake, put, outcomes = make_put(2)
    assert fake.sent == {} and put.state is PutState.LOCAL_COMMIT
    fake.staged[0](None)
    assert set(fake.sent) == {"b", "c"} and fake.sent_ops == ["replica_put", "replica_put"]
    fake.sent["c"](ok(), None)
    assert outcomes == [({}, None)]


def test_put_fails_without_sending_when_local_commit_fails() -> None:
    """A local storage error fails the put and nothing is replicated."""
    fake, put, outcomes = make_put(1)
    fake.staged[0](StorageError("disk full"))
    assert fake.sent == {}
    assert isinstance(outcomes[0][1], StorageError)


def test_put_fails_early_when_quorum_is_impossible() -> None:
    """W=3 fails as soon as one replica fails, naming it, before the deadline."""
    fake, put, outcomes = make_put(3)
    fake.staged[0](None)
    fake.sent["b"](None, Timeout("b: gone"))
    (body, err), = outcomes
    assert isinstance(err, QuorumError) and set(err.errors) == {"b"}
    fake.sent["c"](ok(), None)  # a late success changes nothing
    assert len(outcomes) == 1


def test_put_deadline_names_pending_replicas() -> None:
    """At the deadline the error is a QuorumTimeout naming the replicas that never answered."""
    fake, put, outcomes = make_put(3)
    fake.staged[0](None)
    fake.sent["b"](ok(), None)
    fake.timers[0].callback()
    (body, err), = outcomes
    assert isinstance(err, QuorumTimeout) and list(err.errors) == ["c"] and err.succeeded == 2


def test_get_merges_replies_into_siblings() -> None:
    """A read returns the merge of R replies, so concurrent versions come back as siblings."""
    fake = FakeReplicas()
    fake.local = encode_object(update(None, {}, "a", b"x", 1))
    outcomes: list[tuple[Any, Any]] = []
    get = GetCoordinator(fake, b"k", ["a", "b", "c"], 2, 1.0, lambda obj, err: outcomes.append((obj, err)),
                         primaries=["a", "b", "c"])
    get.start()
    assert outcomes == []
    fake.sent["b"](ok({"ob": encode_object(update(None, {}, "b", b"y", 2))}), None)
    (obj, err), = outcomes
    assert err is None and sorted(obj.values) == [b"x", b"y"]
    assert fake.repaired == []  # c has not answered yet: repair waits for every reply
    fake.sent["c"](ok({"ob": None}), None)
    assert fake.repaired == [(b"k", ["a", "b", "c"])]  # each lacks something the merge has


def test_read_repair_uses_late_replies_and_skips_fallbacks() -> None:
    """A reply after the quorum still counts for repair; fallbacks are never repaired."""
    fake = FakeReplicas()
    same = encode_object(update(None, {}, "b", b"y", 2))
    fake.local = same
    outcomes: list[tuple[Any, Any]] = []
    get = GetCoordinator(fake, b"k", ["a", "b", "d"], 2, 1.0, lambda obj, err: outcomes.append((obj, err)),
                         primaries=["a", "b", "c"])
    get.start()
    fake.sent["b"](ok({"ob": same}), None)
    assert len(outcomes) == 1 and fake.repaired == []
    fake.sent["d"](ok({"ob": None}), None)  # a fallback without the key: not repaired
    assert fake.repaired == []


def test_put_to_fallback_carries_the_hint() -> None:
    """A fallback target gets the write with a hint naming the primary it stands in for."""
    fake, put, outcomes = make_put(3, [("a", None), ("b", None), ("d", "c")])
    fake.staged[0](None)
    assert fake.bodies["d"]["h"] == "c" and "h" not in fake.bodies["b"]
    assert put.hinted == 1


def test_pw_fails_at_once_when_too_few_primaries_are_targets() -> None:
    """Strict quorum: pw=3 with a fallback among the targets fails before writing anything."""
    fake, put, outcomes = make_put(2, [("a", None), ("b", None), ("d", "c")], pw=3)
    assert fake.staged == []
    (body, err), = outcomes
    assert isinstance(err, QuorumError) and "pw=3" in str(err)


def test_pw_waits_for_primary_acks_not_fallback_acks() -> None:
    """W may be met by a fallback, but the put succeeds only once pw primaries acknowledged."""
    fake, put, outcomes = make_put(2, [("a", None), ("b", None), ("d", "c")], pw=2)
    fake.staged[0](None)
    fake.sent["d"](ok(), None)
    assert outcomes == []  # W=2 met (a, d) but only one primary
    fake.sent["b"](ok(), None)
    assert outcomes == [({}, None)]


def test_get_counts_a_corrupt_reply_as_a_failure() -> None:
    """A replica that sends an undecodable object fails; the read does not crash."""
    fake = FakeReplicas()
    outcomes: list[tuple[Any, Any]] = []
    get = GetCoordinator(fake, b"k", ["a", "b", "c"], 3, 1.0, lambda obj, err: outcomes.append((obj, err)))
    get.start()
    fake.sent["b"](ok({"ob": b"garbage"}), None)
    (obj, err), = outcomes
    assert isinstance(err, QuorumError) and "b" in err.errors


def test_refused_unexecuted_means_shutting_down_or_overloaded_and_nothing_else() -> None:
    """A primary that answered ``overloaded`` did not take the write, like one shutting
    down: the forwarder tries the next primary and a put may use a stand-in."""
    from dynq.kv.coordinator import not_executed
    from dynq_client.errors import Overloaded, Unavailable

    def refused(code: str) -> Reply:
        return Reply(1, 1, False, {}, {"code": code, "msg": "x"})

    assert not_executed(None, Unavailable("not connected"))
    assert not_executed(None, Overloaded("too many"))
    assert not_executed(refused("unavailable"), None)
    assert not_executed(refused("overloaded"), None)
    assert not not_executed(refused("storage"), None)
    assert not not_executed(None, Timeout("no reply"))
    assert not not_executed(Reply(1, 1, True, {}), None)
