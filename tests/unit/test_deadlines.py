"""The request deadlines and the shared short timers (read hedges) of RequestMux: one loop
timer for all of them, pruned lazily."""

from __future__ import annotations

import asyncio

from dynq_client.transport import SharedTimers, _Deadlines


def test_only_unanswered_requests_expire_in_deadline_order() -> None:
    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        live: dict[int, object] = {}
        expired: list[int] = []

        def expire(req_id: int) -> None:
            live.pop(req_id)
            expired.append(req_id)

        deadlines = _Deadlines(loop, live, expire)
        now = loop.time()
        for req_id, delay in [(1, 0.20), (2, 0.05), (3, 0.10), (4, 0.02)]:
            live[req_id] = object()
            deadlines.add(now + delay, req_id)
        del live[3]  # answered in time: never expires
        for _ in range(200):  # bounded
            if not live:
                break
            await asyncio.sleep(0.01)
        return expired

    assert asyncio.run(run()) == [4, 2, 1]


def test_answered_entries_do_not_accumulate() -> None:
    """Requests answered in order leave the heap about as large as what is in flight."""
    loop = asyncio.new_event_loop()
    try:
        live: dict[int, object] = {}
        deadlines = _Deadlines(loop, live, lambda req_id: None)
        for req_id in range(10_000):
            live[req_id] = object()
            deadlines.add(loop.time() + 60, req_id)
            live.pop(req_id - 3, None)  # three in flight at any time
        assert len(deadlines.heap) <= 5
        deadlines.close()
        assert deadlines.timer is None and not deadlines.heap
    finally:
        loop.close()


def test_an_expiry_callback_may_send_again() -> None:
    """A callback that sends a new request from inside the timer (a retry) gets its deadline."""
    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        live: dict[int, object] = {}
        expired: list[int] = []

        def expire(req_id: int) -> None:
            live.pop(req_id)
            expired.append(req_id)
            if req_id == 1:
                live[2] = object()
                deadlines.add(loop.time() + 0.02, 2)

        deadlines = _Deadlines(loop, live, expire)
        live[1] = object()
        deadlines.add(loop.time() + 0.02, 1)
        for _ in range(100):  # bounded
            if len(expired) == 2:
                break
            await asyncio.sleep(0.01)
        return expired

    assert asyncio.run(run()) == [1, 2]


def test_shared_timers_run_uncancelled_callbacks_once_in_time_order() -> None:
    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        timers = SharedTimers(loop)
        fired: list[str] = []
        handles = {name: timers.call_later(delay, lambda name=name: fired.append(name))
                   for name, delay in [("late", 0.08), ("early", 0.01), ("cancelled", 0.02), ("middle", 0.04)]}
        handles["cancelled"].cancel()
        for _ in range(100):  # bounded
            if len(fired) >= 3 and not timers.heap:
                break
            await asyncio.sleep(0.01)
        handles["early"].cancel()  # cancelling one that already ran changes nothing
        await asyncio.sleep(0.02)
        return fired

    assert asyncio.run(run()) == ["early", "middle", "late"]


def test_shared_timers_a_failing_callback_does_not_strand_the_others() -> None:
    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        timers = SharedTimers(loop)
        fired: list[int] = []

        def boom() -> None:
            raise RuntimeError("a bug in one callback")

        timers.call_later(0.01, boom)
        timers.call_later(0.01, lambda: fired.append(1))
        timers.call_later(0.03, lambda: fired.append(2))
        for _ in range(100):  # bounded
            if len(fired) == 2:
                break
            await asyncio.sleep(0.01)
        return fired

    assert asyncio.run(run()) == [1, 2]


def test_cancelled_shared_timers_do_not_accumulate() -> None:
    """Hedges cancelled when their reads are answered leave the heap small."""
    loop = asyncio.new_event_loop()
    try:
        timers = SharedTimers(loop)
        handles = []
        for i in range(10_000):
            handles.append(timers.call_later(60, lambda: None))
            if i >= 3:
                handles[i - 3].cancel()  # three reads in flight at any time
        assert len(timers.heap) <= 5
        timers.close()
        assert timers.timer is None and not timers.heap
    finally:
        loop.close()
