"""Buckets from the command line: `dynq bucket create|show|list|set|keys`, and moving a
bucket's data in and out: `dynq export`, `dynq import`.

Bucket changes go to any member, which forwards them to the claimant; they take effect at
once (no plan/commit) and spread with the cluster state.

**Export format** (JSON lines, UTF-8): a header line, then one line per key::

    {"format": "dynq-export", "version": 1, "bucket": "carts"}
    {"key": "<base64>", "clock": [["n1.ab12cd34", 3], ...],
     "siblings": [["n1.ab12cd34", 3, 1764680000000, "<base64 value, or null for a tombstone>"], ...]}

Every sibling of every live key is kept with its dot and timestamp, so an import into
another cluster reads back with the same values and siblings (and merges with what is
there, as a replica write would).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import IO, Any

import click
from dynq_client import buckets as b
from dynq_client.client import AsyncClient
from dynq_client.errors import DynqError
from dynq_client.versions import Sibling, VersionedObject

from . import datatypes
from .common import CURVE_KEYS, connect, fail, seed_option, seeds_of, timeout_option

EXPORT_FORMAT = "dynq-export"
EXPORT_VERSION = 1


def _admin(seed: tuple[str, ...], timeout: float, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send a bucket op to a member (it forwards to the claimant)."""
    try:
        with connect(seed, timeout) as db:
            assert db.table is not None
            last: DynqError | None = None
            for member in db.table.ring.members:
                try:
                    return db.call(member.name, op, body, retry=False)
                except DynqError as exc:
                    if exc.code not in ("unavailable", "timeout"):
                        raise
                    last = exc
            assert last is not None
            raise last
    except DynqError as exc:
        fail(exc)
    raise AssertionError("unreachable")


@click.group("bucket")
def bucket() -> None:
    """Buckets: namespaces with their own n, quorums and conflict policy."""


def _show(props: dict[str, Any]) -> str:
    extra = "".join(f" {k}={props[k]}" for k in ("max_siblings", "ttl", "datatype") if props.get(k) is not None)
    return (f"{props['name']:<20} n={props['n']} r={props['r']} w={props['w']} pw={props['pw']} "
            f"conflict={props['conflict']}{extra}")


def _default_props(db: Any) -> dict[str, Any]:
    table = db.table
    return {"name": b.DEFAULT, "n": table.ring.n, "r": table.r, "w": table.w, "pw": 0, "conflict": "siblings",
            "max_siblings": None, "ttl": None, "datatype": None}


@bucket.command("create")
@click.argument("name")
@click.option("--n", type=int, default=None, help="Replicas per key (default: the ring's n). Fixed once created.")
@click.option("--r", type=int, default=None, help="Default read quorum (default: the cluster's, at most n).")
@click.option("--w", type=int, default=None, help="Default write quorum (default: the cluster's, at most n).")
@click.option("--pw", type=int, default=None, help="Default primaries that must acknowledge a write (0).")
@click.option("--conflict", type=click.Choice(b.CONFLICTS), default=None,
              help="siblings: keep concurrent writes; lww: newest timestamp wins (loses concurrent writes).")
@click.option("--max-siblings", type=int, default=None, help="Refuse writes past this many siblings.")
@click.option("--ttl", type=int, default=None, metavar="SECONDS",
              help="Puts that give no --ttl of their own expire after this many seconds (default: never).")
@click.option("--datatype", type=click.Choice(b.DATATYPES), default=None,
              help="Keys hold this convergent type, merged by the cluster (dynq counter|set|map|register|flag).")
@seed_option
@timeout_option
def create(name: str, n: int | None, r: int | None, w: int | None, pw: int | None, conflict: str | None,
           max_siblings: int | None, ttl: int | None, datatype: str | None, seed: tuple[str, ...],
           timeout: float) -> None:
    """Create bucket NAME (at once: every node and client learns it with the cluster state)."""
    props = {k: v for k, v in (("n", n), ("r", r), ("w", w), ("pw", pw), ("conflict", conflict),
                               ("max_siblings", max_siblings), ("ttl", ttl), ("datatype", datatype))
             if v is not None}
    body = _admin(seed, timeout, "bucket_create", {"name": name, "props": props})
    click.echo(("created " if body.get("changed") else "exists: ") + _show(body["bucket"]))


@bucket.command("set")
@click.argument("name")
@click.option("--n", type=int, default=None, help="Refused: n is fixed at creation.")
@click.option("--r", type=int, default=None)
@click.option("--w", type=int, default=None)
@click.option("--pw", type=int, default=None)
@click.option("--conflict", type=click.Choice(b.CONFLICTS), default=None)
@click.option("--max-siblings", type=int, default=None)
@click.option("--ttl", type=int, default=None, metavar="SECONDS",
              help="Default time to live of puts (0: remove it; values written before keep theirs).")
@seed_option
@timeout_option
def set_(name: str, n: int | None, r: int | None, w: int | None, pw: int | None, conflict: str | None,
         max_siblings: int | None, ttl: int | None, seed: tuple[str, ...], timeout: float) -> None:
    """Change properties of bucket NAME (never n: its replicas would be stranded)."""
    if n is not None:
        click.echo(f"error: n cannot change after a bucket is created; create a new bucket and copy the keys "
                   f"(dynq export {name} --out FILE; dynq import FILE --bucket NEW)", err=True)
        sys.exit(2)
    changes = {k: v for k, v in (("r", r), ("w", w), ("pw", pw), ("conflict", conflict),
                                 ("max_siblings", max_siblings), ("ttl", ttl)) if v is not None}
    if not changes:
        raise click.UsageError("nothing to change: give at least one of --r --w --pw --conflict --max-siblings --ttl")
    body = _admin(seed, timeout, "bucket_set", {"name": name, "props": changes})
    click.echo(("changed " if body.get("changed") else "unchanged ") + _show(body["bucket"]))


@bucket.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def show(name: str, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Properties of bucket NAME."""
    try:
        with connect(seed, timeout) as db:
            props = db.bucket(name).props()
            described = _default_props(db) if props is None else props.describe()
    except DynqError as exc:
        fail(exc)
    click.echo(json.dumps(described, sort_keys=True) if as_json else _show(described))


@bucket.command("list")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def list_(as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Every bucket, the default one first."""
    try:
        with connect(seed, timeout) as db:
            db.refresh()
            assert db.table is not None
            rows = [_default_props(db)] + [p.describe() for p in db.table.buckets.values()]
    except DynqError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    for row in rows:
        click.echo(_show(row))


@bucket.command("keys")
@click.argument("name")
@click.option("--prefix", default=None, help="Only keys starting with this (UTF-8).")
@click.option("--page-size", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@seed_option
@timeout_option
def keys(name: str, prefix: str | None, page_size: int, seed: tuple[str, ...], timeout: float) -> None:
    """Print the live keys of bucket NAME, one per line (streamed page by page)."""
    from .common import show_value

    try:
        with connect(seed, timeout) as db:
            for key in db.bucket(name).keys(prefix=prefix.encode() if prefix else None, page_size=page_size):
                click.echo(show_value(key))
    except DynqError as exc:
        fail(exc)


# --- export / import -----------------------------------------------------------------------


def object_line(key: bytes, obj: VersionedObject) -> str:
    return json.dumps({
        "key": base64.b64encode(key).decode(),
        "clock": [[actor, obj.clock[actor]] for actor in sorted(obj.clock)],
        "siblings": [[s.actor, s.counter, s.timestamp_ms,
                      None if s.value is None else base64.b64encode(s.value).decode()]
                     + ([s.expires_ms] if s.expires_ms else []) for s in obj.siblings],
    }, separators=(",", ":"))


def parse_line(line: str, number: int) -> tuple[bytes, VersionedObject]:
    try:
        data = json.loads(line)
        key = base64.b64decode(data["key"], validate=True)
        clock = {str(a): int(c) for a, c in data["clock"]}
        siblings = tuple(Sibling(str(a), int(c), int(ts), None if v is None else base64.b64decode(v, validate=True),
                                 int(rest[0]) if rest else 0)  # the expiry, if it has one
                         for a, c, ts, v, *rest in data["siblings"])
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"line {number}: not an export line: {exc}") from exc
    return key, VersionedObject(clock, tuple(sorted(siblings, key=lambda s: (s.actor, s.counter))))


def _client(seed: tuple[str, ...], timeout: float) -> AsyncClient:
    return AsyncClient(seeds_of(seed), timeout=timeout, curve=CURVE_KEYS[0] if CURVE_KEYS else None, keys=None)


async def _export(name: str, out: IO[str], seed: tuple[str, ...], timeout: float, concurrency: int) -> int:
    count = 0
    async with _client(seed, timeout) as db:
        handle = db.bucket(name)
        props = await handle.props()
        header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "bucket": name}
        if props is not None and props.datatype not in (None, "none"):  # states, not objects
            return await datatypes.export_typed(db, props, out, concurrency, header)
        out.write(json.dumps(header) + "\n")
        limit = asyncio.Semaphore(concurrency)
        with click.progressbar(length=0, label=f"exporting {name}", file=sys.stderr,
                               show_pos=True, show_percent=False) as bar:
            async for page in handle.key_pages(page_size=500):
                async def fetch(key: bytes) -> VersionedObject | None:
                    async with limit:
                        return await handle.get_object(key)

                objects = await asyncio.gather(*(fetch(k) for k in page.keys))
                for key, obj in zip(page.keys, objects):
                    # deleted (or every value expired) since it was listed: nothing to export;
                    # what is exported keeps its expiry, so an import never extends a value's life
                    if obj is not None and obj.live(int(time.time() * 1000)).found:
                        out.write(object_line(key, obj) + "\n")
                        count += 1
                bar.length = (bar.length or 0) + len(page.keys)
                bar.update(len(page.keys))
    return count


@click.command("export")
@click.argument("name")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write (- for stdout).")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=32, show_default=True)
@seed_option
@timeout_option
def export(name: str, out_path: str, concurrency: int, seed: tuple[str, ...], timeout: float) -> None:
    """Write every live key of bucket NAME, with all its siblings, to a file (JSON lines)."""
    try:
        with click.open_file(out_path, "w", encoding="utf-8") as out:
            count = asyncio.run(_export(name, out, seed, timeout, concurrency))
    except DynqError as exc:
        fail(exc)
    click.echo(f"exported {count} keys of {name} to {out_path}", err=True)


async def _import(path: str, bucket_name: str | None, seed: tuple[str, ...], timeout: float,
                  concurrency: int) -> tuple[int, int, str]:
    with open(path, encoding="utf-8") as f:
        total = sum(1 for _ in f) - 1
    done = failed = 0
    async with _client(seed, timeout) as db:
        with open(path, encoding="utf-8") as f:
            try:
                header = json.loads(f.readline())
                if header.get("format") != EXPORT_FORMAT or header.get("version") != EXPORT_VERSION:
                    raise ValueError("not a dynq export (version 1)")
            except (ValueError, AttributeError) as exc:
                raise click.ClickException(f"{path}: line 1: {exc}") from exc
            target = bucket_name or str(header.get("bucket", b.DEFAULT))
            if header.get("datatype") not in (None, "none"):  # a typed bucket's states: joined
                done, failed = await datatypes.import_typed(db, f, target, str(header["datatype"]), concurrency)
                return done, failed, target
            handle = db.bucket(target)
            await handle.props()
            limit = asyncio.Semaphore(concurrency)
            errors: list[str] = []

            async def store(key: bytes, obj: VersionedObject) -> None:
                nonlocal done, failed
                async with limit:
                    try:
                        missed = await handle.store_object(key, obj)
                    except DynqError as exc:
                        missed = [str(exc)]
                if missed:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{key!r}: not stored on {', '.join(missed)}")
                else:
                    done += 1

            with click.progressbar(length=max(total, 0), label=f"importing into {target}", file=sys.stderr) as bar:
                batch: list[tuple[bytes, VersionedObject]] = []
                for number, line in enumerate(f, start=2):
                    if line.strip():
                        batch.append(parse_line(line, number))
                    if len(batch) >= 256:
                        await asyncio.gather(*(store(k, o) for k, o in batch))
                        bar.update(len(batch))
                        batch = []
                await asyncio.gather(*(store(k, o) for k, o in batch))
                bar.update(len(batch))
            if errors:
                click.echo("\n".join(errors), err=True)
    return done, failed, target


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--bucket", "bucket_name", default=None, help="Import into this bucket (default: the exported one's).")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=32, show_default=True)
@seed_option
@timeout_option
def import_(path: str, bucket_name: str | None, concurrency: int, seed: tuple[str, ...], timeout: float) -> None:
    """Load a file written by `dynq export` (every sibling kept; merged with what is there).
    Each key goes to all of its primaries; exit 1 if some key missed one."""
    try:
        done, failed, target = asyncio.run(_import(path, bucket_name, seed, timeout, concurrency))
    except DynqError as exc:
        fail(exc)
    click.echo(f"imported {done} keys into {target}" + (f", {failed} FAILED (run again)" if failed else ""), err=True)
    sys.exit(1 if failed else 0)
