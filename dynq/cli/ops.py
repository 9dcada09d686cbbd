"""`dynq repair`: anti-entropy on demand, partition by partition."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dynq_client.buckets import tree_id
from dynq_client.client import Client
from dynq_client.errors import DynqError

from .common import connect, fail, seed_option, show_value, timeout_option


@click.command()
@click.option("--partition", "partition", type=int, default=None, help="Only this partition (default: all).")
@click.option("--node", "node_name", default=None,
              help="Run the passes on this node (default: the first reachable primary of each partition).")
@click.option("--rebuild", is_flag=True, help="First rebuild the trees of every replica from their data.")
@click.option("--json", "as_json", is_flag=True, help="One result per partition, as JSON.")
@seed_option
@timeout_option
def repair(partition: int | None, node_name: str | None, rebuild: bool, as_json: bool,
           seed: tuple[str, ...], timeout: float) -> None:
    """Run anti-entropy now: for each partition, one node exchanges Merkle trees with every
    other primary and repairs what differs (then reaps tombstones past their grace).
    Exit code 0: every partition reached all its primaries; 1: some did not (a primary
    unreachable or an exchange failed); 2: no cluster or bad arguments."""
    results: list[dict[str, Any]] = []
    try:
        with connect(seed, max(timeout, 600.0)) as db:
            assert db.table is not None
            ring_ = db.table.ring
            if partition is not None and not 0 <= partition < ring_.q:
                raise click.BadParameter(f"must be in 0..{ring_.q - 1}", param_hint="--partition")
            if node_name is not None and node_name not in {m.name for m in ring_.members}:
                raise click.BadParameter(f"{node_name!r} is not a member", param_hint="--node")
            # One tree per (partition, n): the ring's n, and each other n a bucket uses.
            ns = db.table.buckets.ns(ring_.n)
            trees = [(p, n) for n in ns for p in ([partition] if partition is not None else range(ring_.q))]
            if node_name is not None:
                trees = [(p, n) for p, n in trees if node_name in ring_.preference_list(p, n).primaries]
                if not trees:
                    raise click.BadParameter(f"{node_name} is not a primary of partition {partition}",
                                             param_hint="--node")
            with click.progressbar(trees, label="repairing", file=sys.stderr,
                                   item_show_func=lambda t: None if t is None else
                                   f"partition {t[0]}" + (f" n={t[1]}" if t[1] != ring_.n else "")) as bar:
                for p, n in bar:
                    results.append(_repair_partition(db, ring_.preference_list(p, n).primaries,
                                                     tree_id(ring_.q, ring_.n, p, n), node_name, rebuild))
    except DynqError as exc:
        fail(exc)
    incomplete = [r for r in results if not r.get("complete")]
    if as_json:
        click.echo(json.dumps([{k: (v if k != "sample" else [show_value(x) for x in v]) for k, v in r.items()}
                               for r in results], indent=2))
    else:
        total = {k: sum(int(r.get(k, 0)) for r in results)
                 for k in ("keys_repaired", "keys_sent", "keys_received", "bytes", "reaped", "tree_fixes")}
        click.echo(f"{len(results) - len(incomplete)}/{len(results)} partitions repaired: "
                   f"{total['keys_repaired']} keys differed ({total['keys_sent']} sent, {total['keys_received']} "
                   f"received), {total['bytes']} bytes, {total['reaped']} tombstones reaped, "
                   f"{total['tree_fixes']} tree rows fixed")
        for r in incomplete:
            why = r.get("error") or "; ".join([f"{n} unreachable" for n in r.get("skipped", [])]
                                              + [f"{n}: {e}" for n, e in r.get("failed", {}).items()])
            n_note = f" (n={r['n']})" if r.get("n") not in (None, ring_.n) else ""
            click.echo(f"  partition {r['partition']}{n_note}: incomplete: {why}", err=True)
    sys.exit(1 if incomplete else 0)


def _repair_partition(db: Client, primaries: tuple[str, ...], partition: int, node_name: str | None,
                      rebuild: bool) -> dict[str, Any]:
    """One partition's pass on ``node_name`` or the first primary that takes it."""
    errors: dict[str, str] = {}
    for name in [node_name] if node_name else list(primaries):
        try:
            result: dict[str, Any] = db.call(name, "ae_repair", {"p": partition, "rebuild": rebuild}, retry=False)
            return result
        except DynqError as exc:
            errors[name] = str(exc)
    return {"partition": partition, "complete": False, "error": f"no primary ran the pass: {errors}"}
