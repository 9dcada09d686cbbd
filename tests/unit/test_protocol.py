"""The wire protocol (dynq_client.protocol) and error transport (dynq_client.errors)."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq_client.errors import (
    ERROR_CODES,
    DynqError,
    InvalidRequest,
    ProtocolError,
    QuorumError,
    QuorumTimeout,
    error_from_wire,
)
from dynq_client.protocol import (
    PROTOCOL_VERSION,
    BadRequest,
    Limits,
    Reply,
    Request,
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

# msgpack round-trippable values (lists, not tuples; str map keys; no NaN).
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
)
wire_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
bodies = st.dictionaries(st.text(max_size=8), wire_values, max_size=5)
req_ids = st.integers(-(2**63), 2**64 - 1)


def raw_request(**fields: Any) -> bytes:
    return packb(fields)


# --- round trips ----------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(req_ids, st.text(max_size=20), bodies)
def test_request_round_trip(req_id: int, op: str, body: dict[str, Any]) -> None:
    """decode_request(encode_request(id, op, body)) gives back exactly id, op and body."""
    assert decode_request(encode_request(req_id, op, body)) == Request(req_id, op, body)


@settings(max_examples=80, deadline=None)
@given(req_ids, st.integers(0, 2**63 - 1), bodies)
def test_reply_round_trip(req_id: int, epoch: int, body: dict[str, Any]) -> None:
    """decode_reply(encode_reply(...)) gives back id, epoch, ok=True and the body."""
    assert decode_reply(encode_reply(req_id, epoch, body)) == Reply(req_id, epoch, True, body)


@pytest.mark.parametrize("cls", ERROR_CODES.values(), ids=ERROR_CODES.keys())
def test_error_reply_round_trip(cls: type[DynqError]) -> None:
    """An error reply carries the error map; error_from_wire rebuilds the same class and message."""
    err = make_error(cls)
    reply = decode_reply(encode_error(7, 3, err))
    assert (reply.id, reply.epoch, reply.ok, reply.body) == (7, 3, False, {})
    assert reply.error == err.to_wire()
    back = error_from_wire(reply.error)
    assert type(back) is cls
    assert back.message == err.message and back.code == err.code == cls.code


def test_missing_body_is_empty() -> None:
    """A request or reply without 'b' has an empty body; a reply without 'e' has epoch 0."""
    assert decode_request(raw_request(v=1, id=1, op="ping")).body == {}
    assert decode_reply(packb({"v": 1, "id": 1, "ok": True})) == Reply(1, 0, True, {})


# --- decode_request: malformed requests -----------------------------------------------------

BAD_WITHOUT_ID = {
    "list": packb([1, 2, "get", {}]),
    "int": packb(5),
    "str": packb("request"),
    "nil": packb(None),
    "missing id": raw_request(v=1, op="get", b={}),
    "bool id": raw_request(v=1, id=True, op="get", b={}),
    "str id": raw_request(v=1, id="1", op="get", b={}),
    "float id": raw_request(v=1, id=1.0, op="get", b={}),
    "nil id": raw_request(v=1, id=None, op="get", b={}),
}


@pytest.mark.parametrize("frame", BAD_WITHOUT_ID.values(), ids=BAD_WITHOUT_ID.keys())
def test_decode_request_rejects_without_id(frame: bytes) -> None:
    """Frames without a readable integer id raise BadRequest with request_id None."""
    with pytest.raises(BadRequest) as info:
        decode_request(frame)
    assert info.value.request_id is None
    assert isinstance(info.value, ProtocolError) and info.value.code == "protocol"


BAD_WITH_ID = {
    "missing version": raw_request(id=42, op="get", b={}),
    "future version": raw_request(v=2, id=42, op="get", b={}),
    "version as str": raw_request(v="1", id=42, op="get", b={}),
    "missing op": raw_request(v=1, id=42, b={}),
    "bytes op": raw_request(v=1, id=42, op=b"get", b={}),
    "int op": raw_request(v=1, id=42, op=1, b={}),
    "list body": raw_request(v=1, id=42, op="get", b=[]),
    "nil body": raw_request(v=1, id=42, op="get", b=None),
    "bytes body": raw_request(v=1, id=42, op="get", b=b"k"),
}


@pytest.mark.parametrize("frame", BAD_WITH_ID.values(), ids=BAD_WITH_ID.keys())
def test_decode_request_rejects_with_id(frame: bytes) -> None:
    """Once the id is readable, BadRequest carries it so the node can answer with an error."""
    with pytest.raises(BadRequest) as info:
        decode_request(frame)
    assert info.value.request_id == 42


def test_every_truncation_of_a_request_is_a_bad_request() -> None:
    """Every proper prefix of a valid frame raises BadRequest (never IndexError or the like)."""
    frame = encode_request(123456789, "put", {"k": b"key", "v": b"x" * 40, "ctx": None, "w": 2, "n": [1, {"a": "b"}]})
    for cut in range(len(frame)):
        with pytest.raises(BadRequest):
            decode_request(frame[:cut])
    decode_request(frame)


def test_trailing_bytes_are_rejected() -> None:
    """A valid frame followed by extra bytes is malformed (BadRequest / ProtocolError)."""
    with pytest.raises(BadRequest):
        decode_request(encode_request(1, "ping", {}) + b"\xc0")
    with pytest.raises(ProtocolError):
        decode_reply(encode_reply(1, 1, {}) + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_decode_request_only_raises_bad_request(frame: bytes) -> None:
    """decode_request on arbitrary bytes returns a Request or raises BadRequest, nothing else."""
    try:
        req = decode_request(frame)
    except BadRequest:
        return
    assert isinstance(req.id, int) and not isinstance(req.id, bool)
    assert isinstance(req.op, str) and isinstance(req.body, dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_decode_reply_only_raises_protocol_error(frame: bytes) -> None:
    """decode_reply on arbitrary bytes returns a Reply or raises ProtocolError, nothing else."""
    try:
        reply = decode_reply(frame)
    except ProtocolError:
        return
    assert isinstance(reply.body, dict)
    assert reply.ok or isinstance(reply.error, dict)


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "id", "op", "b", "e", "ok", "err", "x"]), wire_values, max_size=6))
def test_fuzz_near_miss_envelopes(msg: dict[str, Any]) -> None:
    """Envelopes with arbitrary field values decode or raise BadRequest / ProtocolError only."""
    frame = packb(msg)
    try:
        decode_request(frame)
    except BadRequest:
        pass
    try:
        reply = decode_reply(frame)
    except ProtocolError:
        return
    if not reply.ok:
        assert isinstance(error_from_wire(reply.error), DynqError)


# --- hostile msgpack ------------------------------------------------------------------------


def test_deep_nesting_is_a_protocol_error_not_recursion_error() -> None:
    """10,000 nested arrays raise ProtocolError / BadRequest, not RecursionError."""
    nested = b"\x91" * 10_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        unpackb(nested)
    with pytest.raises(BadRequest):
        decode_request(nested)
    with pytest.raises(ProtocolError):
        decode_reply(nested)
    in_body = b"\x84" + packb("v") + b"\x01" + packb("id") + b"\x01" + packb("op") + packb("get") + packb("b") + b"\x81" + packb("k") + nested
    with pytest.raises(BadRequest):
        decode_request(in_body)
    deep_maps = (b"\x81" + packb("k")) * 10_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        unpackb(deep_maps)


HUGE_HEADERS = {
    "bin32 4GiB": b"\xc6\xff\xff\xff\xff" + b"x" * 16,
    "str32 4GiB": b"\xdb\xff\xff\xff\xff" + b"x" * 16,
    "array32 4G": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 16,
    "map32 4G": b"\xdf\xff\xff\xff\xff" + b"\xa1k\xc0" * 8,
    "ext32 4GiB": b"\xc9\xff\xff\xff\xff\x01" + b"x" * 16,
    "bin32 just over the limit": b"\xc6" + struct.pack(">I", 16 * 1024 * 1024 + 1) + b"x",
    "array32 just over the limit": b"\xdd" + struct.pack(">I", 100_001) + b"\xc0",
}


@pytest.mark.parametrize("frame", HUGE_HEADERS.values(), ids=HUGE_HEADERS.keys())
def test_oversized_declared_lengths_are_rejected_without_allocating(frame: bytes) -> None:
    """A header claiming gigabytes raises ProtocolError and does not allocate anything like it."""
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            unpackb(frame)
        with pytest.raises(BadRequest):
            decode_request(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_limits_are_applied() -> None:
    """Binary, string and container lengths are bounded by the Limits passed in."""
    small = Limits(max_message_bytes=16, max_container_len=3)
    assert unpackb(packb(b"x" * 16), small) == b"x" * 16
    assert unpackb(packb("y" * 16), small) == "y" * 16
    assert unpackb(packb([1, 2, 3]), small) == [1, 2, 3]
    for too_big in (b"x" * 17, "y" * 17, [1, 2, 3, 4], {"a": 1, "b": 2, "c": 3, "d": 4}):
        with pytest.raises(ProtocolError):
            unpackb(packb(too_big), small)
    with pytest.raises(BadRequest):
        decode_request(encode_request(1, "put", {"v": b"x" * 17}), small)


MALFORMED = {
    "fixext": b"\xd4\x01\x00",
    "timestamp ext": msgpack.packb(msgpack.Timestamp(1, 0)),
    "int map key": packb({1: 2}),
    "nil map key": b"\x81\xc0\x01",
    "invalid utf-8 str": b"\xa2\xff\xfe",
    "reserved byte": b"\xc1",
    "empty": b"",
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_msgpack_is_a_protocol_error(frame: bytes) -> None:
    """Ext types, non-string map keys, bad UTF-8, reserved bytes and empty input raise ProtocolError."""
    with pytest.raises(ProtocolError):
        unpackb(frame)
    with pytest.raises(BadRequest):
        decode_request(frame)


# --- decode_reply: malformed replies --------------------------------------------------------

BAD_REPLIES = {
    "not a map": packb([1, 1, 0, True]),
    "missing id": packb({"v": 1, "e": 1, "ok": True}),
    "str id": packb({"v": 1, "id": "1", "e": 1, "ok": True}),
    "str epoch": packb({"v": 1, "id": 1, "e": "1", "ok": True}),
    "missing ok": packb({"v": 1, "id": 1, "e": 1}),
    "int ok": packb({"v": 1, "id": 1, "e": 1, "ok": 1}),
    "wrong version": packb({"v": 2, "id": 1, "e": 1, "ok": True}),
    "missing version": packb({"id": 1, "e": 1, "ok": True}),
    "list body": packb({"v": 1, "id": 1, "e": 1, "ok": True, "b": []}),
}


@pytest.mark.parametrize("frame", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_decode_reply_rejects_malformed(frame: bytes) -> None:
    """Replies without a valid envelope raise ProtocolError."""
    with pytest.raises(ProtocolError):
        decode_reply(frame)


def test_error_reply_without_error_map_reads_as_protocol_error() -> None:
    """ok=false with a missing or non-map 'err' still yields a usable error map."""
    for err in (None, "oops", [1, 2]):
        reply = decode_reply(packb({"v": 1, "id": 1, "e": 0, "ok": False, "err": err}))
        assert not reply.ok and reply.error == {"code": "protocol"}
        assert type(error_from_wire(reply.error)) is ProtocolError


# Regression: decode_reply used isinstance(int), so True passed as id 1 (decode_request already refused it).
@pytest.mark.parametrize("field", ["id", "e"])
def test_decode_reply_rejects_bool_id_and_epoch(field: str) -> None:
    """Booleans are not integers on the wire: a reply with a bool id or epoch is a ProtocolError."""
    msg: dict[str, Any] = {"v": 1, "id": 1, "e": 1, "ok": True}
    msg[field] = True
    with pytest.raises(ProtocolError):
        decode_reply(packb(msg))


# --- errors over the wire -------------------------------------------------------------------


def make_error(cls: type[DynqError]) -> DynqError:
    if issubclass(cls, QuorumError):
        return cls("put failed: 1 of 2", required=2, succeeded=1, errors={"n2": "storage: full", "n3": "timeout"})
    return cls(f"something about {cls.__name__}")


@pytest.mark.parametrize("cls", ERROR_CODES.values(), ids=ERROR_CODES.keys())
def test_error_from_wire_round_trip(cls: type[DynqError]) -> None:
    """Every registered error class survives to_wire -> msgpack -> error_from_wire intact."""
    err = make_error(cls)
    wire = unpackb(packb(err.to_wire()))
    back = error_from_wire(wire)
    assert type(back) is cls
    assert back.code == cls.code and back.message == err.message
    if isinstance(err, QuorumError):
        assert isinstance(back, QuorumError)
        assert (back.required, back.succeeded, back.errors) == (2, 1, {"n2": "storage: full", "n3": "timeout"})
        assert str(back) == str(err)


def test_error_codes_are_unique_and_match_classes() -> None:
    """ERROR_CODES maps each code to the class that declares it; QuorumTimeout is both kinds."""
    for code, cls in ERROR_CODES.items():
        assert cls.code == code
    assert len(set(ERROR_CODES.values())) == len(ERROR_CODES)
    assert issubclass(QuorumTimeout, QuorumError)


GARBAGE_ERRORS: list[object] = [
    None,
    42,
    "quorum",
    b"\x00",
    [1, 2],
    {},
    {"code": None},
    {"code": 7, "msg": "x"},
    {"code": "no_such_code", "msg": "hello"},
    {"code": "storage", "msg": None},
    {"code": "storage", "msg": [1, {"a": b"b"}]},
    {"code": "quorum", "msg": "m", "required": "two", "succeeded": None, "errors": [1, 2]},
    {"code": "quorum_timeout", "msg": "m", "errors": {"a": None, "b": [1]}},
]


@pytest.mark.parametrize("err", GARBAGE_ERRORS, ids=[repr(e)[:40] for e in GARBAGE_ERRORS])
def test_error_from_wire_on_garbage_returns_an_error(err: object) -> None:
    """error_from_wire never raises: garbage becomes a DynqError describing it."""
    out = error_from_wire(err)
    assert isinstance(out, DynqError)
    assert isinstance(out.message, str)
    if not isinstance(err, dict):
        assert isinstance(out, ProtocolError)
    if isinstance(out, QuorumError):
        assert isinstance(out.required, int) and isinstance(out.succeeded, int)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.errors.items())


def test_error_from_wire_unknown_code_keeps_code_and_message() -> None:
    """An unknown code (from a newer node) becomes a plain DynqError naming the code."""
    out = error_from_wire({"code": "brand_new", "msg": "details"})
    assert type(out) is DynqError
    assert "brand_new" in out.message and "details" in out.message


@settings(max_examples=150, deadline=None)
@given(wire_values | st.dictionaries(st.sampled_from(["code", "msg", "required", "succeeded", "errors"]), wire_values | st.sampled_from(list(ERROR_CODES)), max_size=5))
def test_fuzz_error_from_wire_never_raises(err: object) -> None:
    """error_from_wire returns a DynqError for any value msgpack can carry."""
    out = error_from_wire(err)
    assert isinstance(out, DynqError)
    str(out)


# Regression: repr(msg) / str(v) on a list nested ~1000 deep (msgpack accepts up to 1024
# levels) raised RecursionError on CPython 3.11.
@pytest.mark.parametrize("where", ["msg", "quorum errors"])
def test_error_from_wire_survives_deeply_nested_fields(where: str) -> None:
    """A deeply nested error field from a (hostile or buggy) peer still yields a DynqError."""
    nested = b"\x91" * 1020 + b"\xc0"
    if where == "msg":
        err_map = b"\x82" + packb("code") + packb("storage") + packb("msg") + nested
    else:
        err_map = b"\x83" + packb("code") + packb("quorum") + packb("msg") + packb("m") + packb("errors") + b"\x81" + packb("n1") + nested
    frame = b"\x85" + packb("v") + b"\x01" + packb("id") + b"\x01" + packb("e") + b"\x00" + packb("ok") + b"\xc2" + packb("err") + err_map
    reply = decode_reply(frame)  # the frame itself is legal msgpack
    assert isinstance(error_from_wire(reply.error), DynqError)


# --- field helpers --------------------------------------------------------------------------


def test_get_bytes() -> None:
    """get_bytes returns bytes, treats None as missing, and rejects every other type with InvalidRequest."""
    body = {"k": b"key", "empty": b"", "none": None, "s": "key", "i": 1, "l": [b"k"], "ba": bytearray(b"k")}
    assert get_bytes(body, "k") == b"key"
    assert get_bytes(body, "empty") == b""
    assert get_bytes(body, "missing", required=False) is None
    assert get_bytes(body, "none", required=False) is None
    for name in ("missing", "none"):
        with pytest.raises(InvalidRequest, match="missing field"):
            get_bytes(body, name)
    for name in ("s", "i", "l", "ba"):
        for required in (True, False):
            with pytest.raises(InvalidRequest, match="must be bytes"):
                get_bytes(body, name, required=required)


def test_get_str() -> None:
    """get_str returns str, treats None as missing, and rejects other types with InvalidRequest."""
    body = {"s": "node-1", "empty": "", "b": b"node-1", "i": 3, "none": None}
    assert get_str(body, "s") == "node-1"
    assert get_str(body, "empty") == ""
    assert get_str(body, "missing", required=False) is None
    with pytest.raises(InvalidRequest, match="missing field"):
        get_str(body, "missing")
    with pytest.raises(InvalidRequest, match="missing field"):
        get_str(body, "none")
    for name in ("b", "i"):
        with pytest.raises(InvalidRequest, match="must be a string"):
            get_str(body, name, required=False)


def test_get_int_types_and_defaults() -> None:
    """get_int returns the default when absent/None and rejects bools, floats and strings."""
    assert get_int({}, "r", lo=1, hi=5) is None
    assert get_int({}, "r", lo=1, hi=5, default=2) == 2
    assert get_int({"r": None}, "r", lo=1, hi=5, default=3) == 3
    for bad in (True, False, 2.0, "2", b"2", [2]):
        with pytest.raises(InvalidRequest, match="must be an integer"):
            get_int({"r": bad}, "r", lo=0, hi=5, default=1)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**64), 2**64), st.integers(-1000, 1000), st.integers(0, 1000))
def test_get_int_range(value: int, lo: int, width: int) -> None:
    """get_int accepts exactly the integers in [lo, hi] (inclusive) and rejects the rest with InvalidRequest."""
    hi = lo + width
    if lo <= value <= hi:
        assert get_int({"n": value}, "n", lo=lo, hi=hi) == value
    else:
        with pytest.raises(InvalidRequest, match="between"):
            get_int({"n": value}, "n", lo=lo, hi=hi)
    assert get_int({"n": lo}, "n", lo=lo, hi=hi) == lo
    assert get_int({"n": hi}, "n", lo=lo, hi=hi) == hi


def test_field_errors_are_invalid_request_not_protocol_error() -> None:
    """Bad fields are the client's fault (code 'invalid'), distinct from malformed frames."""
    with pytest.raises(InvalidRequest) as info:
        get_bytes({}, "k")
    assert info.value.code == "invalid"
    assert not isinstance(info.value, ProtocolError)
    assert "'k'" in info.value.message


def test_protocol_version_is_one() -> None:
    """Frames are stamped with PROTOCOL_VERSION (1), as peers expect."""
    assert PROTOCOL_VERSION == 1
    assert msgpack.unpackb(encode_request(1, "ping", {}))["v"] == 1
    assert msgpack.unpackb(encode_error(1, 1, DynqError("x")))["v"] == 1


def test_packb_a_failed_pack_leaves_nothing_for_the_next_and_threads_do_not_share() -> None:
    """packb reuses one Packer per thread: a pack that fails must not leak its partial
    bytes into the next, and concurrent threads must each get exactly their own bytes."""
    import threading

    import msgpack

    with pytest.raises(TypeError):
        packb({"k": b"partial", "bad": object()})
    assert packb([1, b"x"]) == msgpack.packb([1, b"x"], use_bin_type=True)
    big = b"v" * (3 << 20)  # a buffer this large is not kept: the next pack is a fresh Packer
    assert unpackb(packb(big), Limits(max_message_bytes=8 << 20)) == big
    wrong: list[int] = []

    def hammer(n: int) -> None:
        obj = {"thread": n, "payload": bytes([n]) * 500}
        want = msgpack.packb(obj, use_bin_type=True)
        for _ in range(2000):  # bounded
            if packb(obj) != want:
                wrong.append(n)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not wrong
