"""The node's background work under one supervision policy (riak_kv_sup, FDB's ActorCollection).

A *child* is a long-running loop (gossip, handoff, transfers, anti-entropy, probes, the
systemd watchdog). An unexpected exception in one is logged and the child restarted
after a delay: one bug must not silently end a loop the node depends on. A child that
returns has finished (a disabled feature returns at once).

*Spawned* work is request-bound (a repair pass an operator asked for): tracked, so that
shutdown cancels it and waits for it, and never restarted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Coroutine

log = logging.getLogger(__name__)


class ServiceGroup:
    """Supervised loops and tracked tasks, stopped (cancelled and awaited) together."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, restart_delay_s: float = 1.0) -> None:
        self.loop = loop
        self.restart_delay_s = restart_delay_s
        self.restarts = 0  # children restarted after an exception
        self._tasks: set[asyncio.Task[Any]] = set()  # children and spawned work still running

    def add(self, name: str, run: Callable[[], Awaitable[None]], *, restart_delay_s: float | None = None) -> None:
        """Start the child ``run()`` now, restarting it after ``restart_delay_s`` whenever
        it raises."""
        delay = self.restart_delay_s if restart_delay_s is None else restart_delay_s
        self._track(self.loop.create_task(self._supervise(name, run, delay), name=name))

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``work`` as a tracked task (cancelled and awaited at :meth:`stop`)."""
        return self._track(self.loop.create_task(work, name=name))

    def _track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]], delay: float) -> None:
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die
                self.restarts += 1
                log.exception("%s failed; restarting it in %.1f s", name, delay)
            await asyncio.sleep(delay)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def stop(self, timeout_s: float) -> None:
        """Cancel every child and task, and wait (bounded) for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s ended with %r while stopping", task.get_name(), task.exception())
        for task in pending:
            log.warning("%s did not stop within %.1f s", task.get_name(), timeout_s)
