"""The HTTP admin API and the console's files, against real node processes (CURVE on, as
`dynq up` runs), over real HTTP on loopback with urllib: every endpoint, the refusals
(401/403/400/404/405, each with a JSON body), a plan staged by the CLI read and committed
through the API, a node killed and shown down, and `dynq console`'s URL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dynq_client import DynqError, Forbidden

from dynq.cluster.membership import ClusterState
from dynq.localcluster import LocalCluster, http_port_of
from tests.conftest import free_ports, running_cluster
from tests.conftest import wait_for as wait_for_

pytestmark = pytest.mark.integration

FAST = """
[membership]
gossip_interval_ms = 200
transfer_cleanup_delay_ms = 1000
"""


def http(method: str, url: str, token: str | None = None, body: Any = None,
         raw_body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One request; the status, the headers and the body (JSON decoded when it is JSON)."""
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, payload = exc.code, dict(exc.headers), exc.read()
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, headers, json.loads(payload)
    return status, headers, payload


class Api:
    """The console of one node of a test cluster, with the cluster's shared tokens."""

    def __init__(self, cluster: LocalCluster, name: str = "n1") -> None:
        self.base = f"http://127.0.0.1:{http_port_of(cluster.nodes[name].address)}"
        tokens = cluster.data_dir / "http"
        self.read = (tokens / "http-read.token").read_text().strip()
        self.admin = (tokens / "http-admin.token").read_text().strip()

    def get(self, path: str, token: str | None = "read") -> Any:
        status, _, body = http("GET", self.base + path, self._token(token))
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any = None, token: str | None = "admin") -> tuple[int, Any]:
        status, _, reply = http("POST", self.base + path, self._token(token), body if body is not None else {})
        return status, reply

    def _token(self, which: str | None) -> str | None:
        return {"read": self.read, "admin": self.admin}.get(which, which) if which else None


def dynq(cluster: LocalCluster, *args: str, seed: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DYNQ_KEYS=str(cluster.keys_dir))
    return subprocess.run([sys.executable, "-m", "dynq", *args, "--seed", seed or cluster.seeds[0]],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def wait_for(what: str, check: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    """The suite's poller; these checks may also assert while the cluster settles."""
    return wait_for_(what, check, timeout, interval, ignore=(DynqError, AssertionError))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes, CURVE, [http] on each node's port + 2; shared by the read-only tests."""
    with running_cluster(tmp_path_factory.mktemp("api"), 3, security="curve", http=True,
                         extra_config=FAST) as c:
        with c.client() as db:
            db.put(b"hello", b"world")
        yield c


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Api:
    return Api(cluster)


READ_ENDPOINTS = ["/api/v1", "/api/v1/overview", "/api/v1/status", "/api/v1/ring", "/api/v1/members",
                  "/api/v1/plan", "/api/v1/transfers", "/api/v1/hints", "/api/v1/anti-entropy", "/api/v1/alarms",
                  "/api/v1/stats", "/api/v1/stats?node=n2", "/api/v1/history", "/api/v1/history?node=n3",
                  "/api/v1/inspect?key=hello"]
CHANGE_ENDPOINTS = ["/api/v1/plan/join", "/api/v1/plan/leave", "/api/v1/plan/commit", "/api/v1/plan/clear"]


def test_the_index_lists_every_endpoint_this_test_covers(api: Api) -> None:
    """GET /api/v1 lists exactly the read and change endpoints exercised below, with their scope."""
    listed = {(e["method"], e["path"], e["scope"]) for e in api.get("/api/v1")["endpoints"]}
    expected = {("GET", p.split("?")[0], "read") for p in READ_ENDPOINTS} | {("POST", p, "admin")
                                                                          for p in CHANGE_ENDPOINTS}
    assert listed == expected


@pytest.mark.parametrize("path", READ_ENDPOINTS)
def test_read_endpoints_answer_with_either_token(api: Api, path: str) -> None:
    """Every read endpoint answers 200 JSON to the read token and to the admin token."""
    assert api.get(path, "read") is not None
    assert api.get(path, "admin") is not None


@pytest.mark.parametrize("path", READ_ENDPOINTS)
def test_read_endpoints_refuse_without_a_valid_token(api: Api, path: str) -> None:
    """No token, an unknown token or another scheme: 401 with a JSON body and a Bearer challenge."""
    for token in (None, "not-the-token-at-all"):
        status, headers, body = http("GET", api.base + path, token)
        assert status == 401 and body["error"] == "unauthorized" and body["message"], (path, token, body)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    request = urllib.request.Request(api.base + path, headers={"Authorization": f"Basic {api.read}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 401


@pytest.mark.parametrize("path", CHANGE_ENDPOINTS)
def test_change_endpoints_refuse_the_read_token(api: Api, path: str) -> None:
    """A change endpoint gives 403 (JSON) to the read token and 401 to none: looking is not changing."""
    status, body = api.post(path, {"node": "n2"}, token="read")
    assert status == 403 and body["error"] == "forbidden" and "admin token" in body["message"]
    status, body = api.post(path, {"node": "n2"}, token=None)
    assert status == 401 and body["error"] == "unauthorized"


def test_bad_requests_unknown_paths_and_methods_get_json_errors(api: Api) -> None:
    """400 for bad input, 404 for unknown paths, 405 for a wrong method: always a JSON body."""
    cases = [
        ("GET", "/api/v1/inspect", None, 400),  # no key
        ("GET", "/api/v1/inspect?key_b64=%%%", None, 400),
        ("GET", "/api/v1/stats?node=nobody", None, 400),
        ("POST", "/api/v1/plan/leave", b"{not json", 400),
        ("POST", "/api/v1/plan/leave", b"[1, 2]", 400),
        ("POST", "/api/v1/plan/leave", b"{}", 400),  # no node
        ("POST", "/api/v1/plan/join", b'{"address": "nowhere"}', 400),
        ("POST", "/api/v1/plan/commit", b'{"plan": 7}', 400),
        ("POST", "/api/v1/plan/commit", b"{}", 400),  # nothing staged
        ("GET", "/api/v1/nothing-here", None, 404),
        ("GET", "/elsewhere", None, 404),
        ("GET", "/console/missing.js", None, 404),
        ("DELETE", "/api/v1/ring", None, 405),
        ("GET", "/api/v1/plan/commit", None, 405),
    ]
    for method, path, raw, expected in cases:
        status, headers, body = http(method, api.base + path, api.admin, raw_body=raw)
        assert status == expected, (method, path, status, body)
        assert headers["Content-Type"].startswith("application/json") and body["error"] and body["message"]
        assert body["status"] == expected


def raw_http(api: Api, data: bytes) -> bytes:
    """Send raw bytes to the HTTP port; what came back before the server closed."""
    import socket

    port = int(api.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("data, status", [
    (b"\x00\xff garbage\r\n\r\n", b"400"),
    (b"GET /api/v1 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"POST /api/v1/plan/clear HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n", b"413"),
    (b"POST /api/v1/plan/clear HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"400"),
    (b"POST /api/v1/plan/clear HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
    (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n\r\n", b"400"),
    (b"GET /console/../../pyproject.toml HTTP/1.1\r\n\r\n", b"400"),
    (b"POST /api/v1/plan/clear HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", b""),  # closed early: no reply
])
def test_malformed_http_gets_a_json_error_or_a_close_and_the_node_lives(api: Api, data: bytes, status: bytes) -> None:
    """Whatever arrives on the HTTP port costs that connection only: a JSON error or a close."""
    reply = raw_http(api, data)
    if status:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status, reply[:200]
        assert json.loads(body)["status"] == int(status)
    else:
        assert reply == b""
    assert api.get("/api/v1")["node"] == "n1"


def test_the_api_answers_what_the_ops_answer(api: Api, cluster: LocalCluster) -> None:
    """The views are the ops' replies: ring owners as the routing table has them, stats as
    the stats op gives them, the key as `inspect` finds it on every replica."""
    with cluster.client() as db:
        assert db.table is not None
        table = db.table.ring
        ring = api.get("/api/v1/ring")
        assert [row["owner"] for row in ring["partitions"]] == list(table.owners)
        assert ring["owned"] == table.owned_counts() and ring["q"] == 64 and not ring["transition"]
        assert api.get("/api/v1/stats?node=n2")["name"] == "n2"
        assert set(api.get("/api/v1/stats")) == set(db.call("n1", "stats"))
    members = {m["name"]: m for m in api.get("/api/v1/members")["members"]}
    assert set(members) == {"n1", "n2", "n3"} and all(m["status"] == "up" for m in members.values())
    assert members["n1"]["health"] == "self" and members["n2"]["health"] in ("up", "suspect")
    assert sum(m["partitions"] for m in members.values()) == 64
    found = api.get("/api/v1/inspect?key=hello")
    assert found["agree"] and found["partition"] == table.partition_for(b"hello")
    primaries = [r for r in found["replicas"] if r["role"] == "primary"]
    assert len(primaries) == 3 and all(r["object"]["siblings"][0]["value"] == "world" for r in primaries)
    b64 = api.get("/api/v1/inspect?key_b64=aGVsbG8=")  # "hello"
    assert b64["replicas"] == found["replicas"]
    assert api.get("/api/v1/plan") == json.loads(dynq(cluster, "cluster", "plan", "--json").stdout)
    history = api.get("/api/v1/history?node=n2")
    assert history["name"] == "n2" and history["history"]["interval_s"] == 5 and history["buckets_s"]
    hints, ae = api.get("/api/v1/hints"), api.get("/api/v1/anti-entropy")
    assert set(hints["nodes"]) == {"n1", "n2", "n3"} and hints["total"] == 0
    assert set(ae["nodes"]) == {"n1", "n2", "n3"} and len(ae["partitions"]) == 64
    transfers = api.get("/api/v1/transfers")
    assert transfers["pending"] == 0 and transfers["transfers"] == []
    overview = api.get("/api/v1/overview")
    assert overview["consoles"] == {n: f"http://127.0.0.1:{http_port_of(node.address)}/"
                                    for n, node in cluster.nodes.items()}
    assert api.admin not in json.dumps(overview) and api.read not in json.dumps(overview), "no token in the data"


def test_the_console_page_and_every_asset_it_references(api: Api) -> None:
    """/ serves the console without a token (it holds no data); every script and stylesheet it
    references is served with its type and a CSP that allows no other origin."""
    status, headers, page = http("GET", api.base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"dynq console" in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    refs = re.findall(rb'(?:src|href)="([^"]+)"', page)
    assert sorted(refs) == [b"/console/console.css", b"/console/console.js"]
    assert not re.search(rb"https?://", page), "the page must not load anything from elsewhere"
    for ref, kind in ((b"/console/console.css", "text/css"), (b"/console/console.js", "text/javascript")):
        status, headers, body = http("GET", api.base + ref.decode())
        assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 1000
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", body), ref
    assert http("GET", api.base + "/console/")[0] == 200


def test_dynq_console_prints_a_url_curl_can_fetch(api: Api, cluster: LocalCluster) -> None:
    """`dynq console` prints the node's console URL with the admin token in the fragment
    (`--read-only`: the read token); the page loads from it and its token works on the API."""
    url = dynq(cluster, "console").stdout.strip()
    assert url == f"{api.base}/#token={api.admin}"
    read_url = dynq(cluster, "console", "--read-only").stdout.strip()
    assert read_url == f"{api.base}/#token={api.read}"
    curl = subprocess.run(["curl", "-sf", url], capture_output=True, timeout=30, check=False) if _has("curl") else None
    page = curl.stdout if curl is not None else urllib.request.urlopen(url, timeout=30).read()
    assert b"dynq console" in page
    other = dynq(cluster, "console", "--node", "n3", "--json")
    assert json.loads(other.stdout)["url"] == f"http://127.0.0.1:{http_port_of(cluster.nodes['n3'].address)}/"


def test_an_application_key_cannot_get_the_tokens(cluster: LocalCluster) -> None:
    """The console op hands out the admin token: under CURVE only peer (operator) keys get it."""
    with cluster.client(keys="app") as db, pytest.raises(Forbidden):
        db.call("n1", "console", {})


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def start_new_node(cluster: LocalCluster, name: str) -> str:
    """A new, empty node (with [http]) that answers; not a member yet."""
    address = f"tcp://127.0.0.1:{free_ports(1, 3)[0]}"
    cluster.add_node(name, address)
    cluster.start(name)
    with cluster.client([address], timeout=2.0) as db:
        wait_for(f"{name} to answer", lambda: db.call_address(address, "ping", {}), timeout=30)
    return address


def state_at(cluster: LocalCluster, name: str) -> ClusterState:
    with cluster.client([cluster.nodes[name].address]) as db:
        return ClusterState.from_wire(db.call_address(cluster.nodes[name].address, "cluster_state", {})["state"])


def test_a_plan_staged_by_the_cli_is_committed_through_the_api(tmp_path: Path) -> None:
    """A join staged with the CLI is the API's plan, byte for byte the CLI's `plan --json`;
    committing it through the API (with its id) starts exactly that transition: the ring
    after it is the plan's ring. A leave staged and cleared through the API leaves nothing
    staged; a stale plan id is refused with 409."""
    with running_cluster(tmp_path, 3, security="curve", http=True, extra_config=FAST) as cluster:
        api = Api(cluster)
        address = start_new_node(cluster, "n4")
        joined = wait_for("the join staged", lambda: (r := dynq(cluster, "cluster", "join", cluster.seeds[0],
                                                                  seed=address)).returncode == 0 and r, timeout=30)
        assert joined.returncode == 0, joined.stderr
        cli_plan = json.loads(dynq(cluster, "cluster", "plan", "--json").stdout)
        api_plan = api.get("/api/v1/plan")
        assert api_plan == cli_plan and api_plan["staged"]["joins"][0][0] == "n4"
        overview = api.get("/api/v1/overview")
        assert overview["plan"]["id"] == cli_plan["id"]
        status, body = api.post("/api/v1/plan/commit", {"plan": "00000000"})
        assert status == 409 and "plan changed" in body["message"]
        version = state_at(cluster, "n1").version
        status, body = api.post("/api/v1/plan/commit", {"plan": api_plan["id"]})
        assert status == 200 and body["transfers"] == len(cli_plan["transfers"]) > 0, body
        assert body["version"] == version + 1
        # the transition ends with exactly the plan's ring, n4 owning its share
        wait_for("the transition to finish", lambda: not api.get("/api/v1/ring")["transition"], timeout=120)
        assert state_at(cluster, "n1").ring.owners == tuple(cli_plan["ring"]["owners"])
        members = {m["name"]: m for m in api.get("/api/v1/members")["members"]}
        assert members["n4"]["membership"] == "valid" and members["n4"]["partitions"] == cli_plan["balance"]["n4"][1]
        transfers = api.get("/api/v1/transfers")
        assert transfers["pending"] == 0 and all(t["percent"] == 100 for t in transfers["transfers"])
        # stage a leave through the API, see it in the CLI's plan, clear it through the API
        status, body = api.post("/api/v1/plan/leave", {"node": "n2"})
        assert status == 200 and body["staged"]["leaves"] == ["n2"], body
        assert json.loads(dynq(cluster, "cluster", "plan", "--json").stdout)["staged"]["leaves"] == ["n2"]
        status, body = api.post("/api/v1/plan/clear")
        assert status == 200 and body["cleared"]["leaves"] == ["n2"]
        assert api.get("/api/v1/plan").get("empty") is True


def test_a_join_staged_through_the_api(tmp_path: Path) -> None:
    """POST /api/v1/plan/join with a new node's address stages it as `dynq cluster join` does."""
    with running_cluster(tmp_path, 2, security="curve", http=True, extra_config=FAST) as cluster:
        api = Api(cluster)
        address = start_new_node(cluster, "n3")
        # A new key is let in when it first knocks (key directories re-read at most once a second):
        # a join right after the key file appeared may be refused once, as with the CLI.
        status, body = wait_for("the join staged", lambda: (r := api.post("/api/v1/plan/join", {"address": address}))[0]
                                != 503 and r, timeout=30)
        assert status == 200 and body["members"] == ["n1", "n2"], body
        plan = api.get("/api/v1/plan")
        assert [j[0] for j in plan["staged"]["joins"]] == ["n3"]
        assert plan == json.loads(dynq(cluster, "cluster", "plan", "--json").stdout)


def test_a_killed_node_shows_down(tmp_path: Path) -> None:
    """Kill a node: the overview names it down (with why) within a bounded wait, the other
    members stay up, and an alarm says so; the API stays usable throughout."""
    with running_cluster(tmp_path, 3, security="curve", http=True, extra_config=FAST) as cluster:
        api = Api(cluster)
        assert api.get("/api/v1/overview")["down"] == []
        cluster.kill("n3")
        overview = wait_for("n3 shown down", lambda: (o := api.get("/api/v1/overview"))["down"] == ["n3"] and o)
        members = {m["name"]: m for m in overview["members"]}
        assert members["n3"]["status"] == "down" and members["n3"]["error"]
        assert members["n1"]["status"] == members["n2"]["status"] == "up"
        assert any(a["kind"] == "node_down" and a["node"] == "n3" and a["level"] == "critical"
                   for a in overview["alarms"])
        assert overview["degraded"] and "error" in overview["hints"]["nodes"]["n3"]
        assert api.get("/api/v1/status")["down"] == ["n3"]
        status, _, body = http("GET", api.base + "/api/v1/stats?node=n3", api.read)
        assert status in (503, 504) and body["error"] in ("unavailable", "timeout")
        # the console of a surviving node still answers, with the same picture
        assert Api(cluster, "n2").get("/api/v1/status")["down"] == ["n3"]


def test_a_wheel_ships_the_console(tmp_path: Path) -> None:
    """A non-editable install gets the console's files: they are package data of the wheel."""
    import shutil
    import zipfile

    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info where it runs
    shutil.copytree(repo / "dynq", source / "dynq", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"),
                            str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "out").glob("dynq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("index.html", "console.js", "console.css"):
        assert f"dynq/ops/console/{asset}" in names


SLOW_TRANSFERS = FAST + """transfer_rate = 20
transfer_batch = 20
"""


def test_a_stuck_transfer_shows_its_progress_retries_and_last_error(tmp_path: Path) -> None:
    """While partitions move to a new node, the API shows each transfer's progress; kill the
    receiver and the transfers say how often they retried and why (the last error), and an
    alarm names them; bring it back and the change completes."""
    with running_cluster(tmp_path, 3, security="curve", http=True, extra_config=SLOW_TRANSFERS) as cluster:
        api = Api(cluster)
        with cluster.client() as db:
            for i in range(800):
                db.put(f"k{i}".encode(), b"v" * 100)
        address = start_new_node(cluster, "n4")
        status, body = wait_for("the join staged", lambda: (r := api.post("/api/v1/plan/join", {"address": address}))[0]
                                != 503 and r, timeout=30)
        assert status == 200, body
        status, body = api.post("/api/v1/plan/commit", {"plan": api.get("/api/v1/plan")["id"]})
        assert status == 200 and body["transfers"] > 0, body

        def streaming() -> list[dict[str, Any]]:
            return [t for t in api.get("/api/v1/transfers")["transfers"] if t["sent"] > 0 and t["pending"]]

        moving = wait_for("a transfer under way", streaming)
        assert all(0 <= t["percent"] <= 100 and t["total"] > 0 for t in moving)
        ring = api.get("/api/v1/ring")
        assert ring["transition"] and any(p["transfers"] for p in ring["partitions"])
        cluster.kill("n4")

        def failing() -> list[dict[str, Any]]:
            return [t for t in api.get("/api/v1/transfers")["transfers"] if t["retries"] >= 3 and t["last_error"]]

        stuck = wait_for("a transfer retrying with its last error", failing)
        assert all(t["target"] == "n4" for t in stuck) and "n4" in stuck[0]["last_error"]
        alarms = api.get("/api/v1/alarms")["alarms"]
        assert any(a["kind"] == "transfer_stuck" for a in alarms) and any(a["kind"] == "node_down" for a in alarms)
        cluster.start("n4")
        wait_for("the transition to finish", lambda: not api.get("/api/v1/ring")["transition"], timeout=240)
        assert api.get("/api/v1/transfers")["pending"] == 0


def test_inspect_shows_a_typed_state_of_a_bucket(api: Api, cluster: LocalCluster) -> None:
    """?bucket= inspects the key in that bucket's preference list; a data type's state is
    shown as one (type, context, value, dots), not as an invalid object, as `dynq inspect` does."""
    with cluster.client() as db:
        db.call("n1", "bucket_create", {"name": "apicount", "props": {"datatype": "counter"}})
        db.refresh()
        db.counter("apicount", "c").increment(4)
    found = wait_for("the counter on every primary", lambda: (lambda f: f if f["agree"] else None)(
        api.get("/api/v1/inspect?key=c&bucket=apicount")))
    primaries = [r for r in found["replicas"] if r["role"] == "primary"]
    assert len(primaries) == 3 and all("error" not in r for r in primaries)
    assert all(r["object"]["datatype"] == "counter" and r["object"]["value"] == 4 for r in primaries)
    assert all(r["object"]["dots"] >= 1 and r["object"]["context"]["vv"] for r in primaries)
    assert http("GET", f"{api.base}/api/v1/inspect?key=c&bucket=nosuch", api.read)[0] == 404
