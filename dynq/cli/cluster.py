"""`dynq cluster`: membership through a plan (join, leave, plan, clear, commit), transfers, status."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dynq_client.client import Client
from dynq_client.errors import DynqError, Unavailable

from .common import connect, fail, seed_option, seeds_of, timeout_option


@click.group()
def cluster() -> None:
    """The cluster as a whole."""


def seed_call(seed: tuple[str, ...], op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``op`` to the first seed that answers (it need not be a member yet)."""
    errors: list[str] = []
    for address in seeds_of(seed):
        with connect((address,), timeout) as db:
            try:
                return db.call_address(address, op, body)
            except DynqError as exc:
                if not isinstance(exc, Unavailable) or "not connected" not in exc.message:
                    raise
                errors.append(f"{address}: {exc}")
    raise Unavailable("no seed answered: " + "; ".join(errors))


@cluster.command("join")
@click.argument("cluster_address")
@seed_option
@timeout_option
def cluster_join(cluster_address: str, seed: tuple[str, ...], timeout: float) -> None:
    """Stage the node at --seed (a new, empty node) joining the cluster CLUSTER_ADDRESS
    belongs to. Review with `dynq cluster plan`, apply with `dynq cluster commit`."""
    try:
        body = seed_call(seed, "cluster_join", {"cluster": cluster_address}, timeout)
    except DynqError as exc:
        fail(exc)
    click.echo(f"staged: join of the node at {seeds_of(seed)[0]}; cluster members {', '.join(body['members'])} "
               f"(claimant {body['claimant']})")
    click.echo("next: dynq cluster plan, then dynq cluster commit")


@cluster.command("leave")
@click.argument("node_name", required=False)
@seed_option
@timeout_option
def cluster_leave(node_name: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Stage NODE (default: the node at --seed) leaving; it hands off every partition
    after `dynq cluster commit`, then exits."""
    try:
        body = seed_call(seed, "cluster_leave", {"node": node_name} if node_name else {}, timeout)
    except DynqError as exc:
        fail(exc)
    click.echo(f"staged: leave of {', '.join(body['staged']['leaves'])}")
    click.echo("next: dynq cluster plan, then dynq cluster commit")


@cluster.command("plan")
@click.option("--json", "as_json", is_flag=True)
@click.option("--verbose", "-v", is_flag=True, help="List every partition transfer.")
@seed_option
@timeout_option
def cluster_plan(as_json: bool, verbose: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Show what committing the staged changes would do: which partitions move from whom
    to whom, and the resulting balance."""
    try:
        body = seed_call(seed, "cluster_plan", {}, timeout)
    except DynqError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    if body.get("empty"):
        click.echo("nothing staged" + (f"; a change is in progress ({body['in_progress']} transfers left)"
                                       if body.get("in_progress") else ""))
        return
    staged = body["staged"]
    for raw in staged["joins"]:
        click.echo(f"join   {raw[0]} at {raw[1]}" + (f" zone {raw[2]}" if raw[2] else "") + f" weight {raw[3]}")
    for name in staged["leaves"]:
        click.echo(f"leave  {name}")
    transfers = body["transfers"]
    pairs: dict[tuple[str, str], list[int]] = {}
    for p_, src, dst, *_n in transfers:  # [partition, source, target] or [..., n] for a bucket's n
        pairs.setdefault((src, dst), []).append(p_)
    click.echo(f"\n{len(transfers)} partition transfers (key partitions whose replicas change):")
    for (src, dst), parts in sorted(pairs.items()):
        shown = ", ".join(map(str, parts)) if verbose else f"{len(parts)} partitions"
        click.echo(f"  {src:>10} -> {dst:<10} {shown}")
    click.echo(f"\n{'node':<10} {'owned now':>10} {'after':>6}")
    for name, (before, after) in body["balance"].items():
        click.echo(f"{name:<10} {before:>10} {after:>6}")
    click.echo(f"\nplan {body['id']} (claimant {body['claimant']}): dynq cluster commit --plan {body['id']}")


@cluster.command("clear")
@seed_option
@timeout_option
def cluster_clear(seed: tuple[str, ...], timeout: float) -> None:
    """Drop the staged changes."""
    try:
        body = seed_call(seed, "cluster_clear", {}, timeout)
    except DynqError as exc:
        fail(exc)
    cleared = body["cleared"]
    click.echo(f"cleared: {len(cleared['joins'])} joins, {len(cleared['leaves'])} leaves")


@cluster.command("commit")
@click.option("--plan", "plan_id", default=None, help="Refuse unless the staged plan is still this one.")
@seed_option
@timeout_option
def cluster_commit(plan_id: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Apply the staged changes: partitions start moving (see `dynq cluster transfers`)."""
    try:
        body = seed_call(seed, "cluster_commit", {"plan": plan_id} if plan_id else {}, timeout)
    except DynqError as exc:
        fail(exc)
    click.echo(f"committed: cluster state version {body['version']}, {body['transfers']} partition transfers")
    if body["transfers"]:
        click.echo("follow them with: dynq cluster transfers --watch")


def _transfer_report(db: Client, seed: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """The cluster's pending transfers and every member's progress on its own."""
    head = seed_call(seed, "transfers", {}, timeout)
    state = seed_call(seed, "cluster_state", {}, timeout)["state"]
    names = {m[0]: m[1] for m in state["ring"]["members"]}
    if state.get("next"):
        names.update({m[0]: m[1] for m in state["next"]["members"]})
    progress: list[dict[str, Any]] = []
    for name, address in sorted(names.items()):
        try:
            progress += db.call_address(address, "transfers", {})["progress"]
        except DynqError:
            pass
    return {"version": head["version"], "planned": head["planned"], "pending": head["pending"],
            "progress": progress}


@cluster.command("transfers")
@click.option("--watch", is_flag=True, help="Follow with a progress bar until the transition ends.")
@click.option("--max-wait", default=3600.0, show_default=True, help="Seconds --watch waits at most.")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def cluster_transfers(watch: bool, max_wait: float, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Partition transfers of the running membership change: pending ones, and what each
    running transfer has sent."""
    import time

    try:
        with connect(seed, timeout) as db:
            report = _transfer_report(db, seed, timeout)
            if as_json:
                click.echo(json.dumps(report, indent=2))
                return
            pending = report["pending"]
            running = [pr for pr in report["progress"] if pr["state"] != "done"]
            click.echo(f"cluster state {report['version']}: {len(pending)} of {report['planned']} transfers pending")
            for pr in running:
                p_, src, dst, *n_ = pr["t"]
                total = max(pr["total"], 1)
                n_note = f" n={n_[0]}" if n_ else ""
                click.echo(f"  partition {p_:>5}{n_note}: {src} -> {dst}  {pr['state']:<9} "
                           f"{pr['sent']}/{pr['total']} objects ({min(100, 100 * pr['sent'] // total)}%), "
                           f"{pr['bytes'] / 1e6:.1f} MB, {pr['retries']} retries")
            if not watch or not pending:
                return
            planned = max(report["planned"], len(pending))
            deadline = time.monotonic() + max_wait
            with click.progressbar(length=planned, label="transfers", show_pos=True) as bar:
                done = planned - len(pending)
                bar.update(done)
                while pending and time.monotonic() < deadline:
                    time.sleep(1.0)
                    pending = seed_call(seed, "transfers", {}, timeout)["pending"]
                    now_done = planned - len(pending)
                    if now_done > done:
                        bar.update(now_done - done)
                        done = now_done
            if pending:
                click.echo(f"still {len(pending)} transfers pending after {max_wait:.0f}s", err=True)
                sys.exit(1)
            click.echo("transition complete")
    except DynqError as exc:
        fail(exc)


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def cluster_status(as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Every node at a glance (membership status, partitions owned, pending transfers,
    hints); exits 1 when the cluster is degraded (a node unreachable, or a node that cannot
    reach a peer), for scripts."""
    import time

    from ..cluster.membership import ClusterState

    rows: list[dict[str, Any]] = []
    try:
        state = ClusterState.from_wire(seed_call(seed, "cluster_state", {}, timeout)["state"])
        counts = state.ring.owned_counts()
        after = state.next_ring.owned_counts() if state.next_ring else counts
        with connect(seed, timeout) as db:
            for m in state.members:
                row: dict[str, Any] = {
                    "node": m.name, "address": m.address, "zone": m.zone, "weight": m.weight,
                    "membership": state.status_of(m.name), "partitions": counts.get(m.name, 0),
                    "partitions_after": after.get(m.name, 0),
                    "transfers": sum(1 for t in state.transfers if m.name in (t.source, t.target)),
                }
                try:
                    ping = db.call_address(m.address, "ping", {"peers": True})
                    stats_ = db.call_address(m.address, "stats", {})
                    others = {o.name for o in state.ring.members if o.name != m.name}
                    ae = stats_.get("anti_entropy", {})
                    exchanged = [v["last_exchange_ms"] for v in ae.get("partitions", {}).values()
                                 if v.get("last_exchange_ms")]
                    row.update(status="up", unreachable_peers=sorted(others - set(ping["reachable"])),
                               hints_pending=stats_["hints_pending_total"], keys=stats_["keys"],
                               epoch=stats_["epoch"], repair_horizon_s=ae.get("horizon_s"),
                               last_repair_ms=max(exchanged) if exchanged else None)
                except DynqError as exc:
                    row.update(status="down", error=str(exc))
                rows.append(row)
    except DynqError as exc:
        fail(exc)
    degraded = any(r["status"] != "up" or r.get("unreachable_peers") for r in rows)
    if as_json:
        click.echo(json.dumps({"degraded": degraded, "version": state.version, "nodes": rows}, indent=2))
    else:
        click.echo(f"cluster state {state.version}, {len(state.ring.members)} members, Q={state.ring.q} "
                   f"N={state.ring.n}" + (f", {len(state.transfers)} of {state.planned} transfers pending"
                                         if state.transfers else ""))
        click.echo(f"{'node':<10} {'address':<26} {'zone':<6} {'wt':>3} {'member':<8} {'status':<6} "
                   f"{'parts':>9} {'xfers':>5} {'keys':>8} {'hints':>7} {'repaired':>9} {'horizon':>8}  notes")
        for r in rows:
            notes = r.get("error", "")
            if r.get("unreachable_peers"):
                notes = "cannot reach " + ", ".join(r["unreachable_peers"])
            parts = str(r["partitions"]) if r["partitions"] == r["partitions_after"] \
                else f"{r['partitions']}->{r['partitions_after']}"
            last = r.get("last_repair_ms")
            repaired = f"{max(0.0, time.time() - last / 1000):.0f}s ago" if last else "never"
            horizon = f"{r['repair_horizon_s']:.0f}s" if r.get("repair_horizon_s") is not None else "-"
            click.echo(f"{r['node']:<10} {r['address']:<26} {r['zone'] or '-':<6} {r['weight']:>3} "
                       f"{r['membership']:<8} {r['status']:<6} {parts:>9} {r['transfers']:>5} "
                       f"{r.get('keys', '-'):>8} {r.get('hints_pending', '-'):>7} "
                       f"{repaired if r['status'] == 'up' else '-':>9} {horizon:>8}  {notes}")
        click.echo("DEGRADED" if degraded else "healthy")
    sys.exit(1 if degraded else 0)
