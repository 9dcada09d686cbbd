"""The README, run as written: its local-cluster shell lines and its Python example, in
order, against `dynq up` on its defaults (CURVE on), from the directory `dynq up` runs in.

The blocks that run are the fenced blocks marked ``<!-- readme-test: NAME -->``. The only
rewriting is of ports: the README's 7100/7110/7120/7130 become the free ports this test
found (and DYNQ_SEEDS points at n1, as the README's default seed would). So a README line
that breaks against the defaults breaks this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import UpCluster, running_up, stop_pid

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
REPO = README.parent


def marked_blocks(text: str) -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of every fenced block right after a readme-test marker."""
    found: dict[str, tuple[str, str]] = {}
    pattern = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*\n```(\w+)\n(.*?)\n```", re.S)
    for name, language, code in pattern.findall(text):
        assert name not in found, f"two README blocks are marked {name!r}"
        found[name] = (language, code)
    return found


def shell_lines(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment-only lines dropped."""
    lines: list[str] = []
    pending = ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def localize(text: str, port: int) -> str:
    """The README's default ports (n1 7100 ... n4 7130) moved to this test's base port."""
    return re.sub(r"\b71([0-3])0\b", lambda m: str(port + 10 * int(m.group(1))), text)


def test_readme_marks_the_blocks_this_test_runs() -> None:
    """The run command, the local commands, the client example and the growing flow are all
    marked, and the run command is the script that sets up and runs `dynq up`."""
    blocks = marked_blocks(README.read_text())
    assert set(blocks) == {"run", "local", "client", "grow"}
    assert shell_lines(blocks["run"][1]) == ["scripts/up"]
    script = (REPO / "scripts" / "up").read_text()
    assert os.access(REPO / "scripts" / "up", os.X_OK)
    assert "python3 -m venv" in script and 'exec "$VENV/bin/dynq" up "$@"' in script
    assert blocks["client"][0] == "python"


def _run_line(line: str, up: UpCluster, env: dict[str, str], background: list[subprocess.Popen[bytes]]) -> None:
    """Run one README line in the cluster's directory; a line ending in ``&`` is started and
    kept (stopped at the end). A line that fails is retried a few times (replicas converge
    after W acknowledged), then fails the test with what it printed."""
    command = localize(line, up.port)
    in_background = re.search(r"(?<!&)&\s*(#.*)?$", command)
    if in_background:
        log = (up.cwd / f"background-{len(background)}.log").open("wb")
        command = command[: in_background.start()]
        background.append(subprocess.Popen(["bash", "-c", "exec " + command], cwd=up.cwd, env=env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        return
    result: subprocess.CompletedProcess[str] | None = None
    for _ in range(5):
        result = subprocess.run(["bash", "-c", command], cwd=up.cwd, env=env, capture_output=True, text=True,
                                timeout=180)
        if result.returncode == 0:
            return
        time.sleep(1)
    assert result is not None
    pytest.fail(f"README line failed: {line}\n(ran: {command})\nexit {result.returncode}\n"
                f"{result.stdout}\n{result.stderr}")


def test_readme_runs_as_written_against_dynq_up(tmp_path: Path) -> None:
    """Every marked README line and the client example work against `dynq up`'s defaults,
    ending with a fourth CURVE node that joined through `config init --keys` and holds data."""
    blocks = marked_blocks(README.read_text())
    work = tmp_path / "work"
    work.mkdir()
    with running_up(work) as up:
        assert any("CURVE on" in line for line in up.banner), "".join(up.banner)
        env = {k: v for k, v in os.environ.items() if k not in ("DYNQ_KEYS", "DYNQ_KEY", "DYNQ_SERVER_KEY")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["DYNQ_SEEDS"] = up.seed
        background: list[subprocess.Popen[bytes]] = []
        try:
            for line in shell_lines(blocks["local"][1]):
                _run_line(line, up, env, background)

            example = work / "example.py"
            example.write_text(localize(blocks["client"][1], up.port))
            ran = subprocess.run([sys.executable, str(example)], cwd=work, env=env, capture_output=True,
                                 text=True, timeout=120)
            assert ran.returncode == 0, ran.stdout + ran.stderr
            printed = ran.stdout.splitlines()
            assert printed[:3] == ["[b'apples', b'pears']", "[b'apples,pears']", "False"], ran.stdout

            for line in shell_lines(blocks["grow"][1]):
                _run_line(line, up, env, background)
            status = subprocess.run(["dynq", "cluster", "status", "--json"], cwd=work, env=env,
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stdout + status.stderr
            nodes = {row["node"]: row for row in json.loads(status.stdout)["nodes"]}
            assert set(nodes) == {"n1", "n2", "n3", "n4"}
            assert nodes["n4"]["membership"] == "valid" and nodes["n4"]["status"] == "up"
            assert nodes["n4"]["partitions"] == 16 and nodes["n4"]["keys"] >= 1, nodes["n4"]
            # its key went through registration, not only through the shared peers/ directory
            for name in ("n1", "n2", "n3"):
                assert (work / "dynq-data" / name / "registered-peers" / "n4.key").exists()
        finally:
            for process in background:
                stop_pid(process.pid)
                process.wait(10)
