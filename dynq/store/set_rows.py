"""A large set stored as a small header plus one row per element (pure encoding).

An add to a set of 100,000 elements must not rewrite the whole set, so a node keeps a
set key as::

    objects:      key -> ["dh", "set", context, count, digest + size]     # the header
    dt_elements:  (key, element) -> dots of the adds that put it there

The digest is the XOR of :func:`dynq_client.crdt.element_hash` over the rows: updated in
O(1) per changed element, and part of the header, so the anti-entropy leaf (a hash of
the ``objects`` row) changes whenever any element does, and two replicas holding the same
set hold byte-identical headers. Replicas still exchange whole states (anti-entropy,
hints, transfers, read repair): :func:`assemble` builds one from the header and rows.

The digest's 16 bytes are followed by 8 bytes of *size*: the sum of :func:`row_size`
over the rows, kept in O(1) like the digest, so a coordinator can refuse an add that
would make the whole state too large to exchange without reading the rows. (A header
written before the size existed has the 16 bytes only: its size is unknown until the
next join, which counts the rows once.)
"""

from __future__ import annotations

from typing import Mapping

from dynq_client import crdt
from dynq_client.errors import ProtocolError
from dynq_client.protocol import DEFAULT_LIMITS, Limits, packb, unpackb

HEADER_TAG = "dh"


def row_size(elem: bytes, row: bytes) -> int:
    """What one element adds to the set's whole state: its bytes, its dots row's, and at
    most 5 of framing (the pair's array header and the element's bin header)."""
    return len(elem) + len(row) + 5


def encode_header(ctx: crdt.Context, count: int, digest: int, expires_ms: int = 0, size: int = 0) -> bytes:
    return packb([HEADER_TAG, crdt.SET, crdt.context_to_wire(ctx, expires_ms), count,
                  digest.to_bytes(16, "big") + size.to_bytes(8, "big")])


def decode_header_full(blob: bytes, limits: Limits = DEFAULT_LIMITS
                       ) -> tuple[crdt.Context, int, int, int, int | None]:
    """(context, element count, digest, expires_ms, size) of a stored header (size None:
    a header from before the size was kept); raises ProtocolError."""
    try:
        data = unpackb(blob, limits)
        if not isinstance(data, list) or len(data) != 5 or data[0] != HEADER_TAG or type(data[3]) is not int \
                or not isinstance(data[4], bytes) or len(data[4]) not in (16, 24):
            raise ValueError("not a set header")
        ctx, expires = crdt.header_from_wire(data[2], limits)
        size = int.from_bytes(data[4][16:], "big") if len(data[4]) == 24 else None
        return ctx, data[3], int.from_bytes(data[4][:16], "big"), expires, size
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"invalid set header: {exc}") from exc


def decode_header(blob: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[crdt.Context, int, int]:
    """(context, element count, digest) of a stored header; raises ProtocolError."""
    ctx, count, digest, _, _ = decode_header_full(blob, limits)
    return ctx, count, digest


def assemble(header: bytes, rows: Mapping[bytes, bytes], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The whole state of a stored set, as replicas exchange it."""
    ctx, _, _, expires, _ = decode_header_full(header, limits)
    store = {elem: crdt.element_from_row(row) for elem, row in rows.items()}
    return crdt.encode_state(crdt.State(crdt.SET, ctx, store, None, expires))


def header_of(state: crdt.State) -> bytes:
    """The header a node stores for a whole set state (O(elements): whole states only)."""
    digest = size = 0
    for elem, dots in state.store.items():
        row = crdt.element_row(dots)
        digest ^= crdt.element_hash(elem, row)
        size += row_size(elem, row)
    return encode_header(state.ctx, len(state.store), digest, state.expires_ms, size)


def stored_form(blob: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """What ``objects`` holds for a typed state blob: a set's header, another type's blob."""
    if not crdt.is_state_blob(blob):
        return blob
    state = crdt.decode_state(blob, limits)
    return header_of(state) if state.kind == crdt.SET else blob
