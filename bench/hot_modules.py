"""A fixed amount of the pure per-request work of the modules a mypyc build would compile
(issue 15; docs/design.md, "mypyc"), for timing the whole process from outside: pure
against compiled.

    python bench/hot_modules.py [--rounds 20000]

Each round does what one quorum put and one quorum get cost in those modules: encode and
decode a request frame with a 1 KiB value, look up a preference list, read the request's
fields, update a version, tally an R=2 read of two replicas and merge their objects, resolve
it last-write-wins, encode the result. It prints which of those modules were imported
compiled, and nothing else: compare the CPU of interleaved runs of two installs (a pure and
a compiled venv, started from outside the source tree so that the installed packages are
imported).
"""

from __future__ import annotations

import argparse
import os

from dynq.kv import write_plan
from dynq.server import fields
from dynq_client import protocol, quorum, versions
from dynq_client import ring as ring_module
from dynq_client.buckets import EMPTY_BUCKETS
from dynq_client.quorum import ReadQuorum
from dynq_client.ring import Member, new_ring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    ring = new_ring([Member(f"n{i}", f"tcp://n{i}:7000") for i in range(3)], q=64, n=3)
    value = os.urandom(1024)
    limits = protocol.DEFAULT_LIMITS
    base = versions.update(None, {}, "n1.ab", b"x" * 1024, 1_700_000_000_000)
    other = versions.update(base, {}, "n2.cd", b"y" * 1024, 1_700_000_000_001)
    blob_a, blob_b = versions.encode_object(base), versions.encode_object(other)
    for i in range(args.rounds):
        key = b"key-%d" % (i % 10000)
        frame = protocol.encode_request(i, "put", {"k": key, "v": value, "w": 2})
        req = protocol.decode_request(frame, limits)
        skey, _ = fields.bucket_key(req.body, limits, EMPTY_BUCKETS)
        plist = ring.preference_list_for(skey)
        obj = versions.update(versions.decode_object(blob_a, limits), {}, "n1.ab", value, 1_700_000_000_002 + i)
        versions.encode_object(obj)
        tally = ReadQuorum(plist.primaries, 2)
        tally.reply(plist.primaries[0], versions.decode_object(blob_a, limits))
        tally.reply(plist.primaries[1], versions.decode_object(blob_b, limits))
        merged = versions.merge_all([versions.decode_object(blob_a, limits), versions.decode_object(blob_b, limits)])
        assert merged is not None
        protocol.encode_reply(i, 1, {"ob": versions.encode_object(versions.last_write_wins(merged))})
    hot = (versions, protocol, ring_module, quorum, write_plan, fields)
    compiled = [m.__name__ for m in hot if not (m.__file__ or "").endswith(".py")]
    print(f"compiled: {', '.join(compiled) or 'none'}")


if __name__ == "__main__":
    main()
