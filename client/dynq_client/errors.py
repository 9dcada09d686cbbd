"""The one exception hierarchy of dynq, shared by the client and the node.

Every error a caller can see is a :class:`DynqError`. Errors that travel over the
wire carry a stable string ``code`` (see :data:`ERROR_CODES`); the receiving side
rebuilds the most specific exception from it with :func:`error_from_wire`::

    DynqError
    ├── InvalidRequest          code "invalid": bad types, sizes, unknown fields
    │   ├── KeyTooLarge         code "key_too_large"
    │   ├── ValueTooLarge       code "value_too_large"
    │   ├── InvalidContext      code "bad_context": a context that is not one dynq made
    │   ├── UnknownBucket       code "unknown_bucket": no bucket of that name (dynq bucket create)
    │   └── WrongDataType       code "wrong_datatype": a plain op on a typed bucket, or the reverse
    ├── UnknownOp               code "unknown_op"
    ├── ProtocolError           code "protocol": malformed frame, wrong protocol version
    ├── TooManySiblings         code "siblings": the key has too many concurrent versions
    ├── PreconditionFailed      code "precondition": a conditional put found the key not as
    │                           required (``if_none_match``/``if_match``); carries what it found
    ├── StorageError            code "storage": the replica could not make the write durable
    ├── Unavailable             code "unavailable": no node could be reached
    │   ├── Overloaded          code "overloaded": the node refused it unexecuted (in-flight cap)
    │   └── HandshakeFailed     code "handshake": the connection's security handshake failed
    │                           (CURVE on one side only, a refused key, a wrong cluster key)
    ├── Timeout                 code "timeout": no answer in time; the outcome is unknown
    ├── QuorumError             code "quorum": fewer than R/W replicas succeeded
    │   └── QuorumTimeout       code "quorum_timeout": ... because the deadline passed
    │                           (also a Timeout)
    └── InternalError           code "internal": a bug on the server; the message says more
"""

from __future__ import annotations

import reprlib
from typing import Any, Mapping


class DynqError(Exception):
    """Base class of every error dynq raises."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        """The error as a plain map, for an error reply."""
        return {"code": self.code, "msg": self.message}


class InvalidRequest(DynqError):
    """The request is malformed: wrong types, missing fields, bad sizes."""

    code = "invalid"


class KeyTooLarge(InvalidRequest):
    code = "key_too_large"


class ValueTooLarge(InvalidRequest):
    code = "value_too_large"


class InvalidContext(InvalidRequest):
    """The context bytes were not produced by dynq (or are corrupt)."""

    code = "bad_context"


class UnknownBucket(InvalidRequest):
    """The request names a bucket the cluster does not have (create it with
    ``dynq bucket create``)."""

    code = "unknown_bucket"


class UnknownOp(DynqError):
    code = "unknown_op"


class Forbidden(DynqError):
    """The caller's key may not do this (a client key asking for a peer or admin op, or a
    key that was revoked)."""

    code = "forbidden"


class ProtocolError(DynqError):
    """A frame that is not a valid dynq message, or an unsupported protocol version."""

    code = "protocol"


class TooManySiblings(DynqError):
    """A write refused because the key already holds the maximum number of siblings.

    Resolve the siblings: read the key, merge its values, and write back with the context.
    """

    code = "siblings"


class PreconditionFailed(DynqError):
    """A conditional put was not made: ``if_none_match`` found a live value, or
    ``if_match`` found a version other than the one its context names. Nothing was
    written. ``values`` are the live values found and ``context`` their context (write
    with it to supersede them), as a get would have returned them."""

    code = "precondition"

    def __init__(self, message: str, *, values: list[bytes] | None = None, context: bytes = b"") -> None:
        super().__init__(message)
        self.values: list[bytes] = list(values or [])
        self.context = context

    @property
    def found(self) -> bool:
        return bool(self.values)

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.message, "values": self.values, "ctx": self.context}


class StorageError(DynqError):
    """A replica failed to commit (disk full, I/O error); nothing was acknowledged."""

    code = "storage"


class Unavailable(DynqError):
    """No node of the cluster (or of the key's preference list) could be reached."""

    code = "unavailable"


class Overloaded(Unavailable):
    """The node refused the request unexecuted because this connection already had as
    many requests in flight as the node allows (``max_in_flight_per_connection``): a
    client that floods is refused, not served at everyone else's expense. Safe to retry;
    the client library tries another node and then backs off."""

    code = "overloaded"


class HandshakeFailed(Unavailable):
    """The connection to a node never got past its security handshake: one side runs CURVE
    and the other does not, the node refused this party's key, or the party holds the wrong
    cluster public key. The message names the address and the cause. Nothing was sent, so
    nothing happened; retrying does not help until the keys are fixed."""

    code = "handshake"


class Timeout(DynqError):
    """No answer within the deadline: the operation may or may not have taken effect."""

    code = "timeout"


class InternalError(DynqError):
    code = "internal"


class QuorumError(DynqError):
    """Fewer replicas succeeded than the request required.

    ``errors`` maps each replica that failed (or did not answer) to its error message.
    """

    code = "quorum"

    def __init__(
        self,
        message: str,
        *,
        required: int,
        succeeded: int,
        errors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.required = required
        self.succeeded = succeeded
        self.errors: dict[str, str] = dict(errors or {})

    def __str__(self) -> str:
        detail = "; ".join(f"{name}: {err}" for name, err in sorted(self.errors.items()))
        base = f"{self.message} (required {self.required}, succeeded {self.succeeded})"
        return f"{base}: {detail}" if detail else base

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "msg": self.message,
            "required": self.required,
            "succeeded": self.succeeded,
            "errors": self.errors,
        }


class NotEnoughReplicas(QuorumError):
    """A write refused before anything was written: the coordinator could not reach enough
    replicas (or primaries, for ``pw``). Safe to retry, or to send to another node, which
    the client does by itself."""

    code = "not_enough_replicas"


class QuorumTimeout(QuorumError, Timeout):
    """The deadline passed before enough replicas answered."""

    code = "quorum_timeout"


ERROR_CODES: dict[str, type[DynqError]] = {
    cls.code: cls
    for cls in (
        DynqError,
        InvalidRequest,
        KeyTooLarge,
        ValueTooLarge,
        InvalidContext,
        UnknownBucket,
        UnknownOp,
        Forbidden,
        ProtocolError,
        TooManySiblings,
        PreconditionFailed,
        StorageError,
        Unavailable,
        Overloaded,
        HandshakeFailed,
        Timeout,
        InternalError,
        QuorumError,
        NotEnoughReplicas,
        QuorumTimeout,
    )
}


def error_from_wire(err: object) -> DynqError:
    """Rebuild the most specific exception from an error map received on the wire."""
    if not isinstance(err, dict):
        return ProtocolError(f"malformed error reply: {_short_repr(err)}")
    code = err.get("code")
    msg = err.get("msg")
    message = msg if isinstance(msg, str) else _short_repr(msg)
    cls = ERROR_CODES.get(code) if isinstance(code, str) else None
    if cls is None:
        return DynqError(f"{_text(code)}: {message}")
    if issubclass(cls, QuorumError):
        required, succeeded, errors = err.get("required"), err.get("succeeded"), err.get("errors")
        return cls(
            message,
            required=required if isinstance(required, int) else 0,
            succeeded=succeeded if isinstance(succeeded, int) else 0,
            errors={_text(k): _text(v) for k, v in errors.items()} if isinstance(errors, dict) else {},
        )
    if cls is PreconditionFailed:
        values, ctx = err.get("values"), err.get("ctx")
        return PreconditionFailed(
            message,
            values=[v for v in values if isinstance(v, bytes)] if isinstance(values, list) else [],
            context=ctx if isinstance(ctx, bytes) else b"",
        )
    return cls(message)


def _short_repr(value: object) -> str:
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, 200, 200
    return r.repr(value)


def _text(value: object) -> str:
    return value if isinstance(value, str) else _short_repr(value)


class WrongDataType(InvalidRequest):
    """A plain put or get on a key of a typed bucket (use the bucket's data type handle), a
    data type operation on a bucket without ``datatype`` (or of another type), or a state
    of one type joined with another."""

    code = "wrong_datatype"


ERROR_CODES[WrongDataType.code] = WrongDataType
