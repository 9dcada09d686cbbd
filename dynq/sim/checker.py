"""Checkers: pure functions from a simulated run's history and final state to a verdict
(the fault suite's ``tests/faults/checker.py``, carried into the package so that
``dynq sim`` ships with them).

* :func:`check_siblings` - every acknowledged write that no write of possible effect
  covered (carried a context that had seen it) survives as a value; no value appears that
  was never written or whose write failed (a phantom), in the final state or in any read;
  nothing an acknowledged write or delete superseded comes back (a resurrection).
* :func:`check_dots` - one dot never carries two values, across every copy on every node
  (a reused dot would make ``versions._pick`` choose between two writes).
* :func:`check_convergence` - after heal, every primary of a key holds the same canonical
  object.
* :func:`check_hints_drained` - no node holds a hint after heal.
* :func:`check_lww` - every copy of a key of a last-write-wins bucket holds one sibling.
* :func:`check_placement` - after heal every key is stored on exactly the n primaries of
  its bucket (the default bucket's n is the ring's), nowhere else.

Keys are named as the history names them: ``key`` in the default bucket, ``bucket/key``
in a named one; :func:`check_siblings` applies the same rules to both, except that a
last-write-wins bucket may drop an acknowledged concurrent write (its documented price).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynq_client.versions import VersionedObject

from .. import crdt_check
from ..crdt_check import subset_sums

from .history import FAIL, OK, History


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
        more = [f"... {len(self.problems) - 20} more"] if len(self.problems) > 20 else []
        return "\n  ".join([head] + self.problems[:20] + more)


def check_siblings(history: History, final: Mapping[str, set[str]], lww: Collection[str] = (),
                   expiry_slack_s: float = 0.0) -> Verdict:
    """``final``: key -> the live sibling values after heal (merged over its primaries).
    ``lww``: keys of last-write-wins buckets, where a concurrent write with a newer
    timestamp drops an acknowledged one by design: every rule holds for them but "no
    acknowledged write lost", and a read of one returns at most one value.

    Puts with a ttl (the ttl workload) may vanish once written (a node whose clock runs
    ahead expires them early), so "no acknowledged write lost" skips them; but no read
    begun after a put's latest possible expiry (its completion, or for an unknown outcome
    the end of the history, + ttl + ``expiry_slack_s``: clock skew and room) may return it,
    and every other rule holds for them (nothing superseded comes back, e.g. through an
    expired object reclaimed too early)."""
    acked: dict[str, set[str]] = defaultdict(set)
    maybe: dict[str, set[str]] = defaultdict(set)
    covered_by_acked: dict[str, set[str]] = defaultdict(set)
    covered_by_maybe: dict[str, set[str]] = defaultdict(set)
    acked_deletes: dict[str, int] = defaultdict(int)
    keys: set[str] = set(final)
    reads: list[tuple[str, frozenset[str], int]] = []
    for op in history.ops:
        if op.f == "read" and op.outcome == OK and op.result is not None:
            reads.append((op.key, op.result, op.index))
        if op.f not in ("put", "delete"):
            continue
        keys.add(op.key)
        if op.outcome == FAIL:
            continue
        if op.f == "put" and op.value is not None:
            maybe[op.key].add(op.value)
            if op.outcome == OK:
                acked[op.key].add(op.value)
        covered_by_maybe[op.key] |= op.covers
        if op.outcome == OK:
            covered_by_acked[op.key] |= op.covers
            if op.f == "delete":
                acked_deletes[op.key] += 1
    v = Verdict("siblings")
    lost = phantom = resurrected = undeleted = expired_read = 0
    last_t = max((op.complete_t or op.invoke_t for op in history.ops), default=0.0)
    expires_by: dict[str, float] = {}  # value of a put with a ttl -> the latest time it can expire
    mortal: set[str] = set()
    for op in history.ops:
        if op.f == "put" and op.value is not None and op.ttl:
            mortal.add(op.value)
            done_t = op.complete_t if op.outcome == OK and op.complete_t is not None else last_t
            expires_by[op.value] = done_t + op.ttl + expiry_slack_s
    for key in sorted(keys):
        got = final.get(key, set())
        missing = set() if key in lww else acked[key] - covered_by_maybe[key] - got - mortal
        lost += len(missing)
        if missing:
            v.problems.append(f"{key}: acknowledged writes lost (no later write covered them): {sorted(missing)[:10]}")
        extra = got - maybe[key]
        phantom += len(extra)
        if extra:
            v.problems.append(f"{key}: values present that were never written (or whose write failed): "
                              f"{sorted(extra)[:10]}")
        back = got & covered_by_acked[key]
        resurrected += len(back)
        if back:
            v.problems.append(f"{key}: values an acknowledged write or delete superseded came back: {sorted(back)[:10]}")
        if acked_deletes[key] and maybe[key] <= covered_by_acked[key] and got:
            undeleted += 1
            v.problems.append(f"{key}: deleted (every write covered by an acknowledged delete) but holds {sorted(got)[:5]}")
    unresolved = 0
    read_start = {op.index: op.invoke_t for op in history.ops if op.f == "read"}
    for key, seen, index in reads:
        late = sorted(x for x in seen if x in expires_by and read_start[index] > expires_by[x])
        expired_read += len(late)
        if late:
            v.problems.append(f"{key}: read {index} began after these values' latest expiry and returned them: "
                              f"{late[:10]}")
        if key in lww and len(seen) > 1:
            unresolved += 1
            v.problems.append(f"{key}: read {index} of a last-write-wins bucket returned {len(seen)} values: "
                              f"{sorted(seen)[:5]}")
        extra = set(seen) - maybe[key]
        phantom += len(extra)
        if extra:
            v.problems.append(f"{key}: read {index} returned values never written (or whose write failed): "
                              f"{sorted(extra)[:10]}")
    c = history.counts()
    v.counts = {"ops": c["ops"], "acknowledged": c[OK], "failed": c[FAIL], "unknown": c["unknown"], "reads": c["reads"],
                "lost": lost, "phantom": phantom, "resurrected": resurrected, "undeleted": undeleted,
                "keys_with_siblings": sum(1 for values in final.values() if len(values) > 1),
                "lww_keys": sum(1 for key in keys if key in lww), "lww_unresolved_reads": unresolved,
                "with_ttl": len(mortal), "expired_reads": expired_read}
    return v


def check_lww(copies: Iterable[tuple[str, str, VersionedObject]]) -> Verdict:
    """``copies``: (node, key, object) for every stored copy of a key of a last-write-wins
    bucket. Every replica resolves on write, merge and repair, so each holds one sibling
    (a value or a tombstone), never several."""
    v = Verdict("lww")
    n = 0
    for node, key, obj in copies:
        n += 1
        if len(obj.siblings) > 1:
            v.problems.append(f"{key} on {node}: {len(obj.siblings)} siblings in a last-write-wins bucket: "
                              f"{sorted(_short(s.value) for s in obj.siblings)[:5]}")
    v.counts = {"copies": n}
    return v


def check_placement(placed: Mapping[str, tuple[int, Sequence[str], set[str]]]) -> Verdict:
    """``placed``: key -> (its bucket's n, its primaries under the final ring, the nodes
    whose database holds it). After heal a key is stored on exactly its n primaries (or
    nowhere: never written, or reaped): no fallback or former owner keeps a copy, no
    primary lacks one, and the ring gives a bucket n distinct primaries."""
    v = Verdict("placement")
    stored = 0
    for key, (n, primaries, holders) in sorted(placed.items()):
        if len(set(primaries)) != n:
            v.problems.append(f"{key}: {len(set(primaries))} primaries for n={n}: {sorted(primaries)}")
        if not holders:
            continue
        stored += 1
        extra, missing = holders - set(primaries), set(primaries) - holders
        if extra or missing:
            v.problems.append(f"{key} (n={n}): held by {sorted(holders)}, primaries {sorted(primaries)}"
                              + (f"; not a primary: {sorted(extra)}" if extra else "")
                              + (f"; missing on: {sorted(missing)}" if missing else ""))
    v.counts = {"keys": len(placed), "stored": stored}
    return v


def check_dots(copies: Iterable[tuple[str, str, VersionedObject]]) -> Verdict:
    """``copies``: (node, key, object) for every stored copy. A dot names one write: it
    must carry one value everywhere, and appear at most once in an object."""
    v = Verdict("dots")
    seen: dict[tuple[str, str, int], tuple[bytes | None, str]] = {}
    n = 0
    for node, key, obj in copies:
        dots = [s.dot for s in obj.siblings]
        if len(set(dots)) != len(dots):
            v.problems.append(f"{key} on {node}: one dot on two siblings: {sorted(dots)}")
        for s in obj.siblings:
            n += 1
            k = (key, s.actor, s.counter)
            prior = seen.setdefault(k, (s.value, node))
            if prior[0] != s.value:
                v.problems.append(f"{key}: dot {s.actor}:{s.counter} carries {_short(prior[0])} on {prior[1]} "
                                  f"and {_short(s.value)} on {node}")
    v.counts = {"siblings": n}
    return v


def check_convergence(views: Mapping[str, Mapping[str, bytes | None]]) -> Verdict:
    """``views``: key -> primary -> its canonical encoded object (None: it holds nothing)."""
    v = Verdict("convergence")
    divergent = 0
    for item, per_replica in sorted(views.items()):
        if len(set(per_replica.values())) > 1:
            divergent += 1
            groups: dict[bytes | None, list[str]] = defaultdict(list)
            for replica, digest in sorted(per_replica.items()):
                groups[digest].append(replica)
            v.problems.append(f"{item}: replicas disagree ("
                              + "; ".join(f"{'+'.join(ns)}: {_short(d)}" for d, ns in groups.items()) + ")")
    v.counts = {"keys": len(views), "divergent": divergent}
    return v


def check_hints_drained(pending: Mapping[str, int]) -> Verdict:
    v = Verdict("hints")
    for node, count in sorted(pending.items()):
        if count:
            v.problems.append(f"{node} still holds {count} hints")
    v.counts = {"pending": sum(pending.values())}
    return v


def check_invariants(problems: Iterable[str], counts: Mapping[str, Any] | None = None) -> Verdict:
    """In-process invariants the harness gathered (unhandled exceptions, errors logged, ...)."""
    return Verdict("invariants", list(problems), dict(counts or {}))


def _short(data: bytes | None) -> str:
    if data is None:
        return "nothing"
    return f"{len(data)}B:{data[:8].hex()}"


def check_datatypes(history: History, final: Mapping[str, Any] | None,
                    replicas: Mapping[str, Mapping[str, Any]] | None = None) -> list[Verdict]:
    """The data-type workload, judged after heal on ``final`` (read at R=N) by the checks
    the fault suite uses too (:mod:`dynq.crdt_check`): each counter is its acknowledged
    increments plus some subset of its unknown ones; in each set, every acknowledged add
    that no acknowledged-or-unknown remove observed is present, nothing is present (or
    was read) that no add wrote, and an acknowledged remove sticks. And every primary of
    a key holds the value the R=N read returned (``replicas``: history key -> node -> its
    value)."""
    if final is None:
        msg = "no final read (the run ended before the data-type check)"
        return [Verdict("dt-counter", [msg]), Verdict("dt-set", [msg])]
    ops = history.ops
    counters = {k: v for k, v in final.items() if isinstance(v, int)}
    sets = {k: set(v) for k, v in final.items() if isinstance(v, (set, frozenset))}
    counter = Verdict("dt-counter", *crdt_check.counter_problems(ops, counters))
    oset = Verdict("dt-set", *crdt_check.or_set_problems(ops, sets, lambda key: True))
    for key in sorted({op.key for op in ops if op.f in ("incr", "add", "remove")} - set(final)):
        (counter if any(op.key == key and op.f == "incr" for op in ops) else oset).problems.append(
            f"{key}: no final value (not read at R=N after heal)")
    conv = Verdict("dt-convergence")
    for key, views in sorted((replicas or {}).items()):
        for node, value in sorted(views.items()):
            want = final.get(key)
            if isinstance(value, (set, frozenset)):
                value = {x.decode() if isinstance(x, bytes) else x for x in value}
            if value != want and not (value is None and want in (0, set())):
                conv.problems.append(f"{key}: {node} holds {value!r}, the R=N read returned {want!r}")
    conv.counts = {"keys": len(replicas or {}), "copies": sum(len(v) for v in (replicas or {}).values())}
    return [counter, oset, conv]


__all__ = ["Verdict", "check_datatypes", "subset_sums", "check_convergence", "check_dots", "check_hints_drained", "check_invariants", "check_lww",
           "check_placement", "check_siblings"]
