"""The service group (dynq.server.services): one supervision policy, a stop that waits."""

from __future__ import annotations

import asyncio

from dynq.server.services import ServiceGroup


def test_a_child_that_raises_is_restarted_and_one_that_returns_is_done() -> None:
    async def scenario() -> None:
        group = ServiceGroup(asyncio.get_running_loop(), restart_delay_s=0.0)
        runs = {"flaky": 0, "once": 0}
        recovered = asyncio.Event()

        async def flaky() -> None:
            runs["flaky"] += 1
            if runs["flaky"] < 3:
                raise RuntimeError("a bug")
            recovered.set()
            await asyncio.Event().wait()  # then runs until stopped

        async def once() -> None:
            runs["once"] += 1

        group.add("flaky", flaky)
        group.add("once", once)
        await recovered.wait()
        await asyncio.sleep(0)
        assert runs == {"flaky": 3, "once": 1} and group.restarts == 2 and group.running == 1
        await group.stop(timeout_s=5.0)
        assert group.running == 0

    asyncio.run(scenario())


def test_stop_cancels_spawned_work_and_waits_for_its_cleanup() -> None:
    """Spawned (request-bound) work sees the cancellation and finishes before stop returns."""
    async def scenario() -> None:
        group = ServiceGroup(asyncio.get_running_loop())
        cleaned: list[str] = []
        started = asyncio.Event()

        async def work() -> None:
            try:
                started.set()
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0)  # cleanup that itself awaits
                cleaned.append("done")

        task = group.spawn(work(), "work")
        await started.wait()
        await group.stop(timeout_s=5.0)
        assert cleaned == ["done"] and task.cancelled() and group.running == 0

    asyncio.run(scenario())
