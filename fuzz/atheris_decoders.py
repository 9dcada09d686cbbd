"""Coverage-guided fuzzing (atheris/libFuzzer) of dynq's wire decoders and validators.

Every frame a node or client receives comes from the network, so each decoder must either
accept the input or reject it with its documented error. That is the one invariant checked
here; any other exception (TypeError, KeyError, RecursionError, AttributeError, ...) is a
finding, because callers only catch the documented type.

  target      entry points (documented errors)
  request     protocol.decode_request (BadRequest), then the body as handlers read it:
              get_bytes/get_str/get_int (InvalidRequest), decode_context (InvalidContext),
              decode_object (ProtocolError), ClusterState.from_wire / member_from_wire
              (MembershipError)
  reply       protocol.decode_reply (ProtocolError), versions.decode_reply_object and
              routing.RoutingTable.from_wire (ProtocolError), errors.error_from_wire (never raises)
  object      versions.decode_object (ProtocolError); decoded objects must round-trip
  context     versions.decode_context (InvalidContext); decoded clocks must round-trip
  membership  ClusterState.from_wire, Staged.from_wire, member_from_wire (MembershipError),
              Ring.from_wire (RingError); a parsed state/ring must be usable and round-trip
  all         every check on every input

Small Limits (below) keep every size and length limit reachable within -max_len. A custom
mutator decodes the msgpack input and mutates it structurally (type swaps, splices, boundary
integers, deep nesting) half of the time, and leaves the rest to libFuzzer's byte mutations.

Optional, not part of CI (needs ``pip install atheris``). From the repository root::

    python fuzz/atheris_decoders.py --target membership -max_total_time=300
    python fuzz/atheris_decoders.py --target all -max_total_time=3600 --keep-going
    python fuzz/atheris_decoders.py --target request fuzz/artifacts/crash-...   # replay one input

Seeds (valid encodings) are written to fuzz/corpus/<target>/ on every start, and that
directory is the working corpus unless corpus directories are given. Crashes go to
fuzz/artifacts/. ``--keep-going`` records each distinct finding (one per exception type
and raising line) to fuzz/artifacts/finding-* and keeps fuzzing instead of stopping.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import atheris
import msgpack

with atheris.instrument_imports(include=["dynq", "dynq_client"]):
    from dynq_client.errors import (
        DynqError,
        InvalidContext,
        InvalidRequest,
        ProtocolError,
        QuorumError,
        error_from_wire,
    )
    from dynq_client.protocol import (
        BadRequest,
        Limits,
        decode_reply,
        decode_request,
        encode_error,
        encode_reply,
        encode_request,
        get_bytes,
        get_int,
        get_str,
        packb,
        unpackb,
    )
    from dynq_client.ring import Member, Ring, RingError
    from dynq_client.routing import RoutingTable
    from dynq_client.versions import (
        EMPTY,
        decode_context,
        decode_object,
        decode_reply_object,
        encode_context,
        encode_object,
        merge,
        update,
    )

    from dynq.cluster.membership import (
        ClusterState,
        MembershipError,
        Staged,
        claimant,
        initial_state,
        member_from_wire,
        member_to_wire,
        newest,
    )

FUZZ_DIR = Path(__file__).resolve().parent

# Small enough that every limit can be crossed by an input under -max_len (4096 by default).
# Only the fields this version of Limits has are set, so the harness runs across versions.
SMALL_LIMITS: dict[str, int] = {
    "max_key_bytes": 64,
    "max_value_bytes": 256,
    "max_message_bytes": 512,
    "max_siblings": 4,
    "sibling_warn": 2,
    "max_clock_entries": 6,
    "max_context_bytes": 128,
    "max_container_len": 32,
    "max_depth": 8,
}
LIMITS = dataclasses.replace(
    Limits(), **{f.name: SMALL_LIMITS[f.name] for f in dataclasses.fields(Limits) if f.name in SMALL_LIMITS}
)

T = TypeVar("T")


Allowed = type[BaseException] | tuple[type[BaseException], ...]


def expect(allowed: Allowed, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call ``fn``; a documented rejection gives None, anything else propagates (a finding)."""
    try:
        return fn(*args, **kwargs)
    except allowed:
        return None


# --- checks, one per target ---------------------------------------------------------------


def check_request(frame: bytes) -> None:
    req = expect(BadRequest, decode_request, frame, LIMITS)
    if req is None:
        return
    assert type(req.id) is int and isinstance(req.op, str) and isinstance(req.body, dict)
    body = req.body
    # The field reads the handlers do (dynq/node.py), in the same way.
    expect(InvalidRequest, get_bytes, body, "k")
    expect(InvalidRequest, get_bytes, body, "v")
    expect(InvalidRequest, get_str, body, "h", required=False)
    expect(InvalidRequest, get_int, body, "t", lo=1, hi=600_000, default=1000)
    expect(InvalidRequest, get_int, body, "w", lo=1, hi=3, default=2)
    ctx = expect(InvalidRequest, get_bytes, body, "ctx", required=False)
    if ctx is not None:
        expect(InvalidContext, decode_context, ctx, LIMITS)
    blob = expect(InvalidRequest, get_bytes, body, "ob", required=False)
    if blob is not None:
        expect(ProtocolError, decode_object, blob, LIMITS)
    if "state" in body:
        expect(MembershipError, ClusterState.from_wire, body["state"])
    if "member" in body:
        expect(MembershipError, member_from_wire, body["member"])


def check_reply(frame: bytes) -> None:
    reply = expect(ProtocolError, decode_reply, frame, LIMITS)
    if reply is None:
        return
    if not reply.ok:
        assert isinstance(error_from_wire(reply.error), DynqError)  # must never raise
        return
    expect(ProtocolError, decode_reply_object, reply.body, LIMITS)
    if "table" in reply.body:
        table = expect(ProtocolError, RoutingTable.from_wire, reply.body["table"])
        if table is not None:
            table.limits(LIMITS)
            check_ring_usable(table.ring)


def check_object(frame: bytes) -> None:
    obj = expect(ProtocolError, decode_object, frame, LIMITS)
    if obj is None:
        expect(ProtocolError, decode_reply_object, {"ob": frame}, LIMITS)
        return
    again = decode_object(encode_object(obj), LIMITS)
    assert again == obj, f"object does not round-trip: {obj!r} -> {again!r}"
    assert merge(obj, EMPTY) == obj and merge(EMPTY, obj) == obj, "merge with EMPTY changed the object"
    _ = (obj.values, obj.found, obj.is_tombstone)


def check_context(frame: bytes) -> None:
    clock = expect(InvalidContext, decode_context, frame, LIMITS)
    if clock is None:
        return
    again = decode_context(encode_context(clock), LIMITS)
    assert again == clock, f"context does not round-trip: {clock!r} -> {again!r}"


def check_ring_usable(ring: Ring) -> None:
    """The Ring docstring promises that a Ring that exists is always usable."""
    for p in range(ring.q):
        ring.preference_list(p)
    ring.owned_counts()
    assert Ring.from_wire(ring.to_wire()) == ring, "ring does not round-trip"


def check_membership(frame: bytes) -> None:
    data = expect(ProtocolError, unpackb, frame, LIMITS)
    if data is None:
        return
    # Same decoded value through every parser: a state, staged changes, a member, a ring.
    state = expect(MembershipError, ClusterState.from_wire, data)
    if state is not None:
        check_ring_usable(state.ring)
        if state.next_ring is not None:
            check_ring_usable(state.next_ring)
        _ = (state.digest, state.members, state.leaving, state.joining, claimant(state), newest(state, state))
        for member in state.members:
            state.status_of(member.name)
            for p in range(state.ring.q):
                state.is_replica(member.name, p)
        again = ClusterState.from_wire(state.to_wire())
        assert again == state and again.digest == state.digest, "cluster state does not round-trip"
    staged = expect(MembershipError, Staged.from_wire, data)
    if staged is not None:
        assert Staged.from_wire(staged.to_wire()) == staged, "staged changes do not round-trip"
    expect(MembershipError, member_from_wire, data)
    ring = expect(RingError, Ring.from_wire, data)
    if ring is not None:
        check_ring_usable(ring)


CHECKS: dict[str, Callable[[bytes], None]] = {
    "request": check_request,
    "reply": check_reply,
    "object": check_object,
    "context": check_context,
    "membership": check_membership,
}


def check_all(frame: bytes) -> None:
    for check in CHECKS.values():
        check(frame)


# --- seeds: valid encodings, so the fuzzer starts from real structure ----------------------


def seed_inputs() -> dict[str, dict[str, bytes]]:
    members = [Member("a", "tcp://10.0.0.1:7100", "z1"), Member("b", "tcp://10.0.0.2:7100", "z2"),
               Member("c", "tcp://10.0.0.3:7100", "z1", 2)]
    joining = Member("d", "tcp://10.0.0.4:7100", "z2")
    stable = initial_state(members, q=8, n=2)
    moving = stable.begin([*members, joining])
    staged = Staged((joining,), ("b",))
    first = update(None, {}, "a", b"v1", 1_700_000_000_000)
    second = update(first, {}, "b", b"v2", 1_700_000_000_001)  # concurrent: two siblings
    deleted = update(second, second.clock, "c", None, 1_700_000_000_002)  # tombstone
    context = encode_context(second.clock)
    table = RoutingTable(stable.ring, r=2, w=2, max_key_bytes=64, max_value_bytes=256)
    quorum = QuorumError("quorum not met", required=2, succeeded=1, errors={"b": "timeout"})
    return {
        "request": {
            "ping": encode_request(1, "ping", {}),
            "put": encode_request(2, "put", {"k": b"key", "v": b"value", "ctx": context, "w": 2, "t": 1000}),
            "replica_put": encode_request(3, "replica_put", {"k": b"key", "ob": encode_object(second), "h": "b"}),
            "cluster_state": encode_request(4, "cluster_state", {"state": moving.to_wire()}),
            "member_join": encode_request(5, "member_join", {"member": member_to_wire(joining)}),
        },
        "reply": {
            "get": encode_reply(1, 3, {"ob": encode_object(second)}),
            "none": encode_reply(2, 3, {"ob": None}),
            "table": encode_reply(3, 3, {"table": table.to_wire()}),
            "quorum_error": encode_error(4, 3, quorum),
            "bad_context": encode_error(5, 3, InvalidContext("invalid context")),
        },
        "object": {
            "one": encode_object(first),
            "siblings": encode_object(second),
            "tombstone": encode_object(deleted),
        },
        "context": {
            "clock": context,
            "empty": encode_context({}),
        },
        "membership": {
            "stable": packb(stable.to_wire()),
            "moving": packb(moving.to_wire()),
            "staged": packb(staged.to_wire()),
            "member": packb(member_to_wire(joining)),
            "ring": packb(moving.next_ring.to_wire() if moving.next_ring else stable.ring.to_wire()),
        },
    }


def write_seeds(target: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seed_inputs()
    for name in (CHECKS if target == "all" else [target]):
        for label, data in seeds[name].items():
            (directory / f"seed-{name}-{label}").write_bytes(data)


# --- structural msgpack mutator -------------------------------------------------------------

INTERESTING: list[Any] = [
    None, True, False, 0, 1, -1, 2, 127, 128, 255, 256, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63),
    0.5, "", "a", "tcp://", "ipc://x", "\x00", "é" * 3, b"", b"\x00", b"x" * 600, [], {}, [[]], {"": None},
]
KNOWN_KEYS = [
    "v", "id", "op", "b", "e", "ok", "err", "code", "msg", "required", "succeeded", "errors",
    "k", "ctx", "ob", "h", "t", "w", "r", "pw", "state", "member", "table", "ring", "next",
    "transfers", "planned", "joins", "leaves", "epoch", "q", "n", "members", "owners",
    "max_key_bytes", "max_value_bytes",
]
NESTING = [2, 8, 64, 500, 900, 960, 1000, 1020]  # up to msgpack's own depth limit (1024)
# msgpack.packb refuses more than 511 levels, so a deeply nested value is packed separately
# and replaces this placeholder (packed as bin8) in the output.
DEEP_MARK = b"\xfe\xed-deep-nesting-"


def _nodes(value: Any, out: list[tuple[Any, Any]], parent: Any = None, key: Any = None) -> None:
    """Every (container, key) slot in ``value``; (None, None) is the root."""
    out.append((parent, key))
    if len(out) > 2000:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _nodes(item, out, value, i)
    elif isinstance(value, dict):
        for k, item in value.items():
            _nodes(item, out, value, k)


def _mutate_value(root: Any, rng: random.Random, deep: list[bytes]) -> Any:
    slots: list[tuple[Any, Any]] = []
    _nodes(root, slots)
    strings = [v for p, k in slots for v in [root if p is None else p[k]] if isinstance(v, str)]
    parent, key = rng.choice(slots)
    current = root if parent is None else parent[key]
    donor_parent, donor_key = rng.choice(slots)
    donor = root if donor_parent is None else donor_parent[donor_key]
    op = rng.randrange(9)
    new: Any
    if op == 0:
        new = copy.deepcopy(rng.choice(INTERESTING))
    elif op == 1:  # splice another part of the input here (type confusion between fields)
        new = copy.deepcopy(donor)
    elif op == 2:  # deep nesting (reprs, recursion in error paths); spliced in after packing
        deep.append(b"\x91" * rng.choice(NESTING) + msgpack.packb(current, use_bin_type=True))
        new = DEEP_MARK + bytes([len(deep) - 1])
    elif op == 3 and isinstance(current, int) and not isinstance(current, bool):
        new = rng.choice([current + 1, current - 1, -current, current * 2, current ^ (1 << rng.randrange(64))])
    elif op == 4 and strings:
        new = rng.choice(strings)  # a name that exists elsewhere (owners, transfers, leaves)
    elif op == 5 and isinstance(current, list) and current:
        i = rng.randrange(len(current))
        choice = rng.randrange(3)
        if choice == 0:
            del current[i]
        elif choice == 1:
            current.insert(i, copy.deepcopy(current[i]))
        else:
            current[i], current[-1] = current[-1], current[i]
        return root
    elif op == 6 and isinstance(current, dict):
        if current and rng.random() < 0.4:
            del current[rng.choice(list(current))]
        else:
            current[rng.choice(KNOWN_KEYS)] = copy.deepcopy(rng.choice([donor, *INTERESTING]))
        return root
    elif op == 7:
        new = rng.choice([[current], {rng.choice(KNOWN_KEYS): current}, str(current)[:40], packb_safe(current)])
    else:
        new = copy.deepcopy(rng.choice(INTERESTING))
    if parent is None:
        return new
    parent[key] = new
    return root


def packb_safe(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - unpackable (too deep, odd types): no splice
        return b""


def byte_mutate(data: bytes, max_size: int) -> bytes:
    mutated: bytes = atheris.Mutate(data, max_size)
    return mutated


def structural_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Half the time mutate the decoded msgpack value, else let libFuzzer mutate bytes."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return byte_mutate(data, max_size)
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        deep: list[bytes] = []
        for _ in range(rng.randint(1, 3)):
            value = _mutate_value(value, rng, deep)
        out: bytes = msgpack.packb(value, use_bin_type=True)
        for i in reversed(range(len(deep))):  # later ones may hold earlier marks; some were dropped
            nested = deep[i]
            mark = DEEP_MARK + bytes([i])
            out = out.replace(b"\xc4" + bytes([len(mark)]) + mark, nested)
    except Exception:  # noqa: BLE001 - not msgpack (or too deep to re-pack): bytes it is
        return byte_mutate(data, max_size)
    return out if len(out) <= max_size else byte_mutate(data, max_size)


# --- entry point ------------------------------------------------------------------------------


class FindingLog:
    """--keep-going: report each distinct unexpected exception once, keep its input, go on."""

    def __init__(self, target: str, directory: Path) -> None:
        self.target = target
        self.directory = directory
        self.seen: set[tuple[str, str, int]] = set()

    def wrap(self, check: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def run(data: bytes) -> None:
            try:
                check(data)
            except Exception as exc:  # noqa: BLE001 - every unexpected type is a finding
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                signature = (type(exc).__name__, frame.filename, frame.lineno or 0)
                if signature in self.seen:
                    return
                self.seen.add(signature)
                name = f"finding-{self.target}-{type(exc).__name__}-{hashlib.sha1(data).hexdigest()[:12]}"
                self.directory.mkdir(parents=True, exist_ok=True)
                (self.directory / name).write_bytes(data)
                sys.stderr.write(f"\n=== FINDING {len(self.seen)}: {name}\ninput ({len(data)} bytes): {data[:200]!r}\n")
                sys.stderr.write("".join(traceback.format_exception(exc, limit=-8)))
                sys.stderr.flush()
        return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[*CHECKS, "all"], default="all")
    parser.add_argument("--keep-going", action="store_true", help="log distinct findings and continue")
    parser.add_argument("--no-structural", action="store_true", help="libFuzzer byte mutations only")
    ours, libfuzzer_args = parser.parse_known_args()

    corpus = FUZZ_DIR / "corpus" / ours.target
    artifacts = FUZZ_DIR / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    write_seeds(ours.target, corpus)
    flags = [a for a in libfuzzer_args if a.startswith("-")]
    paths = [a for a in libfuzzer_args if not a.startswith("-")]
    defaults = {"-max_len": "4096", "-timeout": "10", "-artifact_prefix": f"{artifacts}/"}
    flags += [f"{k}={v}" for k, v in defaults.items() if not any(f.startswith(k + "=") for f in flags)]
    argv = [sys.argv[0], *flags, *(paths or [str(corpus)])]

    check = check_all if ours.target == "all" else CHECKS[ours.target]
    if ours.keep_going:
        check = FindingLog(ours.target, artifacts).wrap(check)
    if ours.no_structural:
        atheris.Setup(argv, check)
    else:
        atheris.Setup(argv, check, custom_mutator=structural_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
