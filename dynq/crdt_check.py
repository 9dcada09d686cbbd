"""The data-type checks shared by the simulator (:mod:`dynq.sim.checker`) and the
real-cluster fault suite (``tests/faults/checker.py``): pure functions from the
operations of a history (anything with ``index``, ``f``, ``key``, ``value``, ``outcome``
and, for reads, ``result``) and the final state after heal to ``(problems, counts)``;
each caller wraps them in its own verdict.

* :func:`counter_problems` - each counter's final value is the sum of its acknowledged
  increments (``f == "incr"``, ``value`` the amount, negative for a decrement) plus the
  sum of some subset of the increments of unknown outcome; failed ones never count.
* :func:`or_set_problems` - observed-remove sets (``f`` "add" / "remove", ``value`` the
  element, each added once; a remove carries the context of a read that saw the element):
  every acknowledged add that no remove of possible effect may have removed is in the
  final set; no element is there, or in any read, that no add (acknowledged or unknown)
  wrote; an acknowledged remove sticks (nothing can bring that add back).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"

EXACT_RANGE = 1_000_000
"""Subset sums are tracked exactly while the unknown increments span at most this many
values (always, for increments of a few units); beyond it only the interval is checked."""


def subset_sums(values: Iterable[int]) -> set[int] | None:
    """Every sum of a subset of ``values`` (negatives allowed), or None if they span too much."""
    vals = list(values)
    if sum(abs(v) for v in vals) > EXACT_RANGE:
        return None
    reach = {0}
    for v in vals:
        reach |= {s + v for s in reach}
    return reach


def _counts(ops: Sequence[Any], fs: Iterable[str]) -> dict[str, int]:
    wanted = set(fs)
    out = {"ops": 0, OK: 0, FAIL: 0, UNKNOWN: 0}
    for op in ops:
        if op.f in wanted:
            out["ops"] += 1
            out[op.outcome] += 1
    return out


def counter_problems(ops: Sequence[Any], final: Mapping[str, int]) -> tuple[list[str], dict[str, int]]:
    problems: list[str] = []
    acked: dict[str, int] = defaultdict(int)
    unknown: dict[str, list[int]] = defaultdict(list)
    incrs = [op for op in ops if op.f == "incr"]
    for op in incrs:
        if op.outcome == OK:
            acked[op.key] += int(op.value)
        elif op.outcome == UNKNOWN:
            unknown[op.key].append(int(op.value))
    lost = 0
    for key in sorted(set(acked) | set(unknown) | set(final)):
        got = final.get(key, 0)
        extra = got - acked[key]
        low = sum(v for v in unknown[key] if v < 0)
        high = sum(v for v in unknown[key] if v > 0)
        if extra < low:
            lost += 1
            problems.append(f"{key}: final {got} < {acked[key] + low}, the sum of acknowledged increments"
                            + (f" and of every negative unknown one ({low})" if low else ""))
        elif extra > high:
            problems.append(f"{key}: final {got} > {acked[key] + high}, the sum of acknowledged increments and "
                            f"of every positive unknown one ({high})")
        else:
            sums = subset_sums(unknown[key])
            if sums is not None and extra not in sums:
                problems.append(f"{key}: final {got} is {acked[key]} acknowledged plus {extra}, which no subset "
                                f"of the unknown increments {unknown[key][:20]} adds up to")
    c = _counts(incrs, ("incr",))
    counts = {"ops": c["ops"], "acknowledged": c[OK], "failed": c[FAIL], "unknown": c[UNKNOWN],
              "keys": len(final), "lost": lost}
    return problems, counts


def or_set_problems(ops: Sequence[Any], final: Mapping[str, set[Any]],
                    is_set_key: Callable[[str], bool]) -> tuple[list[str], dict[str, int]]:
    problems: list[str] = []
    acked: dict[str, set[Any]] = defaultdict(set)
    maybe: dict[str, set[Any]] = defaultdict(set)
    removed: dict[str, set[Any]] = defaultdict(set)  # removes that may have taken effect
    removed_ok: dict[str, set[Any]] = defaultdict(set)
    for op in ops:
        if op.f == "add":
            if op.outcome == OK:
                acked[op.key].add(op.value)
            if op.outcome in (OK, UNKNOWN):
                maybe[op.key].add(op.value)
        elif op.f == "remove" and op.outcome in (OK, UNKNOWN):
            removed[op.key].add(op.value)
            if op.outcome == OK:
                removed_ok[op.key].add(op.value)
    lost = unexpected = resurrected = reads = 0
    for op in ops:
        if op.f == "read" and is_set_key(op.key) and isinstance(op.result, frozenset):
            reads += 1
            extra = set(op.result) - maybe[op.key]
            unexpected += len(extra)
            if extra:
                problems.append(f"{op.key}: a read saw elements no add wrote: {sorted(extra)[:20]} (op {op.index})")
    for key in sorted(set(acked) | set(final) | set(maybe)):
        got = final.get(key, set())
        missing = (acked[key] - removed[key]) - got
        lost += len(missing)
        if missing:
            problems.append(f"{key}: acknowledged adds lost: {sorted(missing)[:20]}")
        extra = got - maybe[key]
        unexpected += len(extra)
        if extra:
            problems.append(f"{key}: elements no add wrote: {sorted(extra)[:20]}")
        back = got & removed_ok[key]
        resurrected += len(back)
        if back:
            problems.append(f"{key}: acknowledged removes undone: {sorted(back)[:20]}")
    c = _counts(ops, ("add", "remove"))
    counts = {"ops": c["ops"], "acknowledged": c[OK], "failed": c[FAIL], "unknown": c[UNKNOWN],
              "lost": lost, "unexpected": unexpected, "resurrected": resurrected, "reads": reads}
    return problems, counts


__all__ = ["counter_problems", "or_set_problems", "subset_sums"]
