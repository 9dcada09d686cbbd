"""The simulation harness over the real node and client: a seed passes, replays to the
same trace hash, its options are printed from the seed alone, and every planted bug of
``dynq.sim.mutations`` is caught within a few seeds."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dynq.cli import main
from dynq.sim.harness import Options, run_seed
from dynq.sim.mutations import MUTATIONS

MUTATION_SEEDS = 4
"""Each mutation must fail one of its first this many seeds (measured: within the first three)."""


def test_options_come_from_the_seed_alone() -> None:
    """One seed, one expansion: the options are a pure function of (seed, profile)."""
    assert Options.expand(7) == Options.expand(7)
    assert Options.expand(7) != Options.expand(8)
    assert Options.expand(7, "soak").duration_s >= 60


def test_a_seed_passes_and_replays_to_the_same_trace_hash() -> None:
    """Same seed, same code: the same history and the same trace hash (determinism self-check)."""
    first = run_seed(9)
    second = run_seed(9)
    assert first.ok, first.summary()
    assert first.trace_hash == second.trace_hash
    assert first.summary()["verdicts"] == second.summary()["verdicts"]
    assert first.events > 1000 and first.virtual_s > 15


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_mutation_is_caught(name: str) -> None:
    """A planted bug fails a seed, and the failure names the seed and how to replay it."""
    for seed in range(1, MUTATION_SEEDS + 1):
        result = run_seed(seed, "ci", name)
        if not result.ok:
            assert result.replay_command() == f"dynq sim --seed {seed} --profile ci --mutation {name}"
            return
    pytest.fail(f"mutation {name} survived seeds 1..{MUTATION_SEEDS}")


def test_cli_prints_the_trace_hash_and_a_reproduction_on_failure() -> None:
    """`dynq sim --seed S --trace-hash` prints the hash; a failing seed prints its replay command."""
    runner = CliRunner()
    out = runner.invoke(main, ["sim", "--seed", "9", "--trace-hash"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == run_seed(9).trace_hash
    failed = runner.invoke(main, ["sim", "--seed", "1", "--mutation", "sync-normal"])
    assert failed.exit_code == 1
    assert "reproduce: dynq sim --seed 1 --profile ci --mutation sync-normal" in failed.output
