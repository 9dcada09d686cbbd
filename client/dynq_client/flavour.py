"""Which flavour of the hot modules was imported: compiled by mypyc (the opt-in build,
``DYNQ_MYPYC=1``, issue 15) or pure Python. Both behave the same (CI runs the unit tests
under each); a benchmark figure means something only with its flavour beside it."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

CLIENT_HOT = ("dynq_client.versions", "dynq_client.protocol", "dynq_client.ring", "dynq_client.quorum")
"""The client's modules the opt-in build compiles (client/setup.py's COMPILED)."""


def compiled_modules(names: Iterable[str] = CLIENT_HOT) -> dict[str, bool]:
    """module -> whether it was imported from a compiled extension (not a .py file)."""
    out: dict[str, bool] = {}
    for name in names:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        out[name] = not path.endswith((".py", ".pyc"))
    return out


def describe(names: Iterable[str] = CLIENT_HOT) -> str:
    """``yes`` (all compiled), ``no`` (none) or ``partial (a, b)`` naming the compiled ones."""
    flags = compiled_modules(names)
    done = [name for name, compiled in flags.items() if compiled]
    if len(done) == len(flags):
        return "yes"
    return "partial (" + ", ".join(done) + ")" if done else "no"


__all__ = ["CLIENT_HOT", "compiled_modules", "describe"]
