"""dynq against the hand-written limit, in one run: issue 15's acceptance figures.

    python bench/vs_limit.py [--rounds 5] [--keys 10000] [--value-size 1024] [--concurrency 32]
                             [--open-seconds 4] [--arrival poisson|fixed] [--no-open-loop]
                             [--variant uvloop-client] [--json]

Starts, in a temporary directory, a 3-node cluster with `dynq up`'s defaults (LocalCluster
with security "curve", N=3 R=2 W=2, Q=64, synchronous=full; the client connects with the
application key, as `dynq up` tells applications to) and the hand-written limit of
bench/limit.py twice (CURVE, as dynq's default, and plaintext). Then, in alternating
rounds (dynq, limit, dynq, limit, ...; the machine is shared and noisy, so only medians
over rounds and ratios within one run mean anything):

* closed loop, ``--concurrency`` in flight: puts of ``--keys`` fresh keys, then gets of
  them; throughput, p50/p99, and the CPU µs per op of every process (each node or limit
  replica, and this process as the client; /proc utime+stime deltas over the phase);
* one request at a time (``--lone`` of each): the p50 of a lone request.

Then the open-loop tail of dynq (dynq.bench.open_loop: Poisson arrivals, or with
``--arrival fixed`` one request every 1/rate s as wrk2 and YCSB's target rate issue them;
latency from each request's intended start) at 25/50/75/90 % of the median closed-loop peak, for puts and
for gets, ``--open-seconds`` each, with p99 and p99.9 over the lone-request p50 (issue 15's
bounds at 50 %: p99 <= 4x, p99.9 <= 10x).

``--variant`` adds cheap levers measured interleaved in the same rounds (report only): the
client on uvloop, CURVE off, synchronous=normal.

Ratios dynq/limit are taken against the CURVE limit (dynq's configuration); the plaintext
limit is printed beside it. While the limit runs, dynq's idle nodes (gossip, timers) still
use some CPU: it is measured and printed as a noise figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.limit import LimitClient, LimitCluster, Phase, closed_loop, exit_on_sigterm, measure as measure_limit, \
    pct_ms, wait_ready  # noqa: E402
from bench.procstat import cpu_snapshot, us_per_op  # noqa: E402
from dynq.bench import ARRIVALS, Arrivals, Histogram, Pacer, open_loop  # noqa: E402
from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq_client import AsyncClient, CurveKeys  # noqa: E402
from dynq_client.errors import DynqError  # noqa: E402

PHASE_BOUND_S = 180.0  # no phase runs longer than this, whatever the machine does
OPEN_LOOP_CAP = 1024  # open loop: most requests in flight (a cap reached is counted "late")
FRACTIONS = (0.25, 0.5, 0.75, 0.9)


async def _closed(db: AsyncClient, op: str, keys: list[bytes], value: bytes, concurrency: int) -> Phase:
    """``concurrency`` workers through the public API until every key was done once."""
    latencies: list[float] = []
    failed = 0
    queue = iter(keys)
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal failed
        for key in queue:
            t0 = clock()
            try:
                if op == "put":
                    await db.put(key, value)
                elif not (await db.get(key)).found:
                    failed += 1
                    continue
            except DynqError:
                failed += 1
                continue
            latencies.append(clock() - t0)

    start = clock()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), PHASE_BOUND_S)
    return Phase(len(latencies), clock() - start, latencies, failed)


async def measure_dynq(seeds: list[str], curve: CurveKeys | None, pids: dict[str, int], keys: int,
                       value_size: int, concurrency: int, tag: str, lone: int,
                       client_kw: dict[str, Any] | None = None) -> dict[str, Phase]:
    """The same phases as bench/limit.py's measure(), through AsyncClient."""
    value = os.urandom(value_size)
    batch = [f"{tag}-{i}".encode() for i in range(keys)]
    out: dict[str, Phase] = {}
    async with AsyncClient(seeds, timeout=10.0, curve=curve, **(client_kw or {})) as db:
        for op in ("put", "get"):
            before = cpu_snapshot(pids)
            phase = await _closed(db, op, batch, value, concurrency)
            phase.cpu_us = us_per_op(before, cpu_snapshot(pids), phase.ops)
            out[op] = phase
        out["put c=1"] = await _closed(db, "put", [k + b"-1" for k in batch[:lone]], value, 1)
        out["get c=1"] = await _closed(db, "get", batch[:lone], value, 1)
    return out


async def open_loop_point(seeds: list[str], curve: CurveKeys | None, op: str, rate: float, seconds: float,
                          keys: list[bytes], value: bytes, tag: str,
                          client_kw: dict[str, Any] | None = None, arrival: str = "poisson") -> dict[str, Any]:
    """dynq at ``rate`` ops/s on an ``arrival`` schedule for ``seconds``: latency
    percentiles measured from each request's intended start."""
    hist = Histogram()
    failed = 0
    async with AsyncClient(seeds, timeout=10.0, curve=curve, **(client_kw or {})) as db:
        for key in keys[:50]:  # connections made and CURVE handshakes done before the clock starts
            await db.get(key)

        async def issue(i: int) -> str | None:
            nonlocal failed
            try:
                if op == "put":
                    await db.put(f"{tag}-{i}".encode(), value)
                else:
                    await db.get(keys[i % len(keys)])
            except DynqError:
                failed += 1
                return None
            return op

        pacer = Pacer(Arrivals(rate, arrival), OPEN_LOOP_CAP, seconds)
        stats = await open_loop(issue, pacer, lambda label, s: hist.record(s), bound_s=seconds + 40.0)
    s = hist.summary()
    return {"target_rate": round(rate, 1), "achieved_rate": round(hist.count / stats.elapsed, 1) if stats.elapsed else 0,
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "p999_ms": s["p999_ms"], "max_ms": s["max_ms"],
            "count": hist.count, "failed": failed, "late": stats.late, "unfinished": stats.unfinished,
            "max_lag_ms": round(stats.max_lag_s * 1000, 3)}


async def limit_open_loop_point(lim: LimitCluster, op: str, rates: list[float], seconds: float,
                                keys: list[bytes], value: bytes, tag: str, lone: int,
                                arrival: str = "poisson") -> dict[str, Any]:
    """The hand-written limit on the same kind of schedule: what tail its own stack allows
    on this machine (the yardstick for dynq's open-loop bounds). Returns the limit's lone
    p50 and one point per rate."""
    client = LimitClient(asyncio.get_running_loop(), lim.addresses, lim.client_keys)
    try:
        await wait_ready(client)
        lone_phase = await closed_loop(client, op, keys[:lone] if op == "get" else
                                       [f"{tag}-lone-{i}".encode() for i in range(lone)], value, 1)
        lone_p50 = pct_ms(lone_phase.latencies, 0.5)
        points = []
        for rate in rates:
            hist = Histogram()
            failed = 0

            async def issue(i: int) -> str | None:
                nonlocal failed
                done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

                def settle(ok: bool) -> None:
                    if not done.done():
                        done.set_result(ok)

                if op == "put":
                    client.put(f"{tag}-{rate:.0f}-{i}".encode(), value, settle)
                else:
                    client.get(keys[i % len(keys)], settle)
                if not await done:
                    failed += 1
                    return None
                return op

            pacer = Pacer(Arrivals(rate, arrival), OPEN_LOOP_CAP, seconds)
            await open_loop(issue, pacer, lambda label, s: hist.record(s), bound_s=seconds + 40.0)
            x = hist.summary()
            points.append({"target_rate": round(rate, 1), "p50_ms": x["p50_ms"], "p99_ms": x["p99_ms"],
                           "p999_ms": x["p999_ms"], "failed": failed,
                           "p99_over_lone_p50": round(x["p99_ms"] / lone_p50, 2) if lone_p50 else 0.0,
                           "p999_over_lone_p50": round(x["p999_ms"] / lone_p50, 2) if lone_p50 else 0.0})
        return {"lone_p50_ms": round(lone_p50, 3), "points": points}
    finally:
        client.close()


def _summary(phases: list[Phase]) -> dict[str, Any]:
    """Medians over rounds of one phase."""
    cpu_keys = phases[0].cpu_us.keys()
    return {"ops_s": round(statistics.median(p.ops_s for p in phases), 1),
            "p50_ms": round(statistics.median(pct_ms(p.latencies, 0.5) for p in phases), 3),
            "p99_ms": round(statistics.median(pct_ms(p.latencies, 0.99) for p in phases), 3),
            "failed": sum(p.failed for p in phases),
            "cpu_us": {k: round(statistics.median(p.cpu_us[k] for p in phases), 1) for k in cpu_keys},
            "rounds_ops_s": [round(p.ops_s, 1) for p in phases]}


def _cpu_total(cpu: dict[str, float], names: list[str]) -> float:
    return round(sum(cpu.get(n, 0.0) for n in names), 1)


VARIANTS = {
    "uvloop-client": "the same cluster, the client on uvloop's event loop (the nodes keep asyncio)",
    "plaintext": "a second cluster with security none (CURVE off)",
    "sync-normal": "a second cluster with synchronous=normal (no fsync per commit; survives a crash, not power loss)",
    "fanout-all": "the same cluster, client-coordinated reads asking all N replicas (read_fanout='all')",
    "server-coordinated": "the same cluster, reads coordinated by a replica (coordination='server'); the open"
                          " loop also measures these gets at the same offered loads (issue 15: client p99 <= 0.7x)",
}
CLIENT_VARIANTS: dict[str, dict[str, Any]] = {"fanout-all": {"read_fanout": "all"},
                                              "server-coordinated": {"coordination": "server"}}


def _run_loop(coro: Any, uvloop: bool) -> Any:
    """asyncio.run, or the same on a uvloop event loop."""
    if not uvloop:
        return asyncio.run(coro)
    import uvloop as uv

    with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
        return runner.run(coro)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    def dynq_cluster(name: str, **kw: Any) -> LocalCluster:
        return LocalCluster(tmp / name, [f"tcp://127.0.0.1:{p}" for p in free_ports(3)], **kw)

    clusters = {"dynq": dynq_cluster("dynq", security="curve")}
    if "plaintext" in args.variant:
        clusters["dynq plaintext"] = dynq_cluster("dynq-plain", security="none")
    if "sync-normal" in args.variant:
        clusters["dynq sync-normal"] = dynq_cluster("dynq-normal", security="curve", synchronous="normal")
    # system name -> (cluster, client on uvloop?, client options)
    systems: dict[str, tuple[LocalCluster, bool, dict[str, Any]]] = {name: (c, False, {}) for name, c in clusters.items()}
    if "uvloop-client" in args.variant:
        systems["dynq uvloop-client"] = (clusters["dynq"], True, {})
    for variant, kw in CLIENT_VARIANTS.items():
        if variant in args.variant:
            systems[f"dynq {variant}"] = (clusters["dynq"], False, kw)
    cluster = clusters["dynq"]
    limits = {"curve": LimitCluster(tmp, curve=True), "plain": LimitCluster(tmp / "plain", curve=False)}
    (tmp / "plain").mkdir()
    rounds: dict[str, list[dict[str, Phase]]] = {name: [] for name in [*systems, "limit curve", "limit plain"]}
    out: dict[str, Any] = {"config": {"keys": args.keys, "value_size": args.value_size,
                                      "concurrency": args.concurrency, "rounds": args.rounds, "lone": args.lone,
                                      "dynq": f"N={cluster.n} R={cluster.r} W={cluster.w} Q={cluster.q} "
                                              f"synchronous={cluster.synchronous} security={cluster.security}",
                                      "variants": {v: VARIANTS[v] for v in args.variant}}}
    try:
        for c in clusters.values():
            c.start_all()
        for c in clusters.values():
            c.wait_ready(timeout=60)
        for lim in limits.values():
            lim.start()
        node_pids = {name: node.process.pid for name, node in cluster.nodes.items() if node.process}
        idle_names = [f"dynq idle {n}" for n in node_pids]
        for n in range(args.rounds):
            order = list(systems) + ["limit curve", "limit plain"]
            if n % 2:
                order.reverse()
            for which in order:
                tag = f"r{n}-{which.replace(' ', '-')}"
                if which in systems:
                    c, uv, kw = systems[which]
                    pids = {name: node.process.pid for name, node in c.nodes.items() if node.process}
                    result = _run_loop(measure_dynq(c.seeds, c.client_keys("app"), pids | {"client": os.getpid()},
                                                    args.keys, args.value_size, args.concurrency, tag, args.lone,
                                                    kw), uv)
                else:
                    lim = limits[which.split()[1]]
                    before = cpu_snapshot(node_pids)
                    result = asyncio.run(measure_limit(lim, args.keys, args.value_size, args.concurrency, tag,
                                                       args.lone, bound_s=PHASE_BOUND_S))
                    idle = us_per_op(before, cpu_snapshot(node_pids), result["put"].ops + result["get"].ops)
                    result["put"].cpu_us.update({f"dynq idle {k}": v for k, v in idle.items()})
                rounds[which].append(result)
                print(f"round {n + 1} {which:<18} " + "  ".join(
                    f"{name} {p.ops_s:.0f}/s" for name, p in result.items()), file=sys.stderr, flush=True)
        med = {which: {name: _summary([r[name] for r in rs]) for name in rs[0]} for which, rs in rounds.items()}
        out["median"] = med
        out["rounds_raw"] = {which: [{name: {"ops_s": round(p.ops_s, 1), "p99_ms": round(pct_ms(p.latencies, 0.99), 3),
                                             "cpu_us": p.cpu_us} for name, p in r.items()} for r in rs]
                             for which, rs in rounds.items()}
        node_names = list(node_pids)
        replicas = ["r1", "r2", "r3"]
        ratios: dict[str, Any] = {}
        for op in ("put", "get"):
            d, lc, lp = med["dynq"][op], med["limit curve"][op], med["limit plain"][op]
            per_round = [a[op].ops_s / b[op].ops_s for a, b in zip(rounds["dynq"], rounds["limit curve"])]
            ratios[op] = {"dynq_over_limit": round(d["ops_s"] / lc["ops_s"], 3) if lc["ops_s"] else 0.0,
                          "per_round_median": round(statistics.median(per_round), 3),
                          "dynq_over_plain_limit": round(d["ops_s"] / lp["ops_s"], 3) if lp["ops_s"] else 0.0,
                          "cpu_dynq_nodes": _cpu_total(d["cpu_us"], node_names),
                          "cpu_dynq_client": d["cpu_us"].get("client", 0.0),
                          "cpu_limit_replicas": _cpu_total(lc["cpu_us"], replicas),
                          "cpu_limit_client": lc["cpu_us"].get("client", 0.0)}
            tot_d = ratios[op]["cpu_dynq_nodes"] + ratios[op]["cpu_dynq_client"]
            tot_l = ratios[op]["cpu_limit_replicas"] + ratios[op]["cpu_limit_client"]
            ratios[op]["cpu_all_over_limit"] = round(tot_d / tot_l, 2) if tot_l else 0.0
        ratios["dynq_idle_nodes_us_per_limit_op"] = _cpu_total(med["limit curve"]["put"]["cpu_us"], idle_names)
        out["ratios"] = ratios
        for name in systems:
            if name == "dynq":
                continue
            out.setdefault("variants", {})[name] = {
                op: {"ops_s_over_dynq": round(med[name][op]["ops_s"] / med["dynq"][op]["ops_s"], 3),
                     "per_round_median": round(statistics.median(
                         a[op].ops_s / b[op].ops_s for a, b in zip(rounds[name], rounds["dynq"])), 3),
                     "client_cpu_us": med[name][op]["cpu_us"].get("client", 0.0),
                     "dynq_client_cpu_us": med["dynq"][op]["cpu_us"].get("client", 0.0),
                     "nodes_cpu_us": _cpu_total(med[name][op]["cpu_us"], node_names),
                     "dynq_nodes_cpu_us": _cpu_total(med["dynq"][op]["cpu_us"], node_names),
                     "p99_ms": med[name][op]["p99_ms"], "dynq_p99_ms": med["dynq"][op]["p99_ms"]}
                for op in ("put", "get")}
        if not args.no_open_loop:
            out["open_loop"] = asyncio.run(_open_loop_curve(args, cluster.seeds, cluster.client_keys("app"),
                                                            med["dynq"]))
            value = os.urandom(args.value_size)
            written = [f"r0-limit-curve-{i}".encode() for i in range(args.keys)]  # round 1's keys
            for op in ("put", "get"):
                peak = med["limit curve"][op]["ops_s"]
                lim = asyncio.run(limit_open_loop_point(limits["curve"], op, [f * peak for f in FRACTIONS],
                                                        args.open_seconds, written, value, f"open-limit-{op}",
                                                        args.lone, args.arrival))
                for point, frac in zip(lim["points"], FRACTIONS):
                    point["fraction"] = frac
                out["open_loop"][op]["limit"] = {"peak_ops_s": peak, **lim}
                half = lim["points"][FRACTIONS.index(0.5)]
                print(f"open loop limit {op} at 50% of {peak:.0f}/s: p99 x{half['p99_over_lone_p50']:.1f}, "
                      f"p99.9 x{half['p999_over_lone_p50']:.1f} of its lone p50 {lim['lone_p50_ms']:.2f} ms",
                      file=sys.stderr, flush=True)
    finally:
        for lim in limits.values():
            lim.stop()
        for c in clusters.values():
            c.stop_all()
    return out


async def _open_loop_curve(args: argparse.Namespace, seeds: list[str], curve: CurveKeys | None,
                           med: dict[str, Any]) -> dict[str, Any]:
    value = os.urandom(args.value_size)
    keys = [f"r0-dynq-{i}".encode() for i in range(args.keys)]  # written in round 1
    out: dict[str, Any] = {"arrival": args.arrival, "seconds": args.open_seconds, "cap": OPEN_LOOP_CAP}
    async with AsyncClient(seeds, timeout=10.0, curve=curve) as db:  # the lone p50 of these same minutes
        lone_now = {"put": await _closed(db, "put", [f"lone-{i}".encode() for i in range(args.lone)], value, 1),
                    "get": await _closed(db, "get", keys[:args.lone], value, 1)}
    for op in ("put", "get"):
        peak, lone = med[op]["ops_s"], pct_ms(lone_now[op].latencies, 0.5)
        points = []
        for frac in FRACTIONS:
            point = await open_loop_point(seeds, curve, op, frac * peak, args.open_seconds, keys, value,
                                          f"open-{op}-{frac}", arrival=args.arrival)
            point["fraction"] = frac
            point["p99_over_lone_p50"] = round(point["p99_ms"] / lone, 2) if lone else 0.0
            point["p999_over_lone_p50"] = round(point["p999_ms"] / lone, 2) if lone else 0.0
            points.append(point)
            print(f"open loop {op} at {frac:.0%} of {peak:.0f}/s: p50 {point['p50_ms']:.2f} p99 {point['p99_ms']:.2f} "
                  f"p99.9 {point['p999_ms']:.2f} ms", file=sys.stderr, flush=True)
        if op == "get" and "server-coordinated" in args.variant:  # the paper's §6.4, same offered loads
            for point, frac in zip(points, FRACTIONS):
                srv = await open_loop_point(seeds, curve, op, frac * peak, args.open_seconds, keys, value,
                                            f"open-srv-{frac}", {"coordination": "server"}, args.arrival)
                point["server_coordinated"] = srv
                point["client_p99_over_server_p99"] = round(point["p99_ms"] / srv["p99_ms"], 2) if srv["p99_ms"] else 0.0
                print(f"open loop get (server-coordinated) at {frac:.0%}: p50 {srv['p50_ms']:.2f} p99 "
                      f"{srv['p99_ms']:.2f} p99.9 {srv['p999_ms']:.2f} ms", file=sys.stderr, flush=True)
        half = points[FRACTIONS.index(0.5)]
        out[op] = {"peak_ops_s": peak, "lone_p50_ms": round(lone, 3), "lone_p50_rounds_ms": med[f"{op} c=1"]["p50_ms"],
                   "points": points,
                   "at_half": {"p99_over_lone_p50": half["p99_over_lone_p50"],
                               "p999_over_lone_p50": half["p999_over_lone_p50"],
                               "within_bounds": half["p99_over_lone_p50"] <= 4 and half["p999_over_lone_p50"] <= 10}}
    return out


def text(out: dict[str, Any]) -> str:
    c, med, rat = out["config"], out["median"], out["ratios"]
    lines = [f"dynq ({c['dynq']}) vs the hand-written limit: {c['keys']} keys, {c['value_size']} B, "
             f"{c['concurrency']} in flight, medians of {c['rounds']} alternating rounds"]
    lines.append(f"  {'':<12} {'puts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'gets/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
                 f"   lone put p50  lone get p50")
    for which, m in med.items():
        lines.append(f"  {which:<12} {m['put']['ops_s']:>8.0f} {m['put']['p50_ms']:>7.2f} {m['put']['p99_ms']:>7.2f} "
                     f"{m['get']['ops_s']:>8.0f} {m['get']['p50_ms']:>7.2f} {m['get']['p99_ms']:>7.2f}"
                     f"   {m['put c=1']['p50_ms']:>9.2f} ms  {m['get c=1']['p50_ms']:>9.2f} ms")
    for op in ("put", "get"):
        r = rat[op]
        lines.append(f"  {op}s: dynq/limit {r['per_round_median']:.2f} (median of the per-round ratios; ratio of the "
                     f"medians {r['dynq_over_limit']:.2f}; vs the plaintext limit {r['dynq_over_plain_limit']:.2f})")
    lines.append("CPU µs per op (median over rounds):")
    for op in ("put", "get"):
        d, lc = med["dynq"][op]["cpu_us"], med["limit curve"][op]["cpu_us"]
        nodes = " ".join(f"{k} {v:.0f}" for k, v in d.items() if k != "client")
        reps = " ".join(f"{k} {v:.0f}" for k, v in lc.items() if k.startswith("r") and k != "rows/txn")
        r = rat[op]
        lines.append(f"  {op}  dynq: {nodes}, client {d['client']:.0f} = {r['cpu_dynq_nodes'] + r['cpu_dynq_client']:.0f}"
                     f" | limit: {reps}, client {lc['client']:.0f} = "
                     f"{r['cpu_limit_replicas'] + r['cpu_limit_client']:.0f} | x{r['cpu_all_over_limit']:.1f}")
    lines.append(f"  limit group commit: {med['limit curve']['put']['cpu_us'].get('rows/txn', 0):.1f} rows per "
                 f"transaction; dynq's idle nodes meanwhile: {rat['dynq_idle_nodes_us_per_limit_op']:.1f} µs per limit op")
    for name, v in out.get("variants", {}).items():
        lines.append(f"variant {name} vs dynq (same run):")
        for op in ("put", "get"):
            x = v[op]
            lines.append(f"  {op}s x{x['ops_s_over_dynq']:.2f} (median of per-round ratios x{x['per_round_median']:.2f});"
                         f" client CPU {x['client_cpu_us']:.0f} vs {x['dynq_client_cpu_us']:.0f} µs/op;"
                         f" nodes {x['nodes_cpu_us']:.0f} vs {x['dynq_nodes_cpu_us']:.0f} µs/op;"
                         f" p99 {x['p99_ms']:.2f} vs {x['dynq_p99_ms']:.2f} ms")
    ol = out.get("open_loop")
    if ol:
        lines.append(f"open loop (dynq, {ol['arrival']} arrivals, {ol['seconds']} s per point, latency from the "
                     f"intended start; ratios over the lone-request p50):")
        for op in ("put", "get"):
            o = ol[op]
            lines.append(f"  {op}s: peak {o['peak_ops_s']:.0f}/s (median of the rounds), lone p50 {o['lone_p50_ms']:.2f} ms "
                         f"(measured just before the curve; {o['lone_p50_rounds_ms']:.2f} ms in the rounds)")
            for p in o["points"]:
                lines.append(f"    {p['fraction']:>4.0%} {p['target_rate']:>7.0f}/s (got {p['achieved_rate']:>7.0f}): "
                             f"p50 {p['p50_ms']:6.2f}  p99 {p['p99_ms']:7.2f} (x{p['p99_over_lone_p50']:.1f})  "
                             f"p99.9 {p['p999_ms']:7.2f} (x{p['p999_over_lone_p50']:.1f}) ms  late {p['late']}"
                             f"  failed {p['failed']}")
                if "server_coordinated" in p:
                    srv = p["server_coordinated"]
                    lines.append(f"         server-coordinated: p50 {srv['p50_ms']:6.2f}  p99 {srv['p99_ms']:7.2f}  "
                                 f"p99.9 {srv['p999_ms']:7.2f} ms; client p99 / server p99 "
                                 f"x{p['client_p99_over_server_p99']:.2f} (bound 0.7)")
            if "limit" in o:
                lim = o["limit"]
                lines.append(f"    the limit on the same schedules (peak {lim['peak_ops_s']:.0f}/s, lone p50 "
                             f"{lim['lone_p50_ms']:.2f} ms):")
                for p in lim["points"]:
                    lines.append(f"      {p['fraction']:>4.0%} {p['target_rate']:>7.0f}/s: p50 {p['p50_ms']:6.2f}  "
                                 f"p99 {p['p99_ms']:7.2f} (x{p['p99_over_lone_p50']:.1f})  p99.9 {p['p999_ms']:7.2f} "
                                 f"(x{p['p999_over_lone_p50']:.1f}) ms  failed {p['failed']}")
            h = o["at_half"]
            lines.append(f"    at 50%: p99 x{h['p99_over_lone_p50']:.1f} (bound 4), p99.9 x{h['p999_over_lone_p50']:.1f}"
                         f" (bound 10): {'within' if h['within_bounds'] else 'NOT within'} the bounds")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--lone", type=int, default=500, help="requests of each kind sent one at a time")
    parser.add_argument("--open-seconds", type=float, default=4.0, help="seconds per open-loop point")
    parser.add_argument("--no-open-loop", action="store_true")
    parser.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                        help="open-loop schedule: Poisson gaps (independent users), or a fixed interval "
                             "(wrk2's and YCSB's target rate)")
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                        help="also measure this variant of dynq in the same rounds (repeatable): "
                             + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1 or args.keys < args.lone or args.lone < 1:
        parser.error("need at least one round and --keys >= --lone >= 1")
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="dynq-vs-limit-") as tmp:
        out = run(args, Path(tmp))
    print(json.dumps(out, indent=2) if args.json else text(out))


if __name__ == "__main__":
    main()
