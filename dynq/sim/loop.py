"""A seeded, virtual-time asyncio event loop that hosts many simulated machines.

:class:`SimLoop` is a stock :class:`asyncio.SelectorEventLoop` with one substitution: its
selector never asks the OS anything. When the loop would sleep for ``timeout`` seconds the
selector adds ``timeout`` to a virtual clock and returns at once, so a simulated minute of
timers costs only the callbacks it runs. Everything dynq schedules through the loop
(``call_soon``, ``call_later``/``call_at``, ``asyncio.sleep``, ``loop.time()``) therefore runs
in virtual time unchanged. ``call_soon`` stays FIFO (dynq relies on "flush after the burst").

File descriptors are fake: a simulated socket asks :meth:`SimLoop.new_fd` for a number and
calls :meth:`SimLoop.signal_fd` when its ZeroMQ-style notification fd would become readable.
The selector reports signalled fds whose reader is registered, exactly as epoll reports a
readable zmq FD (level-triggered on the fd, which is itself edge-triggered on messages).
A real fd, ``run_in_executor`` or a call from another thread raises :class:`SimViolation`:
the simulation cannot be deterministic around them.

Hosts (after madsim's kill for async Rust): each simulated machine is a :class:`SimHost`;
code runs "on" it inside a ``contextvars`` context whose :data:`_CURRENT` variable names the
host *incarnation*. Tasks and future callbacks carry their context, so every callback the
loop runs can be attributed. After :meth:`SimHost.kill` the incarnation is stale and its
callbacks become no-ops; while :meth:`SimHost.pause` holds, they are deferred in order and
re-queued on resume (SIGSTOP, a GC stall, a thread stuck in fsync). Network events run in
the simulator's own (host-less) context, so packets already on the wire survive a crash.

Nondeterminism is perturbed only where asyncio and the OS really are nondeterministic: host
timers fire a seeded little late (``timer_jitter``); link latency and the interleaving of
deliveries on different links belong to :mod:`dynq.sim.net`. All randomness comes from
:meth:`SimLoop.rng` streams derived from the one seed. A running hash of delivered events
(:meth:`trace` / :meth:`trace_hash`) lets a run check that the same seed replays the same
history. A livelock watchdog fails the run when too many loop passes happen at one virtual
instant, and a run with nothing left to do fails with :class:`SimDeadlock` instead of
hanging.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import random
import selectors
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar, cast, TypeVarTuple, Unpack

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")

FAKE_FD_BASE = 1 << 24  # fake fds start far above any real one, so they can never collide


class SimError(RuntimeError):
    """A run that the simulation cannot continue (the seed failed)."""


class SimViolation(SimError):
    """The simulated code did something the simulation cannot model deterministically."""


class SimLivelock(SimError):
    """Too many loop passes at one virtual instant: time would never advance."""


class SimDeadlock(SimError):
    """Nothing is ready and no timer is pending: a real loop would sleep forever."""


class _Incarnation:
    """One life of a host: callbacks scheduled in it die with it."""

    __slots__ = ("host", "number")

    def __init__(self, host: SimHost, number: int) -> None:
        self.host = host  # the machine
        self.number = number  # which of its lives

    @property
    def current(self) -> bool:
        return self.host.alive and self.host.incarnation == self.number

    def __repr__(self) -> str:
        return f"<{self.host.name}#{self.number}>"


_CURRENT: contextvars.ContextVar[_Incarnation | None] = contextvars.ContextVar("dynq_sim_host", default=None)


def current_host() -> SimHost | None:
    """The host whose code is running now (None: the simulator itself)."""
    inc = _CURRENT.get()
    return inc.host if inc is not None else None


class _Guard:
    """Wraps a host's callback: a no-op once the incarnation is dead, deferred while paused."""

    __slots__ = ("inc", "fn", "ctx", "loop")

    def __init__(self, loop: SimLoop, inc: _Incarnation, fn: Callable[..., object], ctx: contextvars.Context) -> None:
        self.loop = loop
        self.inc = inc
        self.fn = fn
        self.ctx = ctx

    def __call__(self, *args: Any) -> None:
        inc = self.inc
        host = inc.host
        if not (host.alive and host.incarnation == inc.number):
            self.loop.dropped_callbacks += 1
            return
        if host.paused:
            host._deferred.append((self, args))
            return
        self.fn(*args)

    def __repr__(self) -> str:
        return f"<guard {self.inc!r} {self.fn!r}>"


class SimHost:
    """A simulated machine: the unit of kill, pause and restart."""

    def __init__(self, loop: SimLoop, name: str) -> None:
        self.loop = loop
        self.name = name
        self.incarnation = 0  # bumped by every kill: stale callbacks compare against it
        self.alive = True
        self.paused = False
        self._deferred: list[tuple[_Guard, tuple[Any, ...]]] = []  # callbacks held by a pause
        self._resume_handle: asyncio.TimerHandle | None = None
        self.kill_listeners: list[Callable[[SimHost], None]] = []  # the network and disks tear down here
        self._token = _Incarnation(self, 0)

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead"
        return f"<SimHost {self.name}#{self.incarnation} {state}{' paused' if self.paused else ''}>"

    # --- running code on the host -----------------------------------------------------

    def context(self) -> contextvars.Context:
        """A fresh context bound to this incarnation: what runs in it belongs to the host."""
        if not self.alive:
            raise SimError(f"{self.name} is down")
        ctx = contextvars.Context()
        ctx.run(_CURRENT.set, self._token)
        return ctx

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a task of this host."""
        return self.loop.create_task(coro, name=name, context=self.context())

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` now, on this host (e.g. to build a node or a client)."""
        return self.context().run(fn, *args)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> asyncio.Handle:
        return self.loop.call_soon(fn, *args, context=self.context())

    # --- faults -----------------------------------------------------------------------

    def kill(self) -> None:
        """kill -9: every callback of this life becomes a no-op; listeners drop its sockets
        and files. The host stays down until :meth:`restart`."""
        if not self.alive:
            return
        self.alive = False
        self.paused = False
        self._deferred.clear()
        self.incarnation += 1
        self._token = _Incarnation(self, self.incarnation)
        self.loop.trace("kill", self.name)
        self.loop._forget_fds_of(self)
        for listener in list(self.kill_listeners):
            listener(self)

    def restart(self) -> None:
        """Bring the host up again as a new incarnation (then spawn its code again)."""
        if self.alive:
            raise SimError(f"{self.name} is already up")
        self.alive = True
        self.loop.trace("restart", self.name)

    def pause(self, duration: float | None = None) -> None:
        """Freeze the host (SIGSTOP): its callbacks wait until :meth:`resume`, or ``duration``."""
        if not self.alive:
            return
        self.paused = True
        self.loop.trace("pause", self.name)
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if duration is not None:
            inc = self.incarnation

            def wake() -> None:
                if self.incarnation == inc:
                    self.resume()

            self._resume_handle = self.loop.sim_call_later(duration, wake)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.loop.trace("resume", self.name)
        deferred, self._deferred = self._deferred, []
        for guard, args in deferred:  # in the order they came due: FIFO survives the pause
            self.loop._requeue(guard, args)


class _FdMap(Mapping[Any, selectors.SelectorKey]):
    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __getitem__(self, fd: Any) -> selectors.SelectorKey:
        return self._keys[fd]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class _JumpSelector(selectors.BaseSelector):
    """Never blocks: reports signalled fake fds, or jumps the virtual clock to the next timer."""

    def __init__(self) -> None:
        self._keys: dict[int, selectors.SelectorKey] = {}
        self.loop: SimLoop | None = None  # set once the loop exists; until then the self-pipe registers

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if self.loop is not None and fd not in self.loop._fd_owner:
            raise SimViolation(f"real file descriptor {fd} registered with the simulated loop")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        ready: list[tuple[selectors.SelectorKey, int]] = []
        for fd in loop._signalled:
            key = self._keys.get(fd)
            if key is None or not key.events & selectors.EVENT_READ:
                continue
            owner = loop._fd_owner.get(fd)
            if owner is not None and (not owner.current or owner.host.paused):
                continue  # a dead or frozen process reads nothing
            ready.append((key, selectors.EVENT_READ))
        loop._passes_at_instant += 1
        if ready or timeout == 0:
            if loop._passes_at_instant > loop.livelock_limit:
                raise SimLivelock(f"{loop._passes_at_instant} loop passes at t={loop.time():.6f}: time cannot advance")
            return ready
        if timeout is None:
            raise SimDeadlock(f"nothing runnable and no timer pending at t={loop.time():.6f}")
        loop._advance(timeout)
        return ready

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return _FdMap(self._keys)

    def close(self) -> None:
        self._keys.clear()


class SimLoop(asyncio.SelectorEventLoop):
    """The simulation's event loop: virtual time, fake fds, hosts, one seed."""

    def __init__(
        self,
        seed: int = 0,
        *,
        start_time: float = 1000.0,
        timer_jitter: float = 0.0005,
        timer_jitter_p: float = 0.2,
        livelock_limit: int = 200_000,
    ) -> None:
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self
        self._jump = selector  # our selector, typed
        self.seed = seed
        self._now = start_time  # the virtual monotonic clock, seconds
        self.timer_jitter = timer_jitter  # a host timer fires up to this much late...
        self.timer_jitter_p = timer_jitter_p  # ...this often
        self.livelock_limit = livelock_limit  # loop passes allowed at one virtual instant
        self._passes_at_instant = 0
        self._jitter_rng = self.rng("loop.timers")
        self._trace = hashlib.blake2b(digest_size=8)
        self.trace_events = 0  # events folded into the trace hash
        self.dropped_callbacks = 0  # callbacks of dead incarnations skipped
        self.advanced = 0  # times the clock jumped
        self.hosts: dict[str, SimHost] = {}
        self._fd_owner: dict[int, _Incarnation | None] = {}  # fake fd -> the incarnation that owns it
        self._signalled: dict[int, None] = {}  # fake fds that read as ready (ordered set)
        self._next_fd = FAKE_FD_BASE
        self._thread = threading.get_ident()
        self.sim_context = contextvars.Context()  # the simulator's own context: no host
        self.unhandled: list[dict[str, Any]] = []  # exception-handler reports, for invariant checks
        self.set_exception_handler(_record_exception)

    # --- clock --------------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def _advance(self, dt: float) -> None:
        self.trace("t", round(self._now, 9), self._passes_at_instant)
        self._now += dt
        self._passes_at_instant = 0
        self.advanced += 1

    # --- randomness and trace -----------------------------------------------------------

    def rng(self, stream: str) -> random.Random:
        """An independent random stream for one purpose, derived from the seed (adding a
        stream, or drawing more from one, leaves the others as they were)."""
        digest = hashlib.blake2b(f"{self.seed}:{stream}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def trace(self, *event: object) -> None:
        """Fold an event into the run's trace hash (same seed, same code: same hash)."""
        self._trace.update(repr(event).encode())
        self.trace_events += 1

    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    # --- hosts --------------------------------------------------------------------------

    def add_host(self, name: str) -> SimHost:
        if name in self.hosts:
            raise SimError(f"host {name} exists")
        host = SimHost(self, name)
        self.hosts[name] = host
        return host

    # --- scheduling ---------------------------------------------------------------------

    def _guard(self, fn: Callable[[Unpack[_Ts]], object],
               context: contextvars.Context | None) -> tuple[Callable[[Unpack[_Ts]], object], contextvars.Context]:
        """Attribute a callback to the host incarnation of its context (none: the simulator's)."""
        ctx = context if context is not None else contextvars.copy_context()
        inc = ctx.get(_CURRENT)
        if inc is None:
            return fn, ctx
        return cast(Callable[[Unpack[_Ts]], object], _Guard(self, inc, fn, ctx)), ctx

    def call_soon(self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts],
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        self._check_thread()
        fn, ctx = self._guard(callback, context)
        return super().call_soon(fn, *args, context=ctx)

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts],
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        self._check_thread()
        fn, ctx = self._guard(callback, context)
        if fn is not callback and self.timer_jitter > 0 and self._jitter_rng.random() < self.timer_jitter_p:
            when += self._jitter_rng.random() * self.timer_jitter  # timers fire late, never early
        return super().call_at(when, fn, *args, context=ctx)

    def _requeue(self, guard: _Guard, args: tuple[Any, ...]) -> None:
        super().call_soon(guard, *args, context=guard.ctx)

    def sim_call_at(self, when: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        """Schedule simulator work (a delivery, a fault): exact time, no host, survives kills."""
        return super().call_at(when, callback, *args, context=self.sim_context)

    def sim_call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        return self.sim_call_at(self._now + delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts],
                             context: contextvars.Context | None = None) -> asyncio.Handle:
        self._check_thread()
        return self.call_soon(callback, *args, context=context)

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise SimViolation("a thread touched the simulated loop")

    def run_in_executor(self, executor: Any, func: Callable[[Unpack[_Ts]], T], *args: Unpack[_Ts]) -> asyncio.Future[T]:
        raise SimViolation(f"run_in_executor({func!r}) in the simulation: threads are not deterministic")

    def set_default_executor(self, executor: Any) -> None:
        raise SimViolation("executors are not simulated")

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        raise NotImplementedError("signals are not simulated")  # dynq already tolerates this

    # --- fake fds -----------------------------------------------------------------------

    def new_fd(self, owner: SimHost | None) -> int:
        """A fake fd for a simulated socket owned by ``owner``'s current incarnation."""
        fd = self._next_fd
        self._next_fd += 1
        self._fd_owner[fd] = owner._token if owner is not None else None
        return fd

    def signal_fd(self, fd: int) -> None:
        """The fd reads as ready until :meth:`clear_fd` (the socket processed its commands)."""
        if fd in self._fd_owner:
            self._signalled[fd] = None

    def clear_fd(self, fd: int) -> None:
        self._signalled.pop(fd, None)

    def release_fd(self, fd: int) -> None:
        """The socket is closed: the fd never reads ready again (it is never reused)."""
        self._signalled.pop(fd, None)

    def _forget_fds_of(self, host: SimHost) -> None:
        for fd, owner in list(self._fd_owner.items()):
            if owner is not None and owner.host is host:
                self._signalled.pop(fd, None)
                key = self._jump.get_map().get(fd)
                if key is not None:
                    self._jump.unregister(fd)
                    reader, writer = key.data
                    for h in (reader, writer):
                        if h is not None:
                            h.cancel()

    def add_reader(self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        if not isinstance(fd, int) or fd not in self._fd_owner:
            raise SimViolation(f"add_reader on a real file descriptor {fd!r}")
        fn, _ctx = self._guard(callback, None)  # dispatched by the selector: guard it here
        super().add_reader(fd, fn, *args)

    def add_writer(self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        raise SimViolation(f"add_writer({fd!r}): writers are not simulated")

    # --- driving ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the simulator's context to completion (virtual time passes)."""
        task = self.create_task(coro, context=self.sim_context.copy())
        return self.run_until_complete(task)

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        self.run(asyncio.sleep(seconds))


def _record_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Keep what the loop would have logged: a harness turns these into failures."""
    assert isinstance(loop, SimLoop)
    loop.unhandled.append(context)
    loop.default_exception_handler(context)


__all__ = [
    "SimDeadlock", "SimError", "SimHost", "SimLivelock", "SimLoop", "SimViolation", "current_host",
]
