"""The node's counters, in one object: each part counts what it sees; the ``stats`` reply
and the metrics endpoint read them."""

from __future__ import annotations

import collections


class Stats:
    """Counters exposed by the ``stats`` op."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()  # per op
        self.errors: collections.Counter[str] = collections.Counter()  # per error code
        self.dropped_frames = 0  # undecodable messages without a readable id
        self.dropped_replies = 0  # replies the ROUTER could not queue (client gone / HWM)
        self.sibling_warnings = 0
        self.hinted_writes = 0  # puts this node coordinated that used a fallback
        self.hints_stored = 0  # hinted writes this node took as a fallback
        self.hints_refused = 0  # hinted writes refused because the hint store was full
        self.read_repairs = 0  # repairs this node sent as a read coordinator
        self.read_repairs_received = 0  # repairs clients sent to this node
        self.replica_batches = 0  # replica_put messages sent (batched per peer and loop pass)
        self.replica_batch_items = 0  # replica writes they carried
        self.stray_writes = 0  # replica writes for keys this node does not replicate (old ring)
        self.forbidden = 0  # requests refused for the sender's key (CURVE)
        self.overloaded = 0  # requests refused because their connection had too many in flight
        self.marked_down_by_gossip = 0  # peers the failure detector declared down
        self.state_pulls = 0  # newer cluster states fetched after a heartbeat
