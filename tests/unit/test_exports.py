"""The client's public surface, and its independence from the node package."""

from __future__ import annotations

import subprocess
import sys

import dynq_client


def test_public_names_are_exported() -> None:
    """Everything in __all__ exists, and the names the docs promise are in it."""
    for name in dynq_client.__all__:
        assert hasattr(dynq_client, name), name
    assert {"Client", "AsyncClient", "GetResult", "DynqError", "QuorumError", "Timeout", "InvalidRequest"} <= set(
        dynq_client.__all__
    )


def test_every_public_error_is_a_dynq_error() -> None:
    """One hierarchy: every exported exception derives from DynqError."""
    for name in dynq_client.__all__:
        obj = getattr(dynq_client, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, dynq_client.DynqError), name


def test_client_does_not_import_the_node_or_its_dependencies() -> None:
    """`pip install ./client` alone must work: importing it pulls in no dynq, apsw or click."""
    code = (
        "import sys, dynq_client, dynq_client.client;"
        "bad = [m for m in ('dynq', 'apsw', 'click') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
