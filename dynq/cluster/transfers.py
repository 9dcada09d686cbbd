"""Ownership handoff: a node streams the key partitions it is giving up to their new replicas.

For each transfer the cluster state assigns to this node as source (see
:func:`dynq.cluster.membership.plan_transfers`):

1. start tracking the partition: every key committed here from now on is noted;
2. stream the partition's rows in key order, in chunks bounded by items and bytes, as
   ordinary ``replica_put_batch`` requests (the target merges them through the normal
   version logic); one chunk in flight at a time, the next only after the ack
   (backpressure), and at most ``transfer_rate`` objects/s; a failed chunk is retried
   from the same place, so killing the target mid-transfer costs a retry, not a restart;
3. send the keys noted since (delta passes) until a pass finds nothing new, and report the
   transfer done to the claimant;
4. once the cluster has switched to the new ring and a grace period passed (so that nodes
   and clients still routing by the old ring have caught up), send what was noted since
   the report, and drop the partition's rows if this node no longer replicates it. A node
   that left the cluster keeps its copy on disk; it just stops serving.
5. the grace of step 4 lives in memory: a source killed between its report and the drop
   comes back owning rows of partitions it no longer replicates, and no transfer is left
   to drop them (found by ``dynq sim``: the copies stayed forever, and would have brought
   back reaped deletes had the node become a replica again). So once per life, when the
   cluster has been idle (no transition) for the grace, the node hands every such row on
   as a hint to the key's first primary: hinted handoff delivers it (the final delta the
   crash lost) and then drops the copy. It looks again after every transition, and after
   the grace again when a sweep was cut short (the hint store full, a hint not
   committed); a drop that fails (a full disk) is retried at the next pass of step 4.

Writes made during the transition also go straight to the incoming replicas (see
``ClusterState.pending_replicas``), so the delta passes are small; they cover writes
coordinated by nodes that had not yet heard of the transition.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError, StorageError
from dynq_client.protocol import Request

from ..config import NodeConfig
from ..env import SYSTEM, Env
from ..server.ports import Claimant, ClusterView, Handler, LocalWriter, PartitionStore, Peers
from ..server.responder import Responder

from .membership import Transfer

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
MAX_DELTA_PASSES = 20


@dataclass
class Progress:
    """What one running (or finished) transfer has done, for `dynq cluster transfers`."""

    transfer: Transfer
    total: int  # rows in the partition when the transfer started
    sent: int = 0  # objects acknowledged by the target (full pass and deltas)
    bytes: int = 0
    started: float = 0.0  # wall clock, seconds
    finished: float | None = None
    retries: int = 0
    state: str = "streaming"  # connecting | streaming | delta | reported | done
    last_error: str | None = None  # why the last attempt failed (kept after a success: it says what happened)
    last_error_at: float | None = None  # wall clock of it

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": self.transfer.to_wire(), "total": self.total, "sent": self.sent, "bytes": self.bytes,
            "started": self.started, "finished": self.finished, "retries": self.retries, "state": self.state,
            "last_error": self.last_error, "last_error_at": self.last_error_at,
        }

    def failed(self, error: Exception, now: float) -> None:
        self.retries += 1
        self.last_error, self.last_error_at = str(error), now


class TransferFailed(Exception):
    """A chunk could not be delivered; the transfer is retried later from where it stopped."""


class PartitionTransfers:
    """Runs this node's outgoing transfers, one at a time."""

    def __init__(self, store: PartitionStore, peers: Peers, cluster: ClusterView, claimant: Claimant,
                 local: LocalWriter, config: NodeConfig, *, env: Env = SYSTEM) -> None:
        self.env = env  # clocks
        self.store = store
        self.peers = peers
        self.cluster = cluster
        self.claimant = claimant  # takes the reports of finished transfers
        self.local = local  # tells of every commit of a tracked partition
        self.config = config
        self.name = config.name
        self._unwatch: dict[int, Callable[[], None]] = {}  # tracked partition -> stop hearing of its commits
        self._tracked: dict[Transfer, set[bytes]] = {}  # keys committed since tracking began
        self._by_partition: dict[int, list[Transfer]] = {}
        self.progress: dict[Transfer, Progress] = {}
        self._cursor: dict[Transfer, bytes] = {}  # last key the target acknowledged
        self._reported: dict[Transfer, float | None] = {}  # -> when the switch was first seen
        self._idle_since: float | None = None  # when this life first saw the cluster without a transition
        self._swept = False  # handed on the rows it no longer replicates since the last transition (step 5)
        self.orphans_handed_on = 0  # such rows made hints, over this life
        self.keys_sent = 0
        self.bytes_sent = 0
        self.completed = 0
        self.failures = 0
        self.wake = asyncio.Event()

    def handlers(self) -> dict[str, Handler]:
        return {p.OP_TRANSFERS: self.handle_transfers}

    def handle_transfers(self, responder: Responder, req: Request) -> None:
        """This node's outgoing transfers, and the cluster's pending ones as it knows them."""
        state = self.cluster.state
        responder.ok({
            "name": self.name,
            "version": state.version,
            "planned": state.planned,
            "pending": [t.to_wire() for t in state.transfers],
            "progress": [pr.to_wire() for pr in self.progress.values()],
        })

    # --- every commit of a tracked partition ----------------------------------------------------

    def tracking(self, partition: int) -> bool:
        return partition in self._by_partition

    def carries(self, transfer: Transfer, key: bytes) -> bool:
        """Whether ``transfer`` moves ``key``: a transfer is for the keys of one n (its
        bucket's); a key of a bucket not heard of yet goes along (a spare copy is harmless,
        a missing one is not)."""
        state = self.cluster.state
        if not state.buckets:
            return True
        n = state.buckets.n_of(key, state.ring.n)
        return n is None or n == (transfer.n or state.ring.n)

    def note_commit(self, partition: int, key: bytes) -> None:
        for transfer in self._by_partition.get(partition, ()):
            if self.carries(transfer, key):
                self._tracked[transfer].add(key)

    def _track(self, transfer: Transfer) -> None:
        if transfer not in self._tracked:
            self._tracked[transfer] = set()
            if transfer.partition not in self._by_partition:
                self._unwatch[transfer.partition] = self.local.watch(transfer.partition, self.note_commit)
            self._by_partition.setdefault(transfer.partition, []).append(transfer)

    def _untrack(self, transfer: Transfer) -> None:
        self._tracked.pop(transfer, None)
        listed = self._by_partition.get(transfer.partition, [])
        if transfer in listed:
            listed.remove(transfer)
        if not listed:
            self._by_partition.pop(transfer.partition, None)
            unwatch = self._unwatch.pop(transfer.partition, None)
            if unwatch is not None:
                unwatch()
        self._cursor.pop(transfer, None)

    @property
    def active(self) -> list[Progress]:
        return [pr for pr in self.progress.values() if pr.state != "done"]

    @property
    def busy(self) -> bool:
        """Whether anything is left to do here (a leaving node waits for this to exit)."""
        mine = [t for t in self.cluster.state.transfers if t.source == self.name]
        return bool(mine) or bool(self._reported)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                await self._step()
                delay = RETRY_MIN_S
            except TransferFailed as exc:
                self.failures += 1
                log.warning("transfer interrupted, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            # anything else is a bug: the node's service group logs it and restarts this loop

    async def _step(self) -> None:
        state = self.cluster.state
        for transfer in state.transfers:
            if transfer.source == self.name and transfer not in self._reported:
                await self._transfer(transfer)
                return  # one at a time; the state may have changed meanwhile
        await self._finish_reported()
        await self._sweep_when_idle()

    async def _transfer(self, transfer: Transfer) -> None:
        storage = self.store
        progress = self.progress.get(transfer)
        if progress is None or transfer not in self._tracked:
            # The target must know it is becoming a replica, or it would treat what we send
            # as stray writes (the commit's push may not have reached it yet).
            try:
                await self._request(transfer, p.OP_CLUSTER_STATE, {"state": self.cluster.state.to_wire()})
            except TransferFailed as exc:  # recorded: a transfer that cannot even start must say why
                if progress is None:
                    progress = self.progress[transfer] = Progress(transfer, 0, state="connecting")
                progress.failed(exc, self.env.wall())
                raise
            self._track(transfer)  # before the scan: nothing committed from now on is missed
            earlier = progress
            progress = self.progress[transfer] = Progress(transfer, storage.partition_count(transfer.partition),
                                                          started=self.env.wall())
            if earlier is not None:  # keep what the failed attempts said
                progress.retries, progress.last_error = earlier.retries, earlier.last_error
                progress.last_error_at = earlier.last_error_at
            log.info("transfer %s: starting, %d objects", transfer.describe(), progress.total)
        if progress.state == "streaming":
            cursor = self._cursor.get(transfer, b"")
            while True:
                rows = storage.partition_chunk(transfer.partition, cursor, self.config.transfer_batch,
                                               self.config.limits.max_message_bytes // 2)
                if not rows:
                    break
                mine = [row for row in rows if self.carries(transfer, row[0])]  # this transfer's n
                if mine:
                    await self._send(transfer, mine, progress)
                cursor = self._cursor[transfer] = rows[-1][0]
            progress.state = "delta"
        for _ in range(MAX_DELTA_PASSES):
            if not await self._delta(transfer, progress):
                break
        await self._report(transfer)
        progress.state = "reported"
        self._reported[transfer] = None

    async def _delta(self, transfer: Transfer, progress: Progress) -> int:
        """Send the keys committed since tracking began (or since the last pass)."""
        keys = self._tracked.get(transfer)
        if not keys:
            return 0
        self._tracked[transfer] = set()
        storage = self.store
        rows = [(key, blob) for key in sorted(keys) if (blob := storage.get_blob(key)) is not None]
        chunk: list[tuple[bytes, bytes]] = []
        size = 0
        limit = self.config.limits.max_message_bytes // 2
        try:
            for row in rows:
                if chunk and (len(chunk) >= self.config.transfer_batch or size + len(row[1]) > limit):
                    await self._send(transfer, chunk, progress)
                    chunk, size = [], 0
                chunk.append(row)
                size += len(row[0]) + len(row[1])
            if chunk:
                await self._send(transfer, chunk, progress)
        except TransferFailed:
            self._tracked.setdefault(transfer, set()).update(keys)  # try these again
            raise
        return len(rows)

    async def _request(self, transfer: Transfer, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request to the transfer's target; TransferFailed unless it succeeded."""
        try:
            return await self.peers.call(transfer.target, op, body)
        except DynqError as exc:
            raise TransferFailed(f"{transfer.describe()}: {exc.code}: {exc.message}") from exc

    async def _send(self, transfer: Transfer, rows: list[tuple[bytes, bytes]], progress: Progress) -> None:
        if transfer not in self.cluster.state.transfers and transfer not in self._reported:
            raise TransferFailed(f"{transfer.describe()} is no longer planned")
        items = [{"k": key, "ob": blob} for key, blob in rows]
        try:
            body = await self._request(transfer, p.OP_REPLICA_PUT_BATCH, {"items": items})
        except TransferFailed as exc:
            progress.failed(exc, self.env.wall())
            raise
        results = body.get("r")
        if not isinstance(results, list) or len(results) != len(rows) or any(r is not None for r in results):
            error = TransferFailed(f"{transfer.describe()}: {transfer.target} did not take every object of the "
                                   f"chunk: {p.short_repr(results)}")
            progress.failed(error, self.env.wall())
            raise error
        n_bytes = sum(len(key) + len(blob) for key, blob in rows)
        progress.sent += len(rows)
        progress.bytes += n_bytes
        self.keys_sent += len(rows)
        self.bytes_sent += n_bytes
        rate = self.config.transfer_rate
        if rate:
            await asyncio.sleep(len(rows) / rate)

    async def _report(self, transfer: Transfer) -> None:
        try:
            await self.claimant.transfer_done(transfer)
        except DynqError as exc:
            error = TransferFailed(f"{transfer.describe()}: the claimant did not take the report: {exc}")
            self.progress[transfer].failed(error, self.env.wall())
            raise error from exc
        first = self.progress[transfer].state != "reported"
        log.log(logging.INFO if first else logging.DEBUG, "transfer %s: reported done (%d objects, %d bytes)",
                transfer.describe(), self.progress[transfer].sent, self.progress[transfer].bytes)

    async def _finish_reported(self) -> None:
        """After the switch and a grace period: last delta, then drop what is not ours."""
        state = self.cluster.state
        now = self.env.monotonic()
        for transfer, seen in list(self._reported.items()):
            if transfer in state.transfers:
                continue  # the claimant has not recorded it yet: report again
            if state.next_ring is not None and seen is None:
                continue  # other transfers of this transition still run: reads still come here
            if seen is None:
                self._reported[transfer] = now
                continue
            if now - seen < self.config.transfer_cleanup_delay_ms / 1000:
                continue
            progress = self.progress[transfer]
            while await self._delta(transfer, progress):
                pass
            self._untrack(transfer)
            if self.cluster.is_member and not self.cluster.state.is_replica(
                    self.name, transfer.partition, transfer.n or None) and (
                    # with buckets a drop takes only this transfer's n: other transfers of the
                    # partition (other n) carry disjoint keys
                    self.cluster.state.buckets or not self.tracking(transfer.partition)):
                # Forgotten only once dropped: a drop that fails (a full disk: found by dynq
                # sim --seed 133) is tried again on the next pass, not never.
                dropped = await self._drop_partition(transfer)
                log.info("partition %d handed off to %s; dropped %d local objects",
                         transfer.partition, transfer.target, dropped)
            del self._reported[transfer]
            progress.state = "done"
            progress.finished = self.env.wall()
            self.completed += 1
        # a transfer reported but forgotten by a newer state (re-planned): report again
        for transfer in [t for t in self._reported if t in state.transfers and t.source == self.name]:
            await self._report(transfer)

    async def _sweep_when_idle(self) -> None:
        """Step 5 of the module docstring: after the grace without a transition, once per
        life and again after every transition (whatever cut its handoff short)."""
        state = self.cluster.state
        if state.next_ring is not None or state.transfers or self._reported or not self.cluster.is_member:
            self._idle_since = None
            self._swept = False  # look again once this transition is over
            return
        if self._swept:
            return
        now = self.env.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.config.transfer_cleanup_delay_ms / 1000:
            return
        self._swept = True  # until a hint of the sweep is refused (_sweep_cut_short)
        handed = await self._hand_on_orphans()
        if handed:
            log.warning("%d objects of partitions this node no longer replicates (a handoff cut short by a "
                        "restart) handed on as hints to their replicas", handed)

    async def _hand_on_orphans(self) -> int:
        """Make a hint of every row whose key this node does not replicate (for its
        bucket's n) and that no hint holds yet; returns how many."""
        handed = 0
        limit = self.config.limits.max_message_bytes // 2
        for partition in range(self.cluster.state.ring.q):
            state = self.cluster.state
            if state.next_ring is not None or state.transfers:
                return handed  # a transition began meanwhile: its transfers move these rows
            foreign = {n for n in state.n_values() if not state.is_replica(self.name, partition, n)}
            if not foreign:
                continue
            after = b""
            while rows := self.store.partition_chunk(partition, after, self.config.transfer_batch, limit):
                for key, _blob in rows:
                    n = state.buckets.n_of(key, state.ring.n)
                    if n not in foreign or self.store.hints_for_key(key):
                        continue  # ours, a bucket not heard of yet (None), or already a hint
                    target = state.ring.preference_list(partition, n).primaries[0]
                    outcome = self.local.hand_on(key, target, self._orphan_committed)
                    if outcome == "full":  # the hints drain first: sweep again after the grace
                        self._sweep_cut_short()
                        return handed
                    if outcome == "none":
                        continue
                    handed += 1
                    self.orphans_handed_on += 1
                after = rows[-1][0]
                await asyncio.sleep(0)  # let requests through between chunks
        return handed

    def _orphan_committed(self, error: StorageError | None) -> None:
        if error is not None:  # refused (hint store full) or not committed (disk full)
            self._sweep_cut_short()

    def _sweep_cut_short(self) -> None:
        """Some rows are still here and not hints: sweep again once the grace has passed
        again (a sweep counted once per life left them until the next restart)."""
        self._swept = False
        self._idle_since = None

    def _gone(self, transfer: Transfer, key: bytes) -> bool:
        """A key of the handed-off partition this node no longer replicates (for its n)."""
        state = self.cluster.state
        n = state.buckets.n_of(key, state.ring.n)
        return n is not None and n == (transfer.n or state.ring.n) and not state.is_replica(
            self.name, transfer.partition, n)

    async def _drop_partition(self, transfer: Transfer) -> int:
        partition = transfer.partition
        total = 0
        state = self.cluster.state
        if state.buckets:  # only the keys of this transfer's n moved away
            after: bytes | None = b""
            while after is not None:
                dropped, after = self.store.drop_rows_where(
                    partition, after, 1000, lambda key: self._gone(transfer, key))
                total += dropped
                await asyncio.sleep(0)
            return total
        while True:
            dropped = self.store.drop_partition_rows(partition, limit=1000)
            total += dropped
            if dropped < 1000:
                return total
            await asyncio.sleep(0)  # let requests through between slices
