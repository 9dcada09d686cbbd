"""SimLoop: virtual time, host kill/pause guards, forbidden calls, determinism."""

from __future__ import annotations

import asyncio

import pytest

from dynq.sim.loop import SimDeadlock, SimLivelock, SimLoop, SimViolation


def _ticks(seed: int, kill_at: float | None = None, pause: tuple[float, float] | None = None
           ) -> tuple[list[tuple[int, float]], str]:
    loop = SimLoop(seed)
    host = loop.add_host("a")
    out: list[tuple[int, float]] = []

    async def ticker() -> None:
        for i in range(5):
            await asyncio.sleep(1)
            out.append((i, loop.time()))
            loop.trace("tick", i)

    async def main() -> None:
        host.spawn(ticker())
        if kill_at is not None:
            await asyncio.sleep(kill_at)
            host.kill()
        if pause is not None:
            await asyncio.sleep(pause[0])
            host.pause(pause[1])
        await asyncio.sleep(20)

    try:
        loop.run(main())
        return out, loop.trace_hash()
    finally:
        loop.close()


def test_virtual_time_passes_without_sleeping() -> None:
    """Five one-second sleeps end at start+5 virtual seconds."""
    out, _ = _ticks(1)
    assert [i for i, _ in out] == [0, 1, 2, 3, 4]
    assert 1005.0 <= out[-1][1] < 1005.01


def test_kill_makes_the_incarnation_a_no_op() -> None:
    """Callbacks of a killed host never run again."""
    out, _ = _ticks(1, kill_at=2.5)
    assert [i for i, _ in out] == [0, 1]


def test_pause_defers_until_resume() -> None:
    """A paused host's timers fire at resume, in order, none lost."""
    out, _ = _ticks(1, pause=(1.5, 3.0))
    assert [i for i, _ in out] == [0, 1, 2, 3, 4]
    assert out[1][1] >= 1004.5  # tick 1 was due at 1002, ran at resume (1004.5)


def test_same_seed_same_trace_hash() -> None:
    """Determinism self-check: a seed twice gives one hash; another seed may differ."""
    assert _ticks(7)[1] == _ticks(7)[1]


def test_executor_and_deadlock_and_livelock_fail_the_run() -> None:
    """run_in_executor raises; an unresolvable wait and a busy instant fail instead of hanging."""
    loop = SimLoop(0, livelock_limit=1000)
    try:
        with pytest.raises(SimViolation):
            loop.run_in_executor(None, print)
        with pytest.raises(SimDeadlock):
            loop.run_until_complete(loop.create_future())

        async def spin() -> None:
            while True:
                await asyncio.sleep(0)

        with pytest.raises(SimLivelock):
            loop.run(spin())
    finally:
        loop.close()
