"""Options and fixtures of the fault suite.

    pytest tests/faults                          # CI profile: ~45 s of faults per scenario
    pytest tests/faults --profile long           # 10 minutes per scenario
    pytest tests/faults --fault-seed 12345       # repeat a run's schedule (printed on every run)
    DYNQ_FAULT_PROFILE=long DYNQ_FAULT_SEED=12345 pytest   # the same, from any directory

Scenarios need root, ``ip`` and ``nft``; without them they are skipped with the reason.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

PROFILES = {"smoke": 15.0, "ci": 45.0, "long": 600.0}
RESULTS: list[str] = []  # one summary line per scenario, printed at the end of the session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dynq faults")
    group.addoption("--profile", choices=sorted(PROFILES), default="ci",
                    help="fault-suite profile: ci (~45 s per scenario) or long (10 min per scenario)")
    group.addoption("--fault-seed", type=int, default=None,
                    help="seed of the fault schedules and workloads (default: random, printed)")


@pytest.fixture(scope="session")
def fault_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--fault-seed", default=None) or os.environ.get("DYNQ_FAULT_SEED")
    return int(seed) if seed else random.SystemRandom().randrange(1, 2**31)


@pytest.fixture(scope="session")
def profile_duration(request: pytest.FixtureRequest) -> float:
    # (the options exist only when this conftest is an initial one, e.g. `pytest tests/faults`;
    # the environment works from anywhere: DYNQ_FAULT_PROFILE=long pytest)
    name = request.config.getoption("--profile", default=None) or os.environ.get("DYNQ_FAULT_PROFILE", "ci")
    return PROFILES[str(name)]


@pytest.fixture(scope="session")
def netns_ready() -> None:
    from .netns import remove_stale, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    remove_stale()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("dynq fault scenarios")
        for line in RESULTS:
            terminalreporter.write_line(line)
