"""No clock, randomness, thread, executor or ZeroMQ context of the node and the client
bypasses the injected environment (:mod:`dynq.env`): read from the AST, no import runs.

A call listed in ``BANNED`` is allowed only in the module that is the seam for it
(``ALLOWED``, each with its reason). Event-loop time (``loop.time()``, ``asyncio.sleep``)
is fine: the simulator's loop makes it virtual. ``perf_counter`` is fine: it only times
work for stats and never decides anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = (REPO / "dynq", REPO / "client" / "dynq_client")
OUT_OF_SCOPE = ("dynq/sim/", "dynq/cli/", "dynq/bench.py", "dynq/localcluster.py", "dynq/__main__.py")
"""Not node or client runtime: the simulator itself, the CLI, the benchmark, the local cluster."""

BANNED = {
    "time.time", "time.monotonic", "time.time_ns", "time.monotonic_ns", "time.sleep",
    "secrets.token_hex", "secrets.token_bytes", "secrets.randbits", "secrets.choice", "os.urandom",
    "random.random", "random.randint", "random.choice", "random.shuffle", "random.uniform", "random.Random",
    "random.getrandbits", "random.sample", "random.SystemRandom",
    "zmq.Context", "zmq.Context.instance", "zmq.asyncio.Context",
    "threading.Thread", "threading.Timer", "asyncio.to_thread", "run_in_executor",
    "tenacity.stop_after_delay",
}

ALLOWED = {
    "dynq/env.py": {"time.time", "time.monotonic", "random.SystemRandom", "zmq.Context"},  # the seam itself
    "dynq/store/storage.py": {"secrets.token_hex"},  # only as the default of the injected token_hex
    "dynq/store/checkpointer.py": {"threading.Thread"},  # production mode; the simulator runs it as a task
    "dynq/server/runtime.py": {"zmq.Context"},  # only as the default of the injected context factory
    "dynq/ops/stats.py": {"time.time"},  # only as the default of the injected wall clock
    "dynq/repair/trees.py": {"time.time"},  # _now_ms, only the default of the injected wall_ms
    "dynq/repair/exchange.py": {"time.monotonic"},  # only the default of RateLimiter's injected clock
    "dynq/kv/listing.py": {"time.monotonic"},  # only the default of the listing Pacer's injected clock
    # the HTTP admin API and console: off unless http_port is set (never in the simulation, like
    # the metrics server); wall-clock stamps for display only (merged from main, not yet routed)
    "dynq/ops/admin_api.py": {"time.time"},
    "dynq/ops/console_views.py": {"time.time"},
    # CURVE/ZAP runs a libzmq-side thread and rate-limits key reloads; not simulated (see SIMULATION.md)
    "dynq/security.py": {"time.monotonic", "threading.Thread"},
    "client/dynq_client/transport.py": {"zmq.Context.instance"},  # default when no context is injected
    # the sync Client's private loop thread; random.Random only when no rng is injected;
    # time.time only as the default of the injected wall clock (expiry of values read)
    "client/dynq_client/client.py": {"threading.Thread", "random.Random", "time.time"},
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return None


def uses(path: Path) -> set[str]:
    """The banned names a module calls, or passes as a value (a default argument, a
    keyword such as ``default_factory=time.time``), with ``from x import y`` resolved to
    ``x.y``. Type annotations (``zmq.Context[Any]``) are not uses."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    values: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            values.append(node.func)
            values.extend(kw.value for kw in node.keywords)
            values.extend(node.args)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            values.extend(node.args.defaults)
            values.extend(d for d in node.args.kw_defaults if d is not None)
    found: set[str] = set()
    for node in values:
        name = _dotted(node)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        if head in aliases:
            name = aliases[head] + (f".{rest}" if rest else "")
        if name in BANNED:
            found.add(name)
        elif name.endswith(".run_in_executor"):
            found.add("run_in_executor")
    return found


def runtime_modules() -> list[str]:
    out = []
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not rel.startswith(OUT_OF_SCOPE):
                out.append(rel)
    return out


def test_the_scan_sees_a_banned_call(tmp_path: Path) -> None:
    """A guard for the test itself: aliases and attribute chains are resolved."""
    probe = tmp_path / "probe.py"
    probe.write_text("import time\nfrom secrets import token_hex\nimport zmq\n"
                     "x = time.time()\ny = token_hex(4)\nc = zmq.Context.instance()\n"
                     "def f(loop):\n    loop.run_in_executor(None, f)\n")
    assert uses(probe) == {"time.time", "secrets.token_hex", "zmq.Context.instance", "run_in_executor"}


@pytest.mark.parametrize("rel", runtime_modules())
def test_no_clock_random_thread_or_context_bypasses_the_env(rel: str) -> None:
    """Node and client modules take time, randomness, threads and sockets from the env."""
    extra = uses(REPO / rel) - ALLOWED.get(rel, set())
    assert not extra, f"{rel} uses {sorted(extra)}: go through dynq.env.Env (or a parameter defaulting to it)"
