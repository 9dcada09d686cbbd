"""The data types from the shell: `dynq counter|set|map|register|flag` (thin over dynq_client.typed).

    dynq counter incr BUCKET KEY [N]      dynq counter get BUCKET KEY         -> 6
    dynq set add|remove BUCKET KEY E...   dynq set get BUCKET KEY             -> one element a line
    dynq map incr|add|remove|assign|enable|disable|delete BUCKET KEY FIELD [ARG...]
    dynq map get BUCKET KEY               -> FIELD<TAB>value, nested fields as a.b
    dynq register assign|get, dynq flag enable|disable|get
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import IO, Any, Callable, Iterable

import click

from dynq_client import crdt, typed
from dynq_client.buckets import BucketProps, storage_key
from dynq_client.client import AsyncClient
from dynq_client.errors import DynqError, WrongDataType
from dynq_client.protocol import OP_READ_REPAIR

from ..ops.console_views import typed_state_view
from .common import connect, fail, seed_option, show_value, timeout_option


def _run(seed: tuple[str, ...], timeout: float, action: Callable[[Any], Any]) -> Any:
    try:
        with connect(seed, timeout) as db:
            return action(db)
    except DynqError as exc:
        fail(exc)


def _lines(value: Any, prefix: str = "") -> list[str]:
    """A map's value as FIELD<TAB>value lines (sets one element per line, sorted)."""
    out: list[str] = []
    for name in sorted(value):
        v = value[name]
        path = f"{prefix}{name}"
        if isinstance(v, dict):
            out += _lines(v, path + ".")
        elif isinstance(v, set):
            out += [f"{path}\t{show_value(x)}" for x in sorted(v)] or [f"{path}\t(empty)"]
        elif isinstance(v, bytes):
            out.append(f"{path}\t{show_value(v)}")
        elif isinstance(v, bool):
            out.append(f"{path}\t{'true' if v else 'false'}")
        else:
            out.append(f"{path}\t{v}")
    return out


def describe_state(blob: object) -> dict[str, Any] | None:
    """A typed state as `dynq inspect` shows it (None: not a typed state): the console's
    view, with the context's dot cloud listed whole."""
    return typed_state_view(blob, whole_cloud=True)


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("bucket")(click.argument("key")(seed_option(timeout_option(f))))


@click.group("counter")
def counter() -> None:
    """A PN-counter of a bucket created with --datatype counter."""


@counter.command("incr")
@click.argument("bucket")
@click.argument("key")
@click.argument("n", type=int, default=1)
@seed_option
@timeout_option
def counter_incr(bucket: str, key: str, n: int, seed: tuple[str, ...], timeout: float) -> None:
    """Add N (default 1; negative to decrement) to the counter."""
    _run(seed, timeout, lambda db: db.counter(bucket, key).increment(n))


@counter.command("get")
@_common
def counter_get(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    """Print the counter's value."""
    click.echo(_run(seed, timeout, lambda db: db.counter(bucket, key).value()))


@click.group("set")
def set_() -> None:
    """An add-wins observed-remove set of a bucket created with --datatype set."""


@set_.command("add")
@click.argument("bucket")
@click.argument("key")
@click.argument("elements", nargs=-1, required=True)
@seed_option
@timeout_option
def set_add(bucket: str, key: str, elements: tuple[str, ...], seed: tuple[str, ...], timeout: float) -> None:
    """Add ELEMENTS (UTF-8 strings) to the set."""
    _run(seed, timeout, lambda db: db.set(bucket, key).add(*elements))


@set_.command("remove")
@click.argument("bucket")
@click.argument("key")
@click.argument("elements", nargs=-1, required=True)
@seed_option
@timeout_option
def set_remove(bucket: str, key: str, elements: tuple[str, ...], seed: tuple[str, ...], timeout: float) -> None:
    """Remove ELEMENTS: the adds of them that a read just before observed."""
    def action(db: Any) -> None:
        handle = db.set(bucket, key)
        handle.value()
        handle.remove(*elements)

    _run(seed, timeout, action)


@set_.command("get")
@_common
def set_get(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    """Print the set's elements, one per line (sorted)."""
    for x in sorted(_run(seed, timeout, lambda db: db.set(bucket, key).value())):
        click.echo(show_value(x))


@click.group("map")
def map_() -> None:
    """A map of typed fields (bucket created with --datatype map); FIELD may be a.b for nested maps."""


def _field(handle: Any, path: str, kind: str) -> Any:
    names = path.split(".")
    for name in names[:-1]:
        handle = handle.map(name)
    return getattr(handle, kind)(names[-1])


def _map_op(verb: str, kind: str, help_: str, nargs: int) -> None:
    @map_.command(verb, help=help_)
    @click.argument("bucket")
    @click.argument("key")
    @click.argument("field")
    @click.argument("args", nargs=-1)
    @seed_option
    @timeout_option
    def command(bucket: str, key: str, field: str, args: tuple[str, ...], seed: tuple[str, ...],
                timeout: float) -> None:
        if nargs >= 0 and len(args) != nargs:
            raise click.UsageError(f"map {verb} takes {nargs} argument(s) after FIELD")

        def action(db: Any) -> None:
            m = db.map(bucket, key)
            m.value()  # removals observe this read
            f = _field(m, field, kind)
            if verb == "incr":
                f.increment(int(args[0]) if args else 1)
            elif verb == "add":
                f.add(*args)
            elif verb == "discard":
                f.discard(*args)
            elif verb == "assign":
                f.assign(args[0].encode())
            elif verb == "enable":
                f.enable()
            elif verb == "disable":
                f.disable()
            else:
                f.remove()

        _run(seed, timeout, action)


_map_op("incr", "counter", "Add N (default 1) to counter field FIELD.", -1)
_map_op("add", "set", "Add elements to set field FIELD.", -1)
_map_op("discard", "set", "Remove elements from set field FIELD.", -1)
_map_op("assign", "register", "Assign VALUE to register field FIELD.", 1)
_map_op("enable", "flag", "Enable flag field FIELD.", 0)
_map_op("disable", "flag", "Disable flag field FIELD.", 0)
for _kind in ("counter", "set", "register", "flag", "map"):
    _map_op(f"remove-{_kind}", _kind, f"Remove {_kind} field FIELD (what a read just before observed).", 0)


@map_.command("get")
@_common
def map_get(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    """Print the map's fields, FIELD<TAB>value a line (a set field: a line per element)."""
    for line in _lines(_run(seed, timeout, lambda db: db.map(bucket, key).value())):
        click.echo(line)


@click.group("register")
def register() -> None:
    """A register (bucket created with --datatype register): concurrent values kept, newest read."""


@register.command("assign")
@click.argument("bucket")
@click.argument("key")
@click.argument("value")
@seed_option
@timeout_option
def register_assign(bucket: str, key: str, value: str, seed: tuple[str, ...], timeout: float) -> None:
    """Assign VALUE."""
    _run(seed, timeout, lambda db: db.register(bucket, key).assign(value.encode()))


@register.command("get")
@_common
def register_get(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    """Print the newest value (exit 1 if none)."""
    value = _run(seed, timeout, lambda db: db.register(bucket, key).value())
    if value is None:
        click.echo("(not found)")
        raise SystemExit(1)
    click.echo(show_value(value))


@click.group("flag")
def flag() -> None:
    """An enable-wins flag (bucket created with --datatype flag)."""


@flag.command("enable")
@_common
def flag_enable(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    _run(seed, timeout, lambda db: db.flag(bucket, key).enable())


@flag.command("disable")
@_common
def flag_disable(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    def action(db: Any) -> None:
        handle = db.flag(bucket, key)
        handle.value()
        handle.disable()

    _run(seed, timeout, action)


@flag.command("get")
@_common
def flag_get(bucket: str, key: str, seed: tuple[str, ...], timeout: float) -> None:
    click.echo("true" if _run(seed, timeout, lambda db: db.flag(bucket, key).value()) else "false")


COMMANDS = (counter, set_, map_, register, flag)


# --- export / import of typed buckets (dynq export / dynq import) ------------------------------


async def export_typed(db: AsyncClient, props: BucketProps, out: IO[str], concurrency: int,
                       header: dict[str, Any]) -> int:
    """Every non-empty key of a typed bucket as ``{"key", "state"}`` lines: the whole
    joined state (context included), so an import joins it and removals stay removed."""
    out.write(json.dumps({**header, "datatype": props.datatype}) + "\n")
    assert props.datatype is not None
    limit = asyncio.Semaphore(concurrency)
    count = 0

    async def fetch(key: bytes) -> crdt.State:
        async with limit:
            return await typed.handle(db, props.datatype or "", props.name, key).state()

    async for page in db.bucket(props.name).key_pages(page_size=500):
        states = await asyncio.gather(*(fetch(k) for k in page.keys))
        for key, state in zip(page.keys, states):
            if not crdt.is_bottom(state.store):  # cleared since it was listed: nothing to export
                out.write(json.dumps({"key": base64.b64encode(key).decode(),
                                      "state": base64.b64encode(crdt.encode_state(state)).decode()},
                                     separators=(",", ":")) + "\n")
                count += 1
    return count


async def import_typed(db: AsyncClient, lines: Iterable[str], target: str, kind: str,
                       concurrency: int) -> tuple[int, int]:
    """Join each exported state into its key of bucket ``target`` (of the same type) on
    every primary, as read repair does. Returns (keys stored, keys some primary missed)."""
    props = await db.bucket(target).props()
    if props is None or props.datatype != kind:
        raise WrongDataType(f"the export holds {kind}s; bucket {target!r} does not (create it with --datatype {kind})")
    table = db.table
    assert table is not None
    limit = asyncio.Semaphore(concurrency)
    done = failed = 0

    async def store(number: int, line: str) -> None:
        nonlocal done, failed
        try:
            data = json.loads(line)
            key = base64.b64decode(data["key"], validate=True)
            blob = base64.b64decode(data["state"], validate=True)
            if crdt.decode_state(blob).kind != kind:
                raise ValueError(f"not a {kind}")
        except (ValueError, KeyError, TypeError, DynqError) as exc:
            raise click.ClickException(f"line {number}: not a {kind} export line: {exc}") from exc
        plist = table.ring.preference_list_for(storage_key(target, key), props.n)
        async with limit:
            outcomes = await asyncio.gather(*(db.call(name, OP_READ_REPAIR, {"k": key, "bk": target, "ob": blob})
                                              for name in plist.primaries), return_exceptions=True)
        if any(isinstance(o, BaseException) for o in outcomes):
            failed += 1
        else:
            done += 1

    await asyncio.gather(*(store(n, line) for n, line in enumerate(lines, start=2) if line.strip()))
    return done, failed
