"""The admin API's pure parts: the history ring buffer, the tokens, HTTP request parsing,
the views built from op replies, the [http] config, and in-process op calls."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from pathlib import Path

import pytest
from dynq_client.errors import InvalidRequest, Timeout, UnknownOp
from dynq_client.ring import Member

from dynq.cluster.membership import ClusterState, Transfer, initial_state
from dynq.config import ConfigError, parse_config, render_config
from dynq.ops import console_views as views
from dynq.ops.api_tokens import TokenError, Tokens, load_or_create, tokens_for
from dynq.ops.history import History, quantile_of
from dynq.ops.http import HttpError, parse_head
from dynq.ops.metrics import BUCKETS, Histogram
from dynq.server.local_call import LocalCaller

MINIMAL = {"node": {"name": "n1", "listen": "tcp://127.0.0.1:7100", "data_dir": "/tmp/x"}}


# --- history -------------------------------------------------------------------------------------

def test_history_measures_each_interval_not_the_whole_past() -> None:
    """Rates and p99 come from the difference of two samples: a slow past does not leak in."""
    hist = {"put": Histogram()}
    history = History(interval_s=5, capacity=3)
    for _ in range(100):
        hist["put"].observe(2.0)  # a slow past
    assert history.sample(100.0, hist, {}, 0, 0) is None  # the baseline
    for _ in range(50):
        hist["put"].observe(0.0004)
    point = history.sample(105.0, hist, {"siblings": 2, "value_too_large": 1}, 4, 7)
    assert point is not None
    assert point.ops_per_s == {"put": 10.0} and point.p99_ms == {"put": 0.5}
    assert (point.errors, point.refused_siblings, point.refused_size, point.sibling_warnings,
            point.hints_pending) == (3, 2, 1, 4, 7)
    idle = history.sample(110.0, hist, {"siblings": 2, "value_too_large": 1}, 4, 0)
    assert idle is not None and idle.ops_per_s == {} and idle.errors == 0


def test_history_keeps_at_most_capacity_points() -> None:
    history = History(interval_s=1, capacity=3)
    for t in range(10):
        history.sample(float(t), {}, {}, 0, 0)
    wire = history.to_wire()
    assert [p["t"] for p in wire["points"]] == [7.0, 8.0, 9.0] and wire["capacity"] == 3


def test_quantile_of_bucket_counts() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    assert quantile_of(counts, 0.99) is None
    counts[0], counts[-1] = 98, 2
    assert quantile_of(counts, 0.5) == BUCKETS[0] and quantile_of(counts, 0.99) == float("inf")


# --- tokens --------------------------------------------------------------------------------------

def test_tokens_are_generated_private_and_reused(tmp_path: Path) -> None:
    """A missing token file is created with 0600 and 256 random bits; the next load reads it."""
    tokens = tokens_for(tmp_path, None, None)
    again = tokens_for(tmp_path, None, None)
    assert tokens == again and tokens.read != tokens.admin and len(tokens.admin) >= 40
    for name in ("http-read.token", "http-admin.token"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_token_scopes_and_refusals(tmp_path: Path) -> None:
    tokens = Tokens("r" * 20, "a" * 20)
    assert (tokens.scope_of("a" * 20), tokens.scope_of("r" * 20)) == ("admin", "read")
    assert tokens.scope_of(None) is None and tokens.scope_of("x" * 20) is None and tokens.scope_of("") is None
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(TokenError, match="at least"):
        load_or_create(tmp_path / "short")
    (tmp_path / "same").write_text("s" * 30)
    with pytest.raises(TokenError, match="separately"):
        Tokens.load(tmp_path / "same", tmp_path / "same")


def test_nodes_racing_to_create_a_token_file_all_read_one_whole_token(tmp_path: Path) -> None:
    """`dynq up` starts its nodes at once and they share the token files: every racer
    gets the same full token, none reads a half-written file (CI saw "must be at least
    16 characters" when the file was created empty and written after), no temp file stays."""
    import multiprocessing

    path = tmp_path / "http" / "http-read.token"
    for _ in range(5):  # bounded: five races of eight processes
        if path.exists():
            path.unlink()
        with multiprocessing.get_context("fork").Pool(8) as pool:
            tokens = pool.map(load_or_create, [path] * 8)
        assert len(set(tokens)) == 1 and len(tokens[0]) >= 16
        assert path.read_text().strip() == tokens[0]
        assert sorted(p.name for p in path.parent.iterdir()) == ["http-read.token"]


# --- HTTP parsing --------------------------------------------------------------------------------

def test_parse_head_reads_method_path_query_headers() -> None:
    method, path, query, headers = parse_head(
        b"GET /api/v1/inspect?key=a%20b&x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer T")
    assert (method, path, query) == ("GET", "/api/v1/inspect", {"key": "a b", "x": "1"})
    assert headers == {"host": "x", "authorization": "Bearer T"}


@pytest.mark.parametrize("head", [b"GARBAGE", b"GET /x", b"GET x HTTP/1.1", b"GET /x SPDY/3",
                                  b"GET /../etc/passwd HTTP/1.1", b"GET /a HTTP/1.1\r\nno colon",
                                  b"GET /a HTTP/1.1\r\n bad: header", b"G3T /a HTTP/1.1"])
def test_parse_head_refuses_malformed_requests_with_400(head: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.status == 400


# --- views ---------------------------------------------------------------------------------------

def three() -> ClusterState:
    return initial_state([Member(f"n{i}", f"tcp://127.0.0.1:{7100 + 10 * i}") for i in (1, 2, 3)], q=16, n=3)


def test_members_view_shows_a_node_that_did_not_answer_as_down() -> None:
    state = three()
    stats = {"n1": {"peers": {"n2": "up", "n3": "down"}, "keys": 5, "hints_pending_total": 2, "hints_pending": {"n3": 2},
                    "anti_entropy": {"horizon_s": 3.0}},
             "n2": {"peers": {}, "keys": 5}, "n3": Timeout("n3: no answer")}
    rows = {r["name"]: r for r in views.members_view(state, stats, "n1")}
    assert rows["n1"]["health"] == "self" and rows["n1"]["hints_pending"] == 2
    assert rows["n3"]["status"] == "down" and "no answer" in rows["n3"]["error"] and rows["n3"]["health"] == "down"
    assert sum(r["partitions"] for r in rows.values()) == 16
    members = list(rows.values())
    empty = {"transfers": []}
    alarms = views.alarms_view(members, empty, {"nodes": {}}, views.hints_view(stats), stats, {})
    assert alarms[0]["kind"] == "node_down" and alarms[0]["node"] == "n3"
    assert any(a["kind"] == "hints_pending" for a in alarms)


def test_transfers_view_joins_pending_transfers_with_their_progress() -> None:
    state = three()
    moving = ClusterState(state.ring, state.ring, (Transfer(3, "n1", "n2"), Transfer(5, "n3", "n2")), planned=2)
    replies: dict[str, views.Answer] = {
        "n1": {"progress": [{"t": [3, "n1", "n2"], "total": 200, "sent": 50, "bytes": 1000, "retries": 4,
                             "state": "streaming", "last_error": "timeout: n2 did not answer"}]},
        "n3": Timeout("n3 down"),
    }
    view = views.transfers_view(moving, replies)
    rows = {r["partition"]: r for r in view["transfers"]}
    assert rows[3]["percent"] == 25 and rows[3]["last_error"].startswith("timeout")
    assert rows[5]["state"] == "source unreachable" and "n3 down" in rows[5]["last_error"]
    assert view["pending"] == 2 and set(view["unreachable"]) == {"n3"}
    alarms = views.alarms_view([], view, {"nodes": {}}, {"total": 0, "by_target": {}}, {}, {})
    assert {a["kind"] for a in alarms} == {"transfer_stuck"} and len(alarms) == 2


def test_anti_entropy_view_horizon_is_the_oldest_newest_pass() -> None:
    state = three()
    parts = {str(p): {"last_exchange_ms": 1000_000} for p in range(16)}
    stats: dict[str, views.Answer] = {"n1": {"anti_entropy": {"partitions": parts, "enabled": True}},
                                      "n2": {"anti_entropy": {"partitions": {"0": {"last_exchange_ms": 1010_000}}}}}
    view = views.anti_entropy_view(state, stats, now=1100.0)
    assert view["partitions"]["0"]["age_s"] == 90.0 and view["consistency_horizon_s"] == 100.0
    never = views.anti_entropy_view(state, {"n2": stats["n2"]}, now=1100.0)
    assert never["consistency_horizon_s"] is None


def test_ring_view_marks_moves() -> None:
    state = three()
    four = state.ring.with_members(list(state.ring.members) + [Member("n4", "tcp://127.0.0.1:7140")])
    moving = ClusterState(state.ring, four, (Transfer(1, "n1", "n4"),), planned=1)
    view = views.ring_view(moving)
    assert view["transition"] and view["partitions"][1]["transfers"] == [["n1", "n4"]]
    assert "next_owner" in view["partitions"][0] and sum(view["owned_after"].values()) == 16


# --- config --------------------------------------------------------------------------------------

def test_http_is_off_by_default_and_loopback_only_unless_meant() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.http_port == 0 and cfg.http_host == "127.0.0.1"
    with pytest.raises(ConfigError, match="http.host"):
        parse_config(dict(MINIMAL, http={"port": 7102, "host": "0.0.0.0"}))
    remote = parse_config(dict(MINIMAL, http={"port": 7102, "host": "0.0.0.0", "allow_remote": True}))
    assert remote.http_host == "0.0.0.0" and remote.http_allow_remote
    with pytest.raises(ConfigError, match="http.nope"):
        parse_config(dict(MINIMAL, http={"nope": 1}))


def test_rendered_http_section_round_trips(tmp_path: Path) -> None:
    text = render_config(name="n1", listen="tcp://127.0.0.1:7100", data_dir=".", members=[], http_port=7102,
                         http_tokens_dir=str(tmp_path))
    (tmp_path / "n1.toml").write_text(text)
    from dynq.config import load_config

    cfg = load_config(tmp_path / "n1.toml")
    assert cfg.http_port == 7102 and cfg.http_read_token_file == tmp_path / "http-read.token"


# --- in-process calls ----------------------------------------------------------------------------

def test_local_caller_runs_the_handler_and_returns_its_reply_or_error() -> None:
    """The same handler table the ROUTER dispatches to; replies and errors as on the wire."""
    from dynq_client.protocol import Request

    from dynq.server.responder import Responder

    def echo(responder: Responder, req: Request) -> None:
        responder.ok({"got": req.body})

    def bad(responder: Responder, req: Request) -> None:
        raise InvalidRequest("nope")

    def later(responder: Responder, req: Request) -> None:
        asyncio.get_running_loop().call_later(0.01, responder.ok, {"late": True})

    def never(responder: Responder, req: Request) -> None:
        pass

    async def run() -> None:
        caller = LocalCaller(asyncio.get_running_loop(), {"echo": echo, "bad": bad, "later": later, "never": never})
        assert await caller.call("echo", {"a": b"x"}, 1.0) == {"got": {"a": b"x"}}
        assert await caller.call("later", {}, 1.0) == {"late": True}
        with pytest.raises(InvalidRequest, match="nope"):
            await caller.call("bad", {}, 1.0)
        with pytest.raises(UnknownOp):
            await caller.call("missing", {}, 1.0)
        with pytest.raises(Timeout):
            await caller.call("never", {}, 0.01)
        assert caller.stats.errors["invalid"] == 1

    asyncio.run(run())


def test_the_inspector_shows_a_typed_state_and_leaves_objects_alone() -> None:
    """A set's state shows as its type, context, elements and dots; anything that is not a
    typed state (an object's bytes, no bytes) is None, so the caller decodes it as an object."""
    from dynq_client import crdt

    from dynq.ops.console_views import typed_state_view

    state = crdt.join(crdt.bottom("set"), crdt.apply_op(crdt.bottom("set"), ["add", [b"x", b"y"]], "n1", 0))
    view = typed_state_view(crdt.encode_state(state))
    assert view is not None and view["datatype"] == "set" and view["value"] == ["x", "y"]
    assert view["dots"] >= 1 and view["context"]["vv"] and view["context"]["cloud"] == 0
    assert "expires_ms" not in view
    expiring = typed_state_view(crdt.encode_state(dataclasses.replace(state, expires_ms=1_700_000_000_000)))
    assert expiring is not None and expiring["expires_ms"] == 1_700_000_000_000
    assert typed_state_view(b"\x93\x80\x80\x90") is None and typed_state_view(None) is None
