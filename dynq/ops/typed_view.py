"""A typed key's state as people read it (`dynq inspect`, the admin API's inspect).

One function shared by the CLI and the console, so both show the same thing for a typed
key: its type, causal context, value, dot count and (in a ttl bucket) expiry, instead of
failing to decode it as a plain versioned object.
"""

from __future__ import annotations

from typing import Any

from dynq_client import crdt
from dynq_client.protocol import show_bytes


def describe_state(blob: object) -> dict[str, Any] | None:
    """A typed state as `dynq inspect` shows it (None: not a typed state): type, context, value."""
    if not isinstance(blob, bytes) or not crdt.is_state_blob(blob):
        return None
    state = crdt.decode_state(blob)
    value = crdt.value_of(state.kind, state.store)

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return show_bytes(v)[:80]
        if isinstance(v, set):
            return sorted(show_bytes(x)[:80] for x in list(v)[:100])
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = {"datatype": state.kind, "context": {"vv": dict(state.ctx.vv), "cloud": sorted(map(list, state.ctx.cloud))},
           "value": plain(value), "dots": sum(1 for _ in crdt.dots_of(state.kind, state.store))}
    if state.expires_ms:
        out["expires_ms"] = state.expires_ms
    return out
