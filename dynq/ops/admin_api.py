"""The HTTP admin API and the web console of a node (``[http]``, off by default).

Every endpoint is answered by the node's own ops - the handlers the CLI reaches over
ZeroMQ - called in-process for this node (:class:`dynq.server.local_call.LocalCaller`)
and over the node's peer connections for the other members; membership changes go to
the claimant exactly as the CLI's do. Replies are assembled by the pure functions of
:mod:`dynq.ops.console_views`.

Authorisation: ``Authorization: Bearer TOKEN``. ``GET`` endpoints take the read or the
admin token, ``POST`` endpoints the admin token only (:mod:`dynq.ops.api_tokens`). No
token or an unknown one: 401; the read token on a change: 403; bad input: 400; an unknown
path: 404; a wrong method: 405 - each with a JSON body ``{"error", "message", "status"}``.
An error of the op itself maps to 400 (invalid), 409 (the plan changed), 503
(unavailable, e.g. the claimant is down) or 504 (timeout). The static console (``/``,
``/console/*``) holds no data and needs no token: it reads the token from the URL's
fragment (``#token=``), which browsers never send to a server.

=======  ==========================  =====  ==============================================
method   path                        scope  what
=======  ==========================  =====  ==============================================
GET      /api/v1                     read   this list
GET      /api/v1/overview            read   everything below in one reply (the console's)
GET      /api/v1/status              read   members, health as this node sees them, alarms
GET      /api/v1/ring                read   partitions: owner, replicas, pending moves
GET      /api/v1/members             read   members with zone, weight, status, health
GET      /api/v1/plan                read   the staged changes and what committing does
POST     /api/v1/plan/join           admin  ``{"address"}``: stage the node there joining
POST     /api/v1/plan/leave          admin  ``{"node"}``: stage that member leaving
POST     /api/v1/plan/commit         admin  ``{"plan"}`` (optional id): start the change
POST     /api/v1/plan/clear          admin  drop the staged changes
GET      /api/v1/transfers           read   pending transfers, progress, last error
GET      /api/v1/hints               read   hints pending per node and target
GET      /api/v1/anti-entropy        read   horizon and last exchange per partition
GET      /api/v1/alarms              read   nodes down, stuck transfers, siblings, sizes
GET      /api/v1/stats?node=N        read   a node's ``stats`` (default: this node)
GET      /api/v1/history?node=N      read   its last minutes (ring buffer), histograms
GET      /api/v1/inspect?key=K       read   what every replica holds for K (``key_b64=``, ``bucket=``)
=======  ==========================  =====  ==============================================
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.resources
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dynq_client import buckets
from dynq_client import protocol as p
from dynq_client.errors import DynqError, InvalidRequest, Timeout, Unavailable
from dynq_client.protocol import Request, show_bytes
from dynq_client.versions import decode_reply_object

from ..cluster.membership import ClusterState, claimant
from ..config import NodeConfig
from ..server.local_call import LocalCaller
from ..server.peers import PeerLink
from ..server.ports import Handler
from ..server.responder import Responder
from ..server.stats import Stats
from . import console_views as views
from .api_tokens import Tokens
from .history import History
from .http import HttpError, HttpRequest, HttpResponse, serve_http
from .metrics import BUCKETS, Latencies

log = logging.getLogger(__name__)

OP_NODE_HISTORY = "node_history"  # (peers, admin) this node's ring buffer and latency histograms
OP_CONSOLE = "console"  # (peers, admin) where this node's console is, with its tokens: `dynq console`

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

Route = Callable[[HttpRequest], Awaitable[Any]]


def load_static() -> dict[str, bytes]:
    """The console's files, shipped as package data in ``dynq/ops/console/``."""
    files: dict[str, bytes] = {}
    root = importlib.resources.files("dynq.ops") / "console"
    for entry in root.iterdir():
        if entry.is_file() and "." + entry.name.rpartition(".")[2] in STATIC_TYPES:
            files[entry.name] = entry.read_bytes()
    return files


def http_status(error: DynqError) -> int:
    """The HTTP status of an op's error."""
    if isinstance(error, Timeout):
        return 504
    if isinstance(error, Unavailable):
        return 503
    if isinstance(error, InvalidRequest) and "plan changed" in error.message:
        return 409
    if isinstance(error, InvalidRequest):
        return 400
    return 502


class AdminApi:
    """The console part: history sampling, the two ops, and the HTTP routes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: NodeConfig, local: LocalCaller, peers: PeerLink,
                 *, latencies: Latencies, stats: Stats, hint_count: Callable[[], int], tokens: Tokens | None) -> None:
        self.loop = loop
        self.config = config
        self.name = config.name
        self.local = local  # this node's op handlers, in-process
        self.peers = peers  # the other members' ops
        self.latencies = latencies  # the request server's histograms (the history's source)
        self.stats = stats  # this node's counters (the history's errors and sibling warnings)
        self.hint_count = hint_count  # hints this node holds now
        self.tokens = tokens  # None: the HTTP server is off (the ops still answer)
        self.history = History(config.http_history_interval_s, config.http_history_points)
        self.static = load_static()
        self.timeout_s = config.http_peer_timeout_ms / 1000
        self._consoles: dict[str, str | None] = {}  # member -> its console's URL (None: it serves none)
        self.routes: dict[tuple[str, str], tuple[str, Route]] = {
            ("GET", "/api/v1"): ("read", self.get_index),
            ("GET", "/api/v1/overview"): ("read", self.get_overview),
            ("GET", "/api/v1/status"): ("read", self.get_status),
            ("GET", "/api/v1/ring"): ("read", self.get_ring),
            ("GET", "/api/v1/members"): ("read", self.get_members),
            ("GET", "/api/v1/plan"): ("read", self.get_plan),
            ("POST", "/api/v1/plan/join"): ("admin", self.post_join),
            ("POST", "/api/v1/plan/leave"): ("admin", self.post_leave),
            ("POST", "/api/v1/plan/commit"): ("admin", self.post_commit),
            ("POST", "/api/v1/plan/clear"): ("admin", self.post_clear),
            ("GET", "/api/v1/transfers"): ("read", self.get_transfers),
            ("GET", "/api/v1/hints"): ("read", self.get_hints),
            ("GET", "/api/v1/anti-entropy"): ("read", self.get_anti_entropy),
            ("GET", "/api/v1/alarms"): ("read", self.get_alarms),
            ("GET", "/api/v1/stats"): ("read", self.get_stats),
            ("GET", "/api/v1/history"): ("read", self.get_history),
            ("GET", "/api/v1/inspect"): ("read", self.get_inspect),
        }

    # --- ops ------------------------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {OP_NODE_HISTORY: self.handle_node_history, OP_CONSOLE: self.handle_console}

    def history_reply(self) -> dict[str, Any]:
        return {"name": self.name, "history": self.history.to_wire(), "buckets_s": list(BUCKETS),
                "latency": {op: {"counts": list(h.counts), "count": h.count, "sum_s": round(h.total, 6)}
                            for op, h in sorted(self.latencies.by_op.items())}}

    def handle_node_history(self, responder: Responder, req: Request) -> None:
        responder.ok(self.history_reply())

    def url(self) -> str | None:
        """Where this node's console is (None: [http] is off)."""
        config = self.config
        if not config.http_port or self.tokens is None:
            return None
        host = config.http_host
        if host in ("0.0.0.0", "::", ""):  # bound everywhere: the host the node is known by
            host = config.listen.split("://", 1)[-1].rsplit(":", 1)[0]
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{config.http_port}/"

    def handle_console(self, responder: Responder, req: Request) -> None:
        url = self.url()
        if url is None or self.tokens is None:
            raise InvalidRequest(f"{self.name} serves no admin API or console: set [http] port in its config")
        responder.ok({"name": self.name, "url": url, "read_token": self.tokens.read,
                      "admin_token": self.tokens.admin})

    async def run_history(self) -> None:
        """Sample the counters into the ring buffer, forever (a background service)."""
        interval = self.history.interval_s
        while True:
            self.history.sample(time.time(), self.latencies.by_op, self.stats.errors, self.stats.sibling_warnings,
                                self.hint_count())
            await asyncio.sleep(interval)

    # --- asking the ops -----------------------------------------------------------------------

    async def ask(self, node: str, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """``op`` on ``node``: in-process for this node, over ZeroMQ for another."""
        if node == self.name:
            return await self.local.call(op, body or {}, self.timeout_s)
        return await self.peers.call(node, op, body or {}, self.timeout_s)

    async def ask_all(self, names: list[str], op: str, body: dict[str, Any] | None = None) -> dict[str, views.Answer]:
        """``op`` on every named node at once; a node that fails has its exception."""
        replies = await asyncio.gather(*(self.ask(n, op, body) for n in names), return_exceptions=True)
        out: dict[str, views.Answer] = {}
        for name, reply in zip(names, replies):
            if isinstance(reply, BaseException) and not isinstance(reply, Exception):
                raise reply
            out[name] = reply
        return out

    async def op(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """This node's op, its error as an HTTP error."""
        try:
            return await self.local.call(op, body or {}, self.timeout_s * 2)
        except DynqError as exc:
            raise HttpError(http_status(exc), exc.code, exc.message) from exc

    async def state(self) -> ClusterState:
        return ClusterState.from_wire((await self.op(p.OP_CLUSTER_STATE))["state"])

    # --- HTTP -----------------------------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        if path == "/" or path == "/console" or path.startswith("/console/"):
            return self.serve_static(request, path)
        if not path.startswith("/api/"):
            raise HttpError(404, "not_found", f"no such path {request.path[:100]!r}: the console is at /, "
                                              "the API at /api/v1")
        route = self.routes.get((request.method, path))
        if route is None:
            if any(p_ == path for _, p_ in self.routes):
                allowed = sorted(m for m, p_ in self.routes if p_ == path)
                raise HttpError(405, "method_not_allowed", f"{path} takes {', '.join(allowed)}",
                                {"Allow": ", ".join(allowed)})
            raise HttpError(404, "not_found", f"no endpoint {path[:100]!r}; GET /api/v1 lists them")
        scope, handler = route
        self.authorise(request, scope)
        return HttpResponse.of_json(200, await handler(request))

    def authorise(self, request: HttpRequest, scope: str) -> None:
        assert self.tokens is not None
        auth = request.headers.get("authorization", "")
        kind, _, presented = auth.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="dynq"'}
        if not auth:
            raise HttpError(401, "unauthorized", "this endpoint needs 'Authorization: Bearer TOKEN' (the read or "
                                                 "admin token: dynq console prints a URL with it)", challenge)
        if kind.lower() != "bearer":
            raise HttpError(401, "unauthorized", "use 'Authorization: Bearer TOKEN'", challenge)
        granted = self.tokens.scope_of(presented.strip())
        if granted is None:
            raise HttpError(401, "unauthorized", "unknown token", challenge)
        if scope == "admin" and granted != "admin":
            raise HttpError(403, "forbidden", "this endpoint changes the cluster: it needs the admin token, "
                                              "not the read token")

    def serve_static(self, request: HttpRequest, path: str) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            raise HttpError(405, "method_not_allowed", "the console's files take GET", {"Allow": "GET, HEAD"})
        name = "index.html" if path in ("/", "/console") else path[len("/console/"):]
        body = self.static.get(name)
        if body is None:
            raise HttpError(404, "not_found", f"no console file {name[:100]!r}")
        kind = STATIC_TYPES["." + name.rpartition(".")[2]]
        return HttpResponse(200, body, kind, {"Content-Security-Policy": CSP})

    # --- read endpoints ----------------------------------------------------------------------

    async def get_index(self, request: HttpRequest) -> Any:
        return {"node": self.name, "endpoints": [
            {"method": m, "path": path, "scope": scope} for (m, path), (scope, _) in self.routes.items()]}

    async def _gather(self, with_history: bool) -> dict[str, Any]:
        state = await self.state()
        names = [m.name for m in state.members]
        stats, transfers = await asyncio.gather(self.ask_all(names, p.OP_STATS),
                                                self.ask_all(names, p.OP_TRANSFERS))
        history = await self.ask_all(names, OP_NODE_HISTORY) if with_history else {}
        return {"state": state, "stats": stats, "transfers": transfers, "history": history}

    def _views(self, g: Mapping[str, Any]) -> dict[str, Any]:
        state: ClusterState = g["state"]
        members = views.members_view(state, g["stats"], self.name)
        transfers = views.transfers_view(state, g["transfers"])
        hints = views.hints_view(g["stats"])
        ae = views.anti_entropy_view(state, g["stats"])
        alarms = views.alarms_view(members, transfers, ae, hints, g["stats"], g["history"])
        down = [m["name"] for m in members if m["status"] == "down"]
        return {"node": self.name, "time": time.time(), "version": state.version,
                "claimant": claimant(state),
                "q": state.ring.q, "n": state.ring.n, "down": down,
                "degraded": bool(down) or any(m.get("peers_down") for m in members),
                "members": members, "transfers": transfers, "hints": hints, "anti_entropy": ae, "alarms": alarms}

    async def consoles(self, names: list[str]) -> dict[str, str | None]:
        """Every member's console URL (no tokens), asked once per member and remembered."""
        unknown = [n for n in names if n not in self._consoles]
        for name, answer in (await self.ask_all(unknown, OP_CONSOLE)).items():
            if isinstance(answer, dict):
                self._consoles[name] = str(answer.get("url"))
            elif isinstance(answer, InvalidRequest):  # it serves none
                self._consoles[name] = None
        return {n: self._consoles[n] for n in names if n in self._consoles}

    async def get_overview(self, request: HttpRequest) -> Any:
        g = await self._gather(with_history=True)
        out = self._views(g)
        out["consoles"] = await self.consoles([m.name for m in g["state"].members])
        out["ring"] = views.ring_view(g["state"])
        out["plan"] = await self._plan_or_error()
        out["history"] = {name: (a if isinstance(a, dict) else {"error": views.error_text(a)})
                          for name, a in g["history"].items()}
        return out

    async def get_status(self, request: HttpRequest) -> Any:
        out = self._views(await self._gather(with_history=True))
        out["staged"] = bool((await self._plan_or_error()).get("staged"))
        return {k: out[k] for k in ("node", "time", "version", "claimant", "q", "n", "down", "degraded", "members",
                                    "alarms", "staged")}

    async def get_ring(self, request: HttpRequest) -> Any:
        return views.ring_view(await self.state())

    async def get_members(self, request: HttpRequest) -> Any:
        state = await self.state()
        stats = await self.ask_all([m.name for m in state.members], p.OP_STATS)
        return {"node": self.name, "members": views.members_view(state, stats, self.name)}

    async def _plan_or_error(self) -> dict[str, Any]:
        try:
            return await self.ask(self.name, p.OP_CLUSTER_PLAN)
        except DynqError as exc:
            return {"error": exc.code, "message": exc.message}

    async def get_plan(self, request: HttpRequest) -> Any:
        return await self.op(p.OP_CLUSTER_PLAN)

    async def get_transfers(self, request: HttpRequest) -> Any:
        state = await self.state()
        replies = await self.ask_all([m.name for m in state.members], p.OP_TRANSFERS)
        return views.transfers_view(state, replies)

    async def get_hints(self, request: HttpRequest) -> Any:
        state = await self.state()
        return views.hints_view(await self.ask_all([m.name for m in state.members], p.OP_STATS))

    async def get_anti_entropy(self, request: HttpRequest) -> Any:
        state = await self.state()
        return views.anti_entropy_view(state, await self.ask_all([m.name for m in state.members], p.OP_STATS))

    async def get_alarms(self, request: HttpRequest) -> Any:
        out = self._views(await self._gather(with_history=True))
        return {"node": self.name, "alarms": out["alarms"]}

    async def _node_param(self, request: HttpRequest) -> str:
        node = request.query.get("node") or self.name
        state = await self.state()
        if node not in {m.name for m in state.members} | {self.name}:
            raise HttpError(400, "bad_request", f"{node[:64]!r} is not a member")
        return node

    async def _node_op(self, node: str, op: str) -> dict[str, Any]:
        try:
            return await self.ask(node, op)
        except DynqError as exc:
            raise HttpError(http_status(exc), exc.code, f"{node}: {exc.message}") from exc

    async def get_stats(self, request: HttpRequest) -> Any:
        return await self._node_op(await self._node_param(request), p.OP_STATS)

    async def get_history(self, request: HttpRequest) -> Any:
        return await self._node_op(await self._node_param(request), OP_NODE_HISTORY)

    async def get_inspect(self, request: HttpRequest) -> Any:
        """What every node of the key's preference list holds (as `dynq inspect`)."""
        if "key_b64" in request.query:
            try:
                key = base64.b64decode(request.query["key_b64"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise HttpError(400, "bad_request", f"key_b64 is not base64: {exc}") from exc
        elif "key" in request.query:
            key = request.query["key"].encode()
        else:
            raise HttpError(400, "bad_request", "give the key as ?key=TEXT or ?key_b64=BASE64")
        if not key or len(key) > self.config.limits.max_key_bytes:
            raise HttpError(400, "bad_request", f"the key must be 1 to {self.config.limits.max_key_bytes} bytes")
        state = await self.state()
        body: dict[str, Any] = {"k": key}
        bucket = request.query.get("bucket")
        if bucket:
            props = state.buckets.get(bucket)
            if props is None:
                raise HttpError(404, "not_found", f"no bucket {bucket!r}")
            body["bk"] = props.name
            plist = state.ring.preference_list_for(buckets.storage_key(props.name, key), props.n)
        else:
            plist = state.ring.preference_list_for(key)
        names = list(plist.primaries + plist.fallbacks)
        replies = await self.ask_all(names, p.OP_INSPECT, body)
        rows = []
        for name in names:
            row: dict[str, Any] = {"node": name, "role": "primary" if name in plist.primaries else "fallback"}
            answer = replies[name]
            if isinstance(answer, Exception):
                row["error"] = views.error_text(answer)
            elif (typed := views.typed_state_view(answer.get("ob"))) is not None:
                row["hints"] = answer.get("hints", [])
                row["object"] = typed
            else:
                try:
                    obj = decode_reply_object(answer)
                except DynqError as exc:
                    row["error"] = exc.message
                    obj = None
                row["hints"] = answer.get("hints", [])
                row["object"] = None if obj is None else {
                    "clock": obj.clock,
                    "siblings": [{"dot": f"{s.actor}:{s.counter}", "timestamp_ms": s.timestamp_ms,
                                  "tombstone": s.value is None, "bytes": 0 if s.value is None else len(s.value),
                                  "expires_ms": s.expires_ms or None,
                                  "value": None if s.value is None else show_bytes(s.value)[:200]}
                                 for s in obj.siblings],
                }
            rows.append(row)
        primaries = [r for r in rows if r["role"] == "primary"]
        agree_states = {json.dumps(r.get("object"), sort_keys=True) for r in primaries if "error" not in r}
        reachable = all("error" not in r for r in primaries)
        return {"key": show_bytes(key), "partition": plist.partition, "agree": reachable and len(agree_states) == 1,
                "disagree": len(agree_states) > 1, "replicas": rows}

    # --- change endpoints ------------------------------------------------------------------------

    async def post_join(self, request: HttpRequest) -> Any:
        body = request.json()
        address = body.get("address")
        if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://")) or len(address) > 200:
            raise HttpError(400, "bad_request", "give the new node's address: {\"address\": \"tcp://HOST:PORT\"}")
        channel = "~" + address
        self.peers.connect(channel, address)
        try:
            reply = await self.peers.call(channel, p.OP_CLUSTER_JOIN, {"cluster": self.config.listen},
                                          self.timeout_s * 2)
        except DynqError as exc:
            raise HttpError(http_status(exc), exc.code, f"{address}: {exc.message}") from exc
        return {"staged": reply.get("staged"), "claimant": reply.get("claimant"), "members": reply.get("members")}

    async def post_leave(self, request: HttpRequest) -> Any:
        node = request.json().get("node")
        if not isinstance(node, str) or not node:
            raise HttpError(400, "bad_request", "give the member to remove: {\"node\": \"NAME\"}")
        return await self.op(p.OP_CLUSTER_LEAVE, {"node": node})

    async def post_commit(self, request: HttpRequest) -> Any:
        plan_id = request.json().get("plan")
        if plan_id is not None and not isinstance(plan_id, str):
            raise HttpError(400, "bad_request", "'plan' must be the plan's id (a string), as GET /api/v1/plan gives")
        reply = await self.op(p.OP_CLUSTER_COMMIT, {"plan": plan_id} if plan_id else {})
        return {"version": reply.get("version"), "transfers": reply.get("transfers")}

    async def post_clear(self, request: HttpRequest) -> Any:
        return await self.op(p.OP_CLUSTER_CLEAR)


async def start_admin_api(api: AdminApi) -> asyncio.AbstractServer | None:
    """Serve the API and console where ``[http]`` says (None: it is off)."""
    config = api.config
    if not config.http_port:
        return None
    server = await serve_http(config.http_host, config.http_port, api.handle)
    log.info("admin API and console on %s", api.url())
    return server
