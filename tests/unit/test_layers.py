"""The package's layering, read from the imports of every module (ast, no import runs).

* The pure modules and storage import no dynq module outside their own set.
* No service (kv, cluster, repair, server) imports ``dynq.node``: they meet the node at
  the ports in ``dynq.server.ports``. Only the composition root's callers import it.
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

SERVICES = ("dynq.server.", "dynq.kv.", "dynq.cluster.", "dynq.repair.")

NODE_IMPORTERS = {"dynq.cli", "dynq.localcluster"}
"""Besides the services' rule: who may build a node (the CLI and the local cluster)."""

KNOWN_NODE_IMPORTS: set[tuple[str, str]] = {
    # Step 1 of the redesign: these services still take the whole Node (to go in step 5).
    ("dynq.repair.anti_entropy", "dynq.node"),
    ("dynq.repair.hinted_handoff", "dynq.node"),
    ("dynq.cluster.transfers", "dynq.node"),
}


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


def test_only_the_composition_roots_callers_import_the_node() -> None:
    """Services meet the node at ports, never at ``dynq.node`` itself."""
    offenders = {(name, "dynq.node") for name, deps in GRAPH.items()
                 if "dynq.node" in deps and name not in NODE_IMPORTERS}
    assert offenders <= KNOWN_NODE_IMPORTS, f"new imports of dynq.node: {sorted(offenders - KNOWN_NODE_IMPORTS)}"
    assert all(name.startswith(SERVICES) for name, _ in KNOWN_NODE_IMPORTS)


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
    """Apart from the known edges into dynq.node (step 5 removes them), no circles."""
    graph = {name: {t for t in deps if (name, t) not in KNOWN_NODE_IMPORTS} for name, deps in GRAPH.items()}
    assert cycles(graph) == []
