"""The two flavours of the hot modules (issue 15): compiled by mypyc (``DYNQ_MYPYC=1``
builds) or pure Python. CI runs the unit tests under each (scripts/test); these tests pin
that the flavour under test is the one CI built, and that the imported modules - compiled
or not - compute exactly what their Python source computes, on random inputs. Under the
pure flavour the comparison is of the source with itself: the same assertions, trivially
true, so one test file serves both runs."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynq.cli.common import NODE_HOT, flavour
from dynq_client import protocol, ring, versions
from dynq_client.flavour import CLIENT_HOT, compiled_modules, describe

from dynq_client.versions import VersionedObject

from .test_versions import History, history_and_objects


def source_of(name: str) -> ModuleType:
    """Module ``name`` loaded afresh from its .py file (pure Python, whatever the flavour)."""
    module = importlib.import_module(name)
    path = Path(module.__file__ or "")
    source = path.with_name(name.rsplit(".", 1)[1] + ".py")
    spec = importlib.util.spec_from_file_location(f"{name}_source", source)
    assert spec is not None and spec.loader is not None
    pure = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pure  # dataclasses look their module up
    spec.loader.exec_module(pure)
    return pure


PURE_VERSIONS = source_of("dynq_client.versions")
PURE_PROTOCOL = source_of("dynq_client.protocol")
PURE_RING = source_of("dynq_client.ring")


def test_the_flavour_is_the_one_that_was_built() -> None:
    """DYNQ_EXPECT_COMPILED (set by scripts/test for each run) names the flavour under test:
    a compiled build that silently fell back to pure Python fails here."""
    flags = compiled_modules(CLIENT_HOT + NODE_HOT)
    assert describe(CLIENT_HOT + NODE_HOT) == flavour()
    assert flavour() in ("yes", "no") or flavour().startswith("partial (")
    expected = os.environ.get("DYNQ_EXPECT_COMPILED")
    if expected is not None:
        assert flavour() == expected, flags


@settings(max_examples=100, deadline=None)
@given(history_and_objects(2))
def test_versions_merge_and_lww_agree_with_the_source(ho: tuple[History, list[VersionedObject]]) -> None:
    """merge, last_write_wins, encode and decode: byte-identical results to the .py source."""
    _, (a, b) = ho
    ea, eb = versions.encode_object(a), versions.encode_object(b)
    pa, pb = PURE_VERSIONS.decode_object(ea), PURE_VERSIONS.decode_object(eb)
    merged = versions.merge(a, b)
    assert versions.encode_object(merged) == PURE_VERSIONS.encode_object(PURE_VERSIONS.merge(pa, pb))
    assert (versions.encode_object(versions.last_write_wins(merged))
            == PURE_VERSIONS.encode_object(PURE_VERSIONS.last_write_wins(PURE_VERSIONS.merge(pa, pb))))
    assert versions.descends(merged.clock, a.clock) and PURE_VERSIONS.descends(dict(merged.clock), dict(pa.clock))


@settings(max_examples=50, deadline=None)
@given(history_and_objects(1), st.sampled_from(("a", "b", "z")), st.one_of(st.none(), st.binary(max_size=8)),
       st.integers(0, 2**41))
def test_versions_update_agrees_with_the_source(ho: tuple[History, list[VersionedObject]], actor: str,
                                                value: bytes | None, now_ms: int) -> None:
    """A coordinator's update mints the same dot and keeps the same siblings."""
    _, (local,) = ho
    context = dict(local.clock)
    pure_local = PURE_VERSIONS.decode_object(versions.encode_object(local))
    assert (versions.encode_object(versions.update(local, context, actor, value, now_ms))
            == PURE_VERSIONS.encode_object(PURE_VERSIONS.update(pure_local, context, actor, value, now_ms)))


WIRE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.binary(max_size=16),
                              st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=4), inner, max_size=4)),
                    max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.text(min_size=1, max_size=8), st.dictionaries(st.text(max_size=4), WIRE, max_size=4))
def test_protocol_frames_agree_with_the_source(req_id: int, op: str, body: dict[str, Any]) -> None:
    """Requests encode to the same bytes and decode to the same request."""
    frame = protocol.encode_request(req_id, op, body)
    assert frame == PURE_PROTOCOL.encode_request(req_id, op, body)
    got, pure = protocol.decode_request(frame), PURE_PROTOCOL.decode_request(frame)
    assert (got.id, got.op, got.body) == (pure.id, pure.op, pure.body)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 7), st.sampled_from((8, 16, 64)), st.lists(st.binary(max_size=12), min_size=1, max_size=20))
def test_ring_placement_agrees_with_the_source(members: int, q: int, keys: list[bytes]) -> None:
    """Claims and preference lists (any n up to the members) match the source's."""
    ms = [ring.Member(f"n{i}", f"tcp://n{i}:7000") for i in range(members)]
    pure_ms = [PURE_RING.Member(f"n{i}", f"tcp://n{i}:7000") for i in range(members)]
    n = min(3, members)
    mine, pure = ring.new_ring(ms, q, n), PURE_RING.new_ring(pure_ms, q, n)
    assert mine.owners == pure.owners
    for key in keys:
        for k in range(1, members + 1):
            a, b = mine.preference_list_for(key, k), pure.preference_list_for(key, k)
            assert (a.partition, a.primaries, a.fallbacks) == (b.partition, b.primaries, b.fallbacks)
