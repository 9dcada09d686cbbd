"""The console in a real browser: Debian's headless Chromium over the DevTools protocol
(tests/integration/cdp.py, on a pipe, nothing downloaded) against a 3-node cluster.

It finds every member and its partition count, sees a killed node shown down within a
bounded wait, and commits from the page a join staged with the CLI, after the page showed
the plan. Screenshots go to ``$DYNQ_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the
repository). Skipped, with the reason, where Chromium is not installed (scripts/test
installs it as root with apt-get).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynq.cluster.membership import ClusterState
from tests.conftest import running_cluster
from tests.integration.cdp import Browser, find_chromium
from tests.integration.test_admin_api import FAST, dynq, start_new_node, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = find_chromium()
ARTIFACTS = Path(os.environ.get("DYNQ_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; scripts/test does it as root)")
    b = Browser(CHROMIUM)
    try:
        yield b
    finally:
        b.close()


def member_rows(b: Browser) -> str:
    return ("JSON.stringify([...document.querySelectorAll('#members tbody tr')].map(r => "
            "[r.dataset.member, r.dataset.status, Number(r.dataset.partitions)]))")


def test_console_shows_members_a_dead_node_and_commits_a_plan(browser: Browser, tmp_path: Path) -> None:
    """Members and their partition counts as the ring has them; a killed node shown DOWN
    by name; a join staged in the CLI shown as a plan and committed from the page; a key
    inspected; the page's own node killed and said so."""
    shots = ARTIFACTS / "console"
    with running_cluster(tmp_path, 3, security="curve", http=True, extra_config=FAST) as cluster:
        with cluster.client() as db:
            assert db.table is not None
            owned = db.table.ring.owned_counts()
            db.put(b"cart:42", b"apples")
        browser.open(cluster.console_url("n1"))
        expected = json.dumps(sorted([name, "up", owned[name]] for name in ("n1", "n2", "n3")), separators=(",", ":"))
        browser.wait_for("every member up with its partitions",
                         f"(() => {{ const rows = {member_rows(browser)}; "
                         f"return JSON.stringify(JSON.parse(rows).sort()) === {json.dumps(expected)} }})()")
        legend = browser.evaluate("JSON.stringify([...document.querySelectorAll('#ring-legend .item')]"
                                  ".map(e => [e.dataset.member, Number(e.dataset.owned)]))")
        assert dict(json.loads(legend)) == owned
        assert browser.evaluate("document.querySelectorAll('#ring path[data-partition]').length") == 64
        assert browser.evaluate("location.hash") == "", "the token is taken out of the address bar"
        assert browser.evaluate("document.getElementById('sum-nodes').textContent") == "all 3 nodes answer"
        browser.screenshot(shots / "1-healthy.png")

        cluster.kill("n3")
        browser.wait_for("n3 shown down",
                         "document.querySelector('#members tr[data-member=n3]').dataset.status === 'down' && "
                         "document.getElementById('banner').dataset.down === 'n3' && "
                         "document.getElementById('banner').textContent.includes('DOWN: n3')", timeout=60)
        assert browser.evaluate("document.getElementById('sum-nodes').textContent").startswith("n3 is DOWN")
        assert "node_down" in browser.evaluate(
            "[...document.querySelectorAll('#alarms li')].map(li => li.dataset.kind).join(' ')")
        browser.screenshot(shots / "2-n3-down.png")

        cluster.start("n3")
        cluster.wait_ready(["n1", "n2", "n3"])
        browser.wait_for("n3 back up", "document.querySelector('#members tr[data-member=n3]').dataset.status === 'up'")
        address = start_new_node(cluster, "n4")
        wait_for("the join staged", lambda: dynq(cluster, "cluster", "join", cluster.seeds[0],
                                                 seed=address).returncode == 0, timeout=30)
        plan = json.loads(dynq(cluster, "cluster", "plan", "--json").stdout)
        browser.wait_for("the staged plan", f"document.getElementById('plan').dataset.planId === {json.dumps(plan['id'])}")
        assert "join n4" in browser.evaluate("document.getElementById('plan').textContent")
        browser.evaluate("document.getElementById('commit').click()")
        browser.wait_for("the plan shown before committing",
                         "!document.getElementById('confirm').classList.contains('hidden') && "
                         "document.getElementById('confirm-summary').textContent.includes('join n4')")
        browser.screenshot(shots / "3-confirm-plan.png")
        browser.evaluate("document.getElementById('confirm-commit').click()")
        browser.wait_for("the commit's result",
                         f"document.getElementById('plan-result').dataset.committed === {json.dumps(plan['id'])}")

        def n4_in_the_ring() -> bool:
            with cluster.client() as db:
                state = ClusterState.from_wire(db.call("n1", "cluster_state", {})["state"])
            return "n4" in {m.name for m in (state.next_ring or state.ring).members}

        wait_for("n4 in the ring", n4_in_the_ring)
        browser.wait_for("n4 as a member", "!!document.querySelector('#members tr[data-member=n4]')")
        browser.wait_for("the move summarised", "/partitions moved|nothing/.test(document.getElementById('sum-moving').textContent)")
        browser.screenshot(shots / "4-committed.png")

        browser.evaluate("document.getElementById('inspect-key').value = 'cart:42'; "
                         "document.getElementById('inspect-form').requestSubmit()")
        browser.wait_for("the key's replicas", "document.getElementById('inspect').textContent.includes('apples')")
        assert browser.evaluate("document.querySelectorAll('#inspect tr[data-node]').length") >= 3

        cluster.kill("n1")  # the node serving the page: the page says so and keeps what it saw
        browser.wait_for("its own node unreachable", "document.body.dataset.reachable === 'false' && "
                         "document.getElementById('banner').textContent.includes('Cannot reach n1')")
        links = browser.evaluate("[...document.querySelectorAll('#banner a.other-console')].map(a => a.dataset.node).join(',')")
        assert links == "n2,n3,n4", links
        browser.screenshot(shots / "5-serving-node-down.png")
        assert not [m for m in browser.console if m.startswith("exception")], browser.console
