"""Checkers: pure functions from a history (and what the cluster holds after heal) to a verdict.

No I/O here: the scenario tests gather the final state, these decide. Each checker
returns a :class:`Verdict` whose ``problems`` name every violation, so a failing run says
exactly which write was lost or which value came from nowhere.

* :func:`check_set_adds` - workload "set-add": every acknowledged add must be in the final
  set; nothing may be in it that no add (acknowledged or of unknown outcome) put there.
* :func:`check_siblings` - workloads of unique values written with or without a context
  (blind writes, write/delete/rewrite cycles): an acknowledged write is *covered* when a
  later write or delete carried a context that had seen it. Every acknowledged write no
  write of possible effect covers must survive as a value (a sibling if need be); no
  value may appear that was never written, or that an acknowledged write or delete
  covered (a resurrection); keys whose every write an acknowledged delete covered must be
  absent.
* :func:`check_ttl` - workload "ttl" (writes with short ttls, long ones, or none): no
  read, during the run or after heal, returns a value whose expiry had certainly passed
  when the read began; every acknowledged value that had not expired (long ttl or none)
  and no write of possible effect covered survives; nothing unwritten or superseded
  appears.
* :func:`check_convergence` - every replica of every item holds the same digest. Items
  are keys and digests canonical dumps (the encoded object each primary holds) today; the
  same check takes partitions and Merkle roots once anti-entropy exists.
* :func:`check_hints_drained` - no node holds a hint after heal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from dynq import crdt_check

from .history import FAIL, OK, UNKNOWN, History


@dataclass
class Verdict:
    name: str
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.name}: {'ok' if self.ok else 'FAILED'} {self.counts}"
        return "\n  ".join([head] + self.problems[:50] + ([f"... {len(self.problems) - 50} more"] if len(self.problems) > 50 else []))


def check_set_adds(history: History, final: Mapping[str, set[int]]) -> Verdict:
    """``final``: key -> the union of the sets in every sibling of the key after heal."""
    acked: dict[str, set[int]] = defaultdict(set)
    maybe: dict[str, set[int]] = defaultdict(set)  # acknowledged or unknown
    failed: dict[str, set[int]] = defaultdict(set)
    for op in history.ops:
        if op.f != "add":
            continue
        if op.outcome == OK:
            acked[op.key].add(op.value)
        if op.outcome in (OK, UNKNOWN):
            maybe[op.key].add(op.value)
        if op.outcome == FAIL:
            failed[op.key].add(op.value)
    v = Verdict("set-add")
    lost = unexpected = recovered = 0
    for op in history.ops:  # what the adds' reads saw during the run: only adds of possible effect
        if op.f == "add" and isinstance(op.result, frozenset):
            extra = set(op.result) - maybe[op.key]
            unexpected += len(extra)
            if extra:
                v.problems.append(f"{op.key}: a read during the run saw elements no add may have written: "
                                  f"{sorted(extra)[:20]} (op {op.index})")
    for key in sorted(set(acked) | set(final) | set(maybe)):
        got = final.get(key, set())
        missing = acked[key] - got
        lost += len(missing)
        if missing:
            v.problems.append(f"{key}: acknowledged adds lost: {sorted(missing)[:20]}")
        extra = got - maybe[key]
        unexpected += len(extra)
        if extra:
            why = "failed adds" if extra <= failed[key] else "never-added elements"
            v.problems.append(f"{key}: elements read that no add may have written ({why}): {sorted(extra)[:20]}")
        recovered += len((maybe[key] - acked[key]) & got)
    c = history.counts(("add",))
    v.counts = {"ops": c["ops"], "acknowledged": c[OK], "failed": c[FAIL], "unknown": c[UNKNOWN],
                "lost": lost, "unexpected": unexpected, "unknown_present": recovered, "reads": c["reads"]}
    return v


def check_siblings(history: History, final: Mapping[str, set[str]]) -> Verdict:
    """``final``: key -> the live (non-tombstone) sibling values after heal."""
    acked: dict[str, set[str]] = defaultdict(set)
    maybe: dict[str, set[str]] = defaultdict(set)
    covered_by_acked: dict[str, set[str]] = defaultdict(set)
    covered_by_maybe: dict[str, set[str]] = defaultdict(set)
    acked_deletes: dict[str, int] = defaultdict(int)
    keys: set[str] = set(final)
    reads: list[tuple[str, frozenset[str]]] = []
    for op in history.ops:
        if op.f == "read" and op.outcome == OK and op.result is not None:
            reads.append((op.key, op.result))
        if op.f not in ("put", "delete"):
            continue
        keys.add(op.key)
        if op.outcome == FAIL:
            continue
        if op.f == "put":
            maybe[op.key].add(op.value)
            if op.outcome == OK:
                acked[op.key].add(op.value)
        covered_by_maybe[op.key] |= op.covers
        if op.outcome == OK:
            covered_by_acked[op.key] |= op.covers
            if op.f == "delete":
                acked_deletes[op.key] += 1
    v = Verdict("siblings")
    lost = phantom = resurrected = undeleted = 0
    for key in sorted(keys):
        got = final.get(key, set())
        expected = acked[key] - covered_by_maybe[key]
        missing = expected - got
        lost += len(missing)
        if missing:
            v.problems.append(f"{key}: acknowledged writes lost (no later write covered them): {sorted(missing)[:20]}")
        extra = got - maybe[key]
        phantom += len(extra)
        if extra:
            v.problems.append(f"{key}: values read that were never written (or whose write failed): {sorted(extra)[:20]}")
        back = got & covered_by_acked[key]
        resurrected += len(back)
        if back:
            v.problems.append(f"{key}: values an acknowledged write or delete superseded came back: {sorted(back)[:20]}")
        if acked_deletes[key] and maybe[key] <= covered_by_acked[key] and got:
            undeleted += 1
            v.problems.append(f"{key}: deleted (every write covered by an acknowledged delete) but holds {sorted(got)[:5]}")
    for key, seen in reads:  # during the run too: a read may only return writes of possible effect
        extra = set(seen) - maybe[key]
        phantom += len(extra)
        if extra:
            v.problems.append(f"{key}: a read during the run returned values never written: {sorted(extra)[:20]}")
    c = history.counts(("put", "delete"))
    v.counts = {"ops": c["ops"], "acknowledged": c[OK], "failed": c[FAIL], "unknown": c[UNKNOWN], "lost": lost,
                "phantom": phantom, "resurrected": resurrected, "undeleted": undeleted, "reads": c["reads"],
                "keys_with_siblings": sum(1 for values in final.values() if len(values) > 1),
                "keys_absent": sum(1 for key in keys if not final.get(key))}
    return v


UNKNOWN_SLACK_S = 5.0
"""How long after a client gave up on a put a coordinator may still have minted it (its
request timeout, with room): an unknown put's expiry is at most this much later."""


def latest_expiry(op: Any) -> float | None:
    """The latest wall-clock time a put's value can expire (its coordinator minted the
    expiry between invocation and completion), or None if it never expires."""
    if op.ttl is None or op.ttl <= 0:
        return None
    if op.outcome == OK:
        assert op.complete_wall is not None
        return float(op.complete_wall + op.ttl)
    return float((op.complete_wall or op.invoke_wall) + UNKNOWN_SLACK_S + op.ttl)


def check_ttl(history: History, final: Mapping[str, set[str]], checked_at: float, *,
              long_ttl: int = 3600) -> Verdict:
    """``final``: key -> the live values read after heal at wall-clock ``checked_at``."""
    puts = {op.value: op for op in history.ops if op.f == "put" and op.outcome != FAIL}
    acked: dict[str, set[str]] = defaultdict(set)
    maybe: dict[str, set[str]] = defaultdict(set)
    covered_by_acked: dict[str, set[str]] = defaultdict(set)
    covered_by_maybe: dict[str, set[str]] = defaultdict(set)
    keys: set[str] = set(final)
    for op in puts.values():
        keys.add(op.key)
        maybe[op.key].add(op.value)
        covered_by_maybe[op.key] |= op.covers
        if op.outcome == OK:
            acked[op.key].add(op.value)
            covered_by_acked[op.key] |= op.covers
    v = Verdict("ttl")
    lost = phantom = resurrected = expired_read = expired_final = 0

    def expired_before(value: str, when: float) -> bool:
        op = puts.get(value)
        latest = latest_expiry(op) if op is not None else None
        return latest is not None and when > latest

    for op in history.ops:  # reads during the run
        if op.f != "read" or op.outcome != OK or op.result is None:
            continue
        extra = set(op.result) - maybe[op.key]
        phantom += len(extra)
        if extra:
            v.problems.append(f"{op.key}: a read returned values never written: {sorted(extra)[:10]} (op {op.index})")
        stale = sorted(x for x in op.result if expired_before(x, op.invoke_wall))
        expired_read += len(stale)
        if stale:
            v.problems.append(f"{op.key}: a read begun after their expiry returned {stale[:10]} (op {op.index})")
    for key in sorted(keys):
        got = final.get(key, set())
        lasting = {x for x in acked[key] if puts[x].ttl is None or puts[x].ttl >= long_ttl}
        missing = lasting - covered_by_maybe[key] - got
        lost += len(missing)
        if missing:
            v.problems.append(f"{key}: acknowledged unexpired writes lost: {sorted(missing)[:20]}")
        extra = got - maybe[key]
        phantom += len(extra)
        if extra:
            v.problems.append(f"{key}: values read after heal that were never written: {sorted(extra)[:20]}")
        back = got & covered_by_acked[key]
        resurrected += len(back)
        if back:
            v.problems.append(f"{key}: values an acknowledged write superseded came back: {sorted(back)[:20]}")
        stale = sorted(x for x in got if expired_before(x, checked_at))
        expired_final += len(stale)
        if stale:
            v.problems.append(f"{key}: expired values readable after heal: {stale[:20]}")
    c = history.counts(("put",))
    v.counts = {"ops": c["ops"], "acknowledged": c[OK], "failed": c[FAIL], "unknown": c[UNKNOWN], "lost": lost,
                "phantom": phantom, "resurrected": resurrected, "expired_read": expired_read,
                "expired_final": expired_final, "reads": c["reads"],
                "with_ttl": sum(1 for op in puts.values() if op.ttl),
                "keys_absent": sum(1 for key in keys if not final.get(key))}
    return v


def check_convergence(views: Mapping[Any, Mapping[str, bytes | None]]) -> Verdict:
    """``views``: item (key, or partition) -> replica -> digest (canonical dump or Merkle root).
    Every replica of an item must hold the same digest; a replica that could not be asked
    is passed as a missing entry by the caller and reported through ``expected`` instead."""
    v = Verdict("convergence")
    divergent = 0
    for item, per_replica in views.items():
        if len(set(per_replica.values())) > 1:
            divergent += 1
            holders: dict[bytes | None, list[str]] = defaultdict(list)
            for replica, digest in sorted(per_replica.items()):
                holders[digest].append(replica)
            groups = "; ".join(f"{'+'.join(names)}: {_short(d)}" for d, names in holders.items())
            v.problems.append(f"{item!r}: replicas disagree ({groups})")
    v.counts = {"items": len(views), "divergent": divergent}
    return v


def check_hints_drained(pending: Mapping[str, int]) -> Verdict:
    v = Verdict("hints")
    for node, count in sorted(pending.items()):
        if count:
            v.problems.append(f"{node} still holds {count} hints")
    v.counts = {"pending": sum(pending.values())}
    return v


def _short(digest: bytes | None) -> str:
    if digest is None:
        return "nothing"
    return f"{len(digest)}B:{digest[:8].hex()}"


def all_ok(verdicts: Iterable[Verdict]) -> bool:
    return all(v.ok for v in verdicts)


def check_counters(history: History, final: Mapping[str, int]) -> Verdict:
    """Each counter's final value is the sum of its acknowledged increments plus the sum
    of some subset of its unknown ones (failed ones never count): :mod:`dynq.crdt_check`."""
    problems, counts = crdt_check.counter_problems(history.ops, final)
    return Verdict("counter", problems, counts)


def check_or_sets(history: History, final: Mapping[str, set[int]]) -> Verdict:
    """Observed-remove sets: every acknowledged add that no remove may have removed is in
    the final set; no element is there that no add (acknowledged or unknown) wrote; and an
    acknowledged remove sticks (:mod:`dynq.crdt_check`)."""
    problems, counts = crdt_check.or_set_problems(history.ops, final, lambda key: key.startswith("st/"))
    return Verdict("or-set", problems, counts)
