"""The dynq wire protocol: one msgpack map per ZeroMQ message.

A request travels DEALER -> ROUTER as a single frame (the ROUTER adds the sender's
identity frame in front)::

    {"v": PROTOCOL_VERSION, "id": <int>, "op": <str>, "b": {<op-specific body>}}

and every reply, success or failure, names the request it answers and the ring epoch
of the node that answered, so a client holding an older routing table learns of it
on the very next reply::

    {"v": 1, "id": <int>, "e": <epoch>, "ok": true,  "b": {...}}
    {"v": 1, "id": <int>, "e": <epoch>, "ok": false, "err": {"code": str, "msg": str, ...}}

Keys and values are msgpack ``bin``; op names and node names are ``str``. The protocol
is append-only: new ops and new optional fields may be added, existing ones never change
meaning; a new incompatible shape needs a new ``v``.

Decoding is defensive: size limits are applied by the socket (``MAXMSGSIZE``) and again
by the unpacker (string, binary and container lengths), and every field is type-checked
by the helpers below before a handler sees it.
"""

from __future__ import annotations

import base64
import reprlib
import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import DynqError, InvalidRequest, ProtocolError, error_from_wire

PROTOCOL_VERSION = 1

# Ops, by name. Client-facing first; the rest are spoken between nodes or by the admin CLI.
OP_PING = "ping"
OP_ROUTING_TABLE = "routing_table"
OP_GET = "get"
OP_PUT = "put"
OP_DELETE = "delete"
OP_REPLICA_GET = "replica_get"
OP_REPLICA_PUT = "replica_put"
OP_REPLICA_PUT_BATCH = "replica_put_batch"  # several replica_put bodies in one message, one result each
OP_STATS = "stats"
OP_INSPECT = "inspect"  # one key on one node: object and hints (admin)
OP_BACKUP = "backup"  # online copy of the node's database to a path on its machine (admin)
OP_KEY_REGISTER = "key_register"  # allow a new peer's public key (admin; stored in the data dir)
OP_KEY_REVOKE = "key_revoke"  # forget a registered peer key (admin)
OP_READ_REPAIR = "read_repair"  # a client-coordinated read pushing the merged object to a stale replica
# membership (admin and peers); changes are made by the claimant, other nodes forward them
OP_CLUSTER_STATE = "cluster_state"  # this node's cluster state; with "state", offer a newer one
OP_CLUSTER_JOIN = "cluster_join"  # (to a new node) join the cluster another node belongs to
OP_MEMBER_JOIN = "member_join"  # (to the cluster) stage a new member
OP_CLUSTER_LEAVE = "cluster_leave"  # stage a member leaving
OP_CLUSTER_PLAN = "cluster_plan"  # what committing the staged changes would do
OP_CLUSTER_CLEAR = "cluster_clear"  # drop the staged changes
OP_CLUSTER_COMMIT = "cluster_commit"  # start the transition
OP_TRANSFER_DONE = "transfer_done"  # a source finished one partition transfer
OP_TRANSFERS = "transfers"  # this node's transfers and the cluster's pending ones
OP_BUCKET_CREATE = "bucket_create"  # (claimant) create a bucket with its properties
OP_BUCKET_SET = "bucket_set"  # (claimant) change a bucket's properties (never n)
OP_LIST_KEYS = "list_keys"  # a page of a bucket's live keys in some partitions (listing, export)
# Anti-entropy (peer-only, except ae_repair and ae_tree which the admin CLI and tests use).
OP_AE_ROOT = "ae_root"  # a partition's root hash on this replica
OP_AE_LEVEL = "ae_level"  # children hashes of some nodes of a partition's tree
OP_AE_KEYS = "ae_keys"  # (key, leaf hash) of some segments
OP_AE_OBJECTS = "ae_objects"  # encoded objects of some keys
OP_AE_VERIFY = "ae_verify"  # rebuild a partition's leaves from its objects
OP_AE_REAP_CHECK = "ae_reap_check"  # what a node holds (leaf hash, copy, hints) for tombstone keys
OP_AE_REAP = "ae_reap"  # delete tombstones whose leaf hash is still the given one
OP_AE_REPAIR = "ae_repair"  # run a repair pass of a partition now (admin: dynq repair)
OP_AE_TREE = "ae_tree"  # roots and key counts of this node's partitions (admin, tests)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits enforced on every message and request. Defaults match the node config."""

    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    # Largest single ZeroMQ message either side accepts; also caps a stored object
    # (all its siblings together), so that any object can always be sent to a replica.
    max_message_bytes: int = 16 * 1024 * 1024
    max_siblings: int = 100
    sibling_warn: int = 25
    # Entries in a version vector: one per node that ever coordinated a write of the key.
    max_clock_entries: int = 256
    # Bytes of a context a client sends back (an encoded version vector).
    max_context_bytes: int = 65536
    max_container_len: int = 100_000
    # Nesting of maps and arrays in a request; the request map itself is level 1.
    max_depth: int = 16


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Request:
    id: int
    op: str
    body: dict[str, Any]


@dataclass(slots=True)
class Reply:
    id: int
    epoch: int
    ok: bool
    body: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


def reply_error(reply: Reply | None, error: DynqError | None) -> DynqError | None:
    """The outcome of a request as one error: the transport's (timeout, unreachable), the
    error reply's, or None when the request succeeded."""
    if error is not None:
        return error
    if reply is None:
        return ProtocolError("no reply")
    if not reply.ok:
        return error_from_wire(reply.error)
    return None


_packers = threading.local()
_PACKER_KEEP_BYTES = 1 << 20  # a Packer whose buffer grew past this is dropped after its pack


def packb(obj: Any) -> bytes:
    """msgpack with bin types, by this thread's own Packer: ``msgpack.packb`` builds a
    Packer per call, about half of what encoding a request costs. (A Packer resets its
    buffer when a pack fails, so a failed pack leaves nothing behind for the next.)"""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(obj)
    if len(packed) > _PACKER_KEEP_BYTES:  # its buffer grew to this size: do not keep it
        del _packers.packer
    return packed


_BOUNDED: dict[int, tuple[Limits, dict[str, Any]]] = {}
"""Decoder options per Limits object, by identity: an ``lru_cache`` hashes the whole frozen
dataclass on every call, which was half the cost of decoding a small frame. The entry
holds its Limits, so the id cannot be reused while it is cached."""


def _bounded(limits: Limits) -> dict[str, Any]:
    """msgpack decoder options that bound every length by ``limits`` (cached: hot path;
    callers only unpack it, never change it)."""
    entry = _BOUNDED.get(id(limits))
    if entry is not None and entry[0] is limits:
        return entry[1]
    options = {"raw": False, "strict_map_key": True, "max_bin_len": limits.max_message_bytes,
               "max_str_len": limits.max_message_bytes, "max_array_len": limits.max_container_len,
               "max_map_len": limits.max_container_len, "max_ext_len": 0}
    if len(_BOUNDED) >= 64:  # transient Limits (a large state's decode bound) must not pile up
        _BOUNDED.clear()
    _BOUNDED[id(limits)] = (limits, options)
    return options


def unpackb(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode msgpack with every length bounded; raise ProtocolError on anything wrong."""
    try:
        return msgpack.unpackb(data, **_bounded(limits))
    except Exception as exc:  # msgpack raises several unrelated types (ValueError, StackError, ...)
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}"[:300]) from exc


def encode_request(req_id: int, op: str, body: dict[str, Any]) -> bytes:
    return packb({"v": PROTOCOL_VERSION, "id": req_id, "op": op, "b": body})


def encode_reply(req_id: int, epoch: int, body: dict[str, Any]) -> bytes:
    return packb({"v": PROTOCOL_VERSION, "id": req_id, "e": epoch, "ok": True, "b": body})


def encode_error(req_id: int, epoch: int, error: DynqError) -> bytes:
    return packb({"v": PROTOCOL_VERSION, "id": req_id, "e": epoch, "ok": False, "err": error.to_wire()})


class BadRequest(ProtocolError):
    """A request that could not be decoded. ``request_id`` is set when the id was readable,
    so the node can still answer with an error instead of dropping the message."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def decode_request(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    try:
        msg = unpackb(frame, limits)
    except ProtocolError as exc:
        raise BadRequest(exc.message, _salvage_id(frame, limits)) from exc
    if not isinstance(msg, dict):
        raise BadRequest(f"request must be a map, got {type(msg).__name__}")
    req_id = msg.get("id")
    if type(req_id) is not int:
        raise BadRequest("request has no integer 'id'")
    if _nested_deeper(msg, limits.max_depth):
        raise BadRequest(f"request nests maps and arrays deeper than {limits.max_depth} levels", req_id)
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise BadRequest(
            f"unsupported protocol version {short_repr(version)}; this node speaks {PROTOCOL_VERSION}", req_id
        )
    op = msg.get("op")
    if not isinstance(op, str):
        raise BadRequest("request has no string 'op'", req_id)
    body = msg.get("b", {})
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a map, got {type(body).__name__}", req_id)
    return Request(req_id, op, body)


def _nested_deeper(container: dict[Any, Any] | list[Any], levels: int) -> bool:
    """True if maps and arrays nest more than ``levels`` deep, ``container`` being level 1.
    Only requests are checked (replies and stored objects come from nodes, and every
    field a handler reads is type-checked): about 2 us for a put."""
    if levels <= 0:
        return True
    for item in container.values() if type(container) is dict else container:
        kind = type(item)
        if (kind is dict or kind is list) and _nested_deeper(item, levels - 1):
            return True
    return False


def _salvage_id(frame: bytes, limits: Limits) -> int | None:
    """The id of a request whose body broke a limit, read from the fields before it, so
    the sender gets an error reply instead of silence. None if it cannot be read."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(frame), 1), **_bounded(limits))
    try:
        unpacker.feed(frame)
        for _ in range(min(unpacker.read_map_header(), 8)):
            if unpacker.unpack() == "id":
                req_id = unpacker.unpack()
                return req_id if type(req_id) is int else None
            unpacker.skip()
    except Exception:  # anything at all: there is simply no id to salvage
        return None
    return None


def decode_reply(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Reply:
    msg = unpackb(frame, limits)
    if not isinstance(msg, dict):
        raise ProtocolError(f"reply must be a map, got {type(msg).__name__}")
    req_id, epoch, ok = msg.get("id"), msg.get("e", 0), msg.get("ok")
    if type(req_id) is not int or type(epoch) is not int or not isinstance(ok, bool):
        raise ProtocolError("reply lacks a valid 'id', 'e' or 'ok'")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {short_repr(msg.get('v'))} in reply")
    if ok:
        body = msg.get("b", {})
        if not isinstance(body, dict):
            raise ProtocolError("reply body must be a map")
        return Reply(req_id, epoch, True, body)
    err = msg.get("err")
    return Reply(req_id, epoch, False, {}, err if isinstance(err, dict) else {"code": "protocol"})


_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = 60
_short.maxother = 60


def short_repr(value: object) -> str:
    """A bounded repr for error messages: safe on values nested a thousand levels deep."""
    return _short.repr(value)


def show_bytes(value: bytes) -> str:
    """A key or value for people: the text if it is printable UTF-8, else ``base64:...``."""
    try:
        text = value.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(value).decode()


# --- field helpers: every handler validates its body through these -------------------


def get_bytes(body: dict[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"missing field '{name}'")
        return None
    if not isinstance(value, bytes):
        raise InvalidRequest(f"field '{name}' must be bytes, got {type(value).__name__}")
    return value


def get_str(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"missing field '{name}'")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def get_int(
    body: dict[str, Any], name: str, *, lo: int, hi: int, default: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"field '{name}' must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidRequest(f"field '{name}' must be between {lo} and {hi}, got {value}")
    return value

# Data types (dynq_client.crdt), appended: an op on a typed key (coordinated by a primary,
# which replicates its delta with replica_put), a read of one, and a replica's view of one.
OP_DT_UPDATE = "dt_update"
OP_DT_GET = "dt_get"
OP_DT_REPLICA_GET = "dt_replica_get"
OP_DT_STATS = "dt_stats"  # a node's data type counters (admin, benchmarks)
