"""Where a node's and the client's CPU goes per put and per get, by stage (issue 15).

    python bench/stages.py [--seconds 12] [--rate 200] [--concurrency 32] [--json]

Starts a 3-node cluster with `dynq up`'s defaults (CURVE, N=3 R=2 W=2) in a temporary
directory and drives it with `dynq bench` in a subprocess (workload w - inserts - for
puts; workload c, uniform, over 10k loaded keys for gets; ``--concurrency`` in flight).
In the steady middle of each phase it samples node n1 and the bench process with py-spy
(``--rate`` Hz, native frames, non-idle samples only, one stack per thread; samples whose
innermost frame is fsync or poll are set aside: py-spy counts a thread blocked in fsync as
active, but it uses no CPU there) and reads each thread's
CPU from /proc/PID/task/TID/stat, so that:

* the **event-loop thread**'s CPU µs per op (exact, from /proc) is split by the share of
  its py-spy samples in each stage (sampled: a few % of noise);
* **libzmq's I/O threads** (``ZMQbg/*``: framing, CURVE encryption, the kernel's TCP
  work they do) and **other threads** (the WAL checkpointer) are their own rows, from
  /proc; py-spy cannot see inside native threads.

"Per op" is per client operation: a node serves every put (N=3 on 3 nodes; it coordinates
about a third of them) and about 2 of 3 gets. Stages are assigned from the innermost
frame outwards (the first frame a rule recognises), except that anything under the Merkle
leaf update counts as Merkle leaves. Needs py-spy (``pip install py-spy``) and ptrace
rights on the processes started here.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.limit import exit_on_sigterm  # noqa: E402
from dynq.localcluster import LocalCluster, free_ports  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
Frame = tuple[str, str]  # (function, file)

# (stage, does this frame belong to it?) - tried on each frame from the innermost outwards.
def _lib(f: str, *names: str) -> bool:
    """Is file ``f`` (as py-spy prints it: relative to site-packages or the stdlib) in one of
    these packages?"""
    return any(f.startswith(n) or f"/{n}" in f for n in names)


_RULES: list[tuple[str, Callable[[str, str], bool]]] = [
    ("metrics", lambda fn, f: _lib(f, "dynq/ops/metrics.py", "dynq/ops/stats.py", "dynq/server/stats.py") or fn in ("Responder._finish", "Stats.__init__")),
    ("decode", lambda fn, f: fn in ("decode_request", "decode_reply", "unpackb", "_bounded", "_nested_deeper",
                                     "get_bytes", "get_str", "get_int", "decode_object", "object_from_wire",
                                     "_clock_from_pairs", "decode_reply_object", "decode_context",
                                     "key", "quorum", "deadline_s")),
    ("encode", lambda fn, f: fn in ("encode_reply", "encode_request", "encode_error", "packb", "encode_object",
                                     "object_to_wire", "encode_context")),
    ("version update/merge", lambda fn, f: "dynq_client/versions.py" in f or fn in ("actor_for",
                                                                                    "Storage.next_dot")),
    ("routing", lambda fn, f: "dynq_client/ring.py" in f or "dynq_client/health.py" in f
     or "dynq_client/routing.py" in f or "dynq/cluster/membership.py" in f
     or fn in ("choose_targets", "KvService.is_up", "KvService._forward_if_not_primary", "sloppy_targets")),
    ("storage statements", lambda fn, f: _lib(f, "dynq/store/", "dynq/kv/local.py")),
    ("zmq send/recv", lambda fn, f: _lib(f, "zmq/", "libzmq") or fn in ("_user_id", "RequestServer.send_reply", "RequestServer._check_router",
                                                           "RequestMux._send") or "dynq/security.py" in f),
    ("coordination/handlers", lambda fn, f: _lib(f, "dynq/kv/", "dynq/server/", "dynq/node.py", "dynq_client/quorum.py",
                                                 "dynq_client/client.py", "dynq_client/transport.py")),
    ("background (gossip, anti-entropy, handoff)", lambda fn, f: _lib(f, "dynq/cluster/", "dynq/repair/")),
    ("bench driver (load generator)", lambda fn, f: "dynq/bench.py" in f or f.startswith("random.py")),
    ("loop overhead (asyncio)", lambda fn, f: _lib(f, "asyncio/", "selectors.py", "heapq")),
    ("tenacity, logging", lambda fn, f: _lib(f, "tenacity/", "logging/")),
]
OTHER = "other (interpreter, unattributed)"
WAITING = "waiting (fsync, poll): not CPU"
_WAIT_LEAVES = {"fdatasync", "fsync", "epoll_wait", "poll", "__poll", "select", "futex", "nanosleep",
                "clock_nanosleep", "pthread_cond_wait", "pthread_cond_timedwait", "__futex_abstimed_wait_common"}
_MERKLE = ("PartitionTrees.observe", "PartitionTrees._apply", "PartitionTrees._refresh")
_COMMIT_LINE = re.compile(r"Storage\.flush \(.*storage\.py:(\d+)\)")


def parse_frame(text: str) -> Frame:
    """``func (file:line)`` -> (func, file:line)."""
    m = re.match(r"(.*) \((.*)\)$", text)
    return (m.group(1), m.group(2)) if m else (text, "")


def classify(stack: list[Frame], commit_lines: set[int]) -> str:
    """The stage one sample (frames root first) is in."""
    if stack and stack[-1][0] in _WAIT_LEAVES:
        return WAITING
    names = [fn for fn, _ in stack]
    if any(fn in _MERKLE for fn in names) or any("dynq/repair/merkle.py" in f or "dynq/repair/trees.py" in f for _, f in stack):
        return "Merkle leaves"
    for fn, f in reversed(stack):
        if fn == "Storage.flush" and f.rsplit(":", 1)[-1].isdigit() and int(f.rsplit(":", 1)[-1]) in commit_lines:
            return "SQLite commit (WAL, fsync)"
        for stage, rule in _RULES:
            if rule(fn, f):
                return stage
    return OTHER


def commit_lines() -> set[int]:
    """Lines of Storage.flush where the transaction commits (the ``with self.conn:``)."""
    text = (Path(__file__).resolve().parent.parent / "dynq" / "store" / "storage.py").read_text().splitlines()
    start = next(i for i, line in enumerate(text) if "def flush(self)" in line)
    return {i + 1 for i in range(start, min(start + 60, len(text))) if text[i].strip() == "with self.conn:"}


def load_samples(path: Path) -> dict[str, collections.Counter[str]]:
    """py-spy raw output (``--threads``): per thread id, stack text -> samples."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        first, _, rest = stack.partition(";")
        per_thread[first][rest] += int(count)
    return per_thread


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) for every live thread of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    for tid_s in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid_s}/stat", "rb") as f:
                data = f.read()
            name = Path(f"/proc/{pid}/task/{tid_s}/comm").read_text().strip()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        out[int(tid_s)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def breakdown(pid: int, samples: Path, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
              ops: float) -> dict[str, Any]:
    """µs per op: the loop thread split by stage, then the other threads."""
    lines = commit_lines()
    per_thread = load_samples(samples)
    main_key = next((k for k in per_thread if k.startswith(f"thread ({pid})")), None)
    if main_key is None and per_thread:  # fall back to the thread with the most samples
        main_key = max(per_thread, key=lambda k: sum(per_thread[k].values()))
    stages: collections.Counter[str] = collections.Counter()
    for stack, n in (per_thread.get(main_key, collections.Counter()) if main_key else {}).items():
        stages[classify([parse_frame(f) for f in stack.split(";")], lines)] += n
    waiting = stages.pop(WAITING, 0)  # py-spy counts a thread blocked in fsync as active: not CPU
    total_samples = sum(stages.values())

    def delta(tid: int) -> float:
        return after[tid][1] - before.get(tid, (after[tid][0], 0.0))[1]

    main_us = delta(pid) * 1e6 / ops if pid in after else 0.0
    zmq_us = sum(delta(t) for t, (name, _) in after.items() if t != pid and name.startswith("ZMQbg")) * 1e6 / ops
    other_us = sum(delta(t) for t, (name, _) in after.items()
                   if t != pid and not name.startswith("ZMQbg")) * 1e6 / ops
    return {
        "loop_thread_us": round(main_us, 1),
        "stages_us": {s: round(main_us * n / total_samples, 1) for s, n in stages.most_common()} if total_samples else {},
        "stages_share": {s: round(n / total_samples, 3) for s, n in stages.most_common()} if total_samples else {},
        "zmq_io_threads_us": round(zmq_us, 1),
        "other_threads_us": round(other_us, 1),
        "total_us": round(main_us + zmq_us + other_us, 1),
        "samples": total_samples,
        "waiting_samples": waiting,
    }


def dynq_cmd() -> list[str]:
    script = Path(sys.executable).parent / "dynq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dynq"]


def profile_phase(cluster: LocalCluster, workload: str, seconds: float, rate: int, concurrency: int,
                  out_dir: Path, records: int, run: int = 0) -> dict[str, Any]:
    """Run one bench phase; profile n1 and the bench client in its middle."""
    keys = cluster.keys_dir
    cmd = dynq_cmd() + ["--key", str(keys / "app.key_secret"), "--server-key", str(keys / "cluster.key"),
                        "bench", "--workload", workload, "--records", str(records), "--no-load",
                        "--distribution", "uniform", "--concurrency", str(concurrency), "--duration", str(seconds),
                        "--value-size", "1024", "--json", "--seed", cluster.seeds[0]]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    node_pid = cluster.nodes["n1"].process.pid  # type: ignore[union-attr]
    window = max(2.0, seconds - 4.0)
    try:
        time.sleep(2.0)  # connect and settle
        targets = {"node n1": node_pid, "client": bench.pid}
        before = {name: thread_cpu(pid) for name, pid in targets.items()}
        spies = {name: subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
             "-d", str(int(window)), "-r", str(rate), "-f", "raw", "--threads", "--native",
             "-o", str(out_dir / f"{workload}-{name.replace(' ', '_')}-{run}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in targets.items()}
        t0 = time.monotonic()
        for spy in spies.values():
            spy.wait(window + 30)
        elapsed = time.monotonic() - t0
        after = {name: thread_cpu(pid) for name, pid in targets.items()}
        stdout, _ = bench.communicate(timeout=seconds + 60)
    finally:
        if bench.poll() is None:
            os.kill(bench.pid, signal.SIGTERM)
            bench.wait(10)
    result = json.loads(stdout)
    ops_s = result["total"]["ops_s"]
    ops = ops_s * elapsed
    return {"workload": workload, "ops_s": ops_s, "errors": result["total"]["errors"],
            "window_s": round(elapsed, 2),
            **{name: breakdown(pid, out_dir / f"{workload}-{name.replace(' ', '_')}-{run}.txt", before[name], after[name], ops)
               for name, pid in targets.items()}}


def median_phases(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Cell by cell medians of several runs' phases (a stage missing from a run counts 0)."""
    out: dict[str, Any] = {}
    for op in runs[0]:
        phases = [r[op] for r in runs]
        merged: dict[str, Any] = {"ops_s": statistics.median(p["ops_s"] for p in phases),
                                  "errors": sum(p["errors"] for p in phases)}
        for who in ("node n1", "client"):
            cells = [p[who] for p in phases]
            stages = {s for c in cells for s in c["stages_us"]}
            merged[who] = {k: round(statistics.median(c[k] for c in cells), 1)
                           for k in ("loop_thread_us", "zmq_io_threads_us", "other_threads_us", "total_us",
                                     "samples", "waiting_samples")}
            merged[who]["stages_us"] = dict(sorted(
                ((s, round(statistics.median(c["stages_us"].get(s, 0.0) for c in cells), 1)) for s in stages),
                key=lambda kv: -kv[1]))
        out[op] = merged
    return out


def text(out: dict[str, Any]) -> str:
    lines = []
    stage_names: list[str] = []
    for phase in out["phases"].values():
        for who in ("node n1", "client"):
            for s in phase[who]["stages_us"]:
                if s not in stage_names:
                    stage_names.append(s)
    cols = [(op, who) for op in out["phases"] for who in ("node n1", "client")]
    lines.append(f"CPU µs per op, median of {out['runs']} runs ({out['rate']} Hz py-spy on the loop thread, "
                 f"/proc for every thread); "
                 + ", ".join(f"{op}: {p['ops_s']:.0f} ops/s" for op, p in out["phases"].items()))
    lines.append(f"  {'stage':<28}" + "".join(f"{op + ' ' + who:>16}" for op, who in cols))
    for s in stage_names:
        lines.append(f"  {s:<28}" + "".join(f"{out['phases'][op][who]['stages_us'].get(s, 0.0):>16.1f}"
                                             for op, who in cols))
    for row, key in (("= loop thread", "loop_thread_us"), ("libzmq I/O threads", "zmq_io_threads_us"),
                     ("other threads (checkpointer)", "other_threads_us"), ("= process total", "total_us")):
        lines.append(f"  {row:<28}" + "".join(f"{out['phases'][op][who][key]:>16.1f}" for op, who in cols))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each bench phase")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="put and get phases, each this many times")
    parser.add_argument("--keep", type=Path, default=None, help="copy the raw py-spy files here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="dynq-stages-") as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root / "dynq", [f"tcp://127.0.0.1:{p}" for p in free_ports(3)], security="curve")
        out: dict[str, Any] = {"rate": args.rate, "runs": args.runs, "phases": {}}
        runs: list[dict[str, Any]] = []
        try:
            cluster.start_all()
            cluster.wait_ready(timeout=60)
            keys = cluster.keys_dir
            subprocess.run(dynq_cmd() + ["--key", str(keys / "app.key_secret"), "--server-key",
                                         str(keys / "cluster.key"), "bench", "--workload", "c", "--records",
                                         str(args.records), "--duration", "0.5", "--value-size", "1024",
                                         "--seed", cluster.seeds[0]],
                           check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in range(args.runs):
                runs.append({"put": profile_phase(cluster, "w", args.seconds, args.rate, args.concurrency, root,
                                                  args.records, n),
                             "get": profile_phase(cluster, "c", args.seconds, args.rate, args.concurrency, root,
                                                  args.records, n)})
                print(f"run {n + 1}: put {runs[-1]['put']['ops_s']:.0f}/s, get {runs[-1]['get']['ops_s']:.0f}/s",
                      file=sys.stderr, flush=True)
            out["phases"] = median_phases(runs)
            out["each_run"] = runs
        finally:
            cluster.stop_all()
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for f in root.glob("*.txt"):
                    shutil.copy(f, args.keep / f.name)
    print(json.dumps(out, indent=2) if args.json else text(out))


if __name__ == "__main__":
    main()
