"""The package's layering, read from the imports of every module (ast, no import runs).

* The pure modules and storage import no dynq module outside their own set.
* The kernel (``dynq.server``) imports no service; a service (kv, cluster, repair)
  imports another folder's modules only if they are pure: the rest comes through the
  ports in ``dynq.server.ports``.
* Nothing but the CLI and the local cluster imports ``dynq.node`` (the composition root).
* No import circles between dynq modules (``TYPE_CHECKING`` imports count too: a
  circle that only the type checker sees is still two modules that know each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "dynq"

PURE = ("dynq.store.", "dynq.cluster.membership", "dynq.cluster.failure_detector", "dynq.repair.merkle",
        "dynq.kv.write_plan")
"""Pure values and storage: they import nothing of dynq beyond each other."""

SERVICES = ("dynq.kv.", "dynq.cluster.", "dynq.repair.")

NODE_IMPORTERS = {"dynq.cli.nodes", "dynq.localcluster", "dynq.sim.harness"}
"""Besides the services' rule: who may build a node (the CLI, the local cluster, the simulator)."""

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The dynq modules ``name`` imports (packages resolve to their ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # "from pkg import mod" imports the module; "from mod import name" the module
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                       for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t == "dynq" or t.startswith("dynq."))
    out.discard(name)
    return {t for t in out if t in known}


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}
PACKAGES = {name for name, path in modules().items() if path.name == "__init__.py"}  # docstrings only


def test_the_graph_sees_the_package() -> None:
    """A guard for the test itself: it finds the modules and their relative imports."""
    assert "dynq.node" in GRAPH and "dynq.store.storage" in GRAPH
    assert "dynq.store.checkpointer" in GRAPH["dynq.store.storage"]


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith(PURE)))
def test_pure_modules_and_storage_import_no_service(name: str) -> None:
    """Pure modules and storage depend on nothing of dynq but each other."""
    outside = {t for t in GRAPH[name] if not t.startswith(PURE) and t not in PACKAGES}
    assert not outside, f"{name} imports {sorted(outside)}"


SERVER_MAY_IMPORT = ("dynq.server.", "dynq.ops.", "dynq.config", "dynq.security") + PURE
"""The kernel knows no keys, rings or services: besides itself, plumbing and pure values."""


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("dynq.server.")))
def test_the_server_imports_no_service(name: str) -> None:
    """``dynq.server`` (requests in, replies out, peers, supervision) depends on no service."""
    outside = {t for t in GRAPH[name] if not t.startswith(SERVER_MAY_IMPORT) and t not in PACKAGES}
    assert not outside, f"{name} imports {sorted(outside)}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith(SERVICES)))
def test_services_meet_other_services_only_at_ports(name: str) -> None:
    """A module of kv/, cluster/ or repair/ imports from another of those folders only
    its pure modules: everything else it needs comes in through ``dynq.server.ports``."""
    own = name.split(".")[1]
    others = {t for t in GRAPH[name] if t.startswith(SERVICES) and t.split(".")[1] != own
              and not t.startswith(PURE) and not t.startswith("dynq.server.") and t not in PACKAGES}
    assert not others, f"{name} imports {sorted(others)}"


def test_only_the_composition_roots_callers_import_the_node() -> None:
    """Services meet the node at ports, never at ``dynq.node`` itself."""
    offenders = sorted(name for name, deps in GRAPH.items() if "dynq.node" in deps and name not in NODE_IMPORTERS)
    assert offenders == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []
