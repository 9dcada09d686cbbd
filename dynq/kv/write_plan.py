"""What a put will do, decided before any I/O: riak_kv's prepare and validate, and the
vnode's minting of the new version (pure: values in, a :class:`WritePlan` or an error out).

* **Targets** (sloppy quorum): the first N healthy nodes of the key's preference list,
  a fallback carrying a hint for the primary it stands in for. The coordinator is
  always one of them: its dot must be durable here before anyone sees it, so if every
  primary is unreachable it joins as a fallback itself.
* **The actor** that mints the dot: never one that could mint a dot twice (see
  :func:`actor_for`).
* **Limits**: clock entries, siblings, object size, and at least W targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from dynq_client.errors import InvalidContext, NotEnoughReplicas, TooManySiblings, ValueTooLarge
from dynq_client.health import sloppy_targets
from dynq_client.protocol import Limits
from dynq_client.versions import VersionedObject, encode_object, update

Target = tuple[str, "str | None"]
"""(node, hinted_for): a primary (None) or a fallback standing in for that primary."""


@dataclass(slots=True)
class WritePlan:
    obj: VersionedObject  # the new object, carrying its new dot
    blob: bytes  # its encoding, sent as is to every replica
    targets: list[Target]  # where it goes, counted toward W; this node among them
    spares: list[str]  # healthy fallbacks not used, in preference-list order (for hedging)
    incoming: list[str]  # replicas a running transition adds: best effort, not counted


def choose_targets(name: str, primaries: tuple[str, ...], fallbacks: tuple[str, ...], n: int,
                   is_up: Callable[[str], bool]) -> list[Target]:
    """The sloppy-quorum targets, with this node (the coordinator) among them."""
    targets = sloppy_targets(primaries, fallbacks, n, is_up)
    if name not in {node for node, _ in targets}:
        targets = coordinate_as_fallback(name, targets, primaries)
    return targets


def coordinate_as_fallback(name: str, targets: list[Target], primaries: Sequence[str]) -> list[Target]:
    """Every primary is unreachable and this node coordinates: it must write first (its
    dot must be durable here before anyone sees it), so it joins the targets as a
    fallback standing in for a primary no other fallback covers."""
    covered = {node for node, _ in targets} | {hint for _, hint in targets if hint}
    free = [primary for primary in primaries if primary not in covered]
    if not free:  # N fallbacks already: take the place (and hint) of the last one
        free = [targets[-1][1] or primaries[-1]]
        targets = targets[:-1]
    return [(name, free[0])] + targets


def actor_for(actor: str, local: VersionedObject | None, forgotten: bool, next_dot: Callable[[], int]) -> str:
    """The actor that mints this node's next dot of a key.

    A dot must never be minted twice, and a new clock entry must not claim dots this
    node minted but can no longer see: merge would silently keep one of two writes (or
    a stale context would supersede a newer write: Riak's KV679). Both can happen once
    this node dropped its copy of the key (handed off, reaped) while others kept it.
    So: after such a drop, a fresh actor ``ACTOR~N`` (N never handed out before, from
    ``next_dot``); otherwise the newest of this node's actors in the local clock (all of
    its dots are in the local copy), or the node's own actor for a key it never held.
    """
    if forgotten:
        return f"{actor}~{next_dot()}"
    if local is None:
        return actor
    prefix = actor + "~"
    fresh = [a for a in local.clock if a.startswith(prefix) and a[len(prefix):].isdigit()]
    if fresh:
        return max(fresh, key=lambda a: int(a[len(prefix):]))
    return actor


def plan_write(
    *,
    targets: list[Target],
    fallbacks: Sequence[str],
    pending: Sequence[str],
    is_up: Callable[[str], bool],
    down: Callable[[], list[str]],
    local: VersionedObject | None,
    context: dict[str, int],
    actor: str,
    value: bytes | None,
    now_ms: int,
    w: int,
    expires_ms: int = 0,
    limits: Limits,
    many_siblings: Callable[[int], None],
) -> WritePlan:
    """The new object and where it goes, or the error that stops the put (in this order:
    clock entries, siblings, object size, too few targets). ``many_siblings`` hears of a
    key with more siblings than the warning threshold."""
    new = update(local, context, actor, value, now_ms, expires_ms)
    if len(new.clock) > limits.max_clock_entries:
        raise InvalidContext(
            f"the write's version vector would have {len(new.clock)} entries (limit "
            f"{limits.max_clock_entries}): the context names actors this key never had"
        )
    if len(new.siblings) > limits.max_siblings:
        raise TooManySiblings(
            f"key would have {len(new.siblings)} siblings (limit {limits.max_siblings}); "
            "read it, resolve the siblings and write back with the context"
        )
    if len(new.siblings) > limits.sibling_warn:
        many_siblings(len(new.siblings))
    blob = encode_object(new)
    max_object = limits.max_message_bytes - limits.max_key_bytes - 1024
    if len(blob) > max_object:
        raise ValueTooLarge(
            f"the object with all its siblings would be {len(blob)} bytes; the limit is {max_object}"
        )
    if len(targets) < w:
        raise NotEnoughReplicas(
            f"put failed: w={w} but only {len(targets)} replicas are reachable",
            required=w, succeeded=0, errors={name: "down" for name in down()},
        )
    used = {name for name, _ in targets}
    spares = [f for f in fallbacks if f not in used and is_up(f)]
    incoming = [x for x in pending if x not in used]
    return WritePlan(new, blob, targets, spares, incoming)
