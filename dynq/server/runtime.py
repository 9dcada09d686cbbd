"""The node's ZeroMQ resources, opened and closed in one declared order.

Open: context; the ZAP handler (CURVE) *before any bind*, since without one libzmq lets
anyone in; the ROUTER (options, then bind); the DEALER mux to the peers. Other sockets
made on the context (gossip) are handed over with :meth:`Runtime.own`.

Close, the reverse: the mux, the owned sockets (last owned first), the ROUTER, the ZAP
handler, and the context last, once every socket on it is closed (``term`` would wait for
them). Storage is not a socket: the node closes it after the runtime.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import zmq

from dynq_client.health import Health
from dynq_client.transport import RequestMux, configure_socket

from ..config import ConfigError, NodeConfig
from ..security import REQUEST_DOMAIN, NodeSecurity

log = logging.getLogger(__name__)


class Runtime:
    """A context, a bound ROUTER and a peer mux; :meth:`close` undoes :meth:`open`."""

    def __init__(self, context: zmq.Context[Any], router: zmq.Socket[Any], mux: RequestMux,
                 security: NodeSecurity | None) -> None:
        self.context = context
        self.router = router  # requests from clients and peers
        self.mux = mux  # DEALERs to the peers
        self.security = security
        self._owned: list[Callable[[], None]] = []  # closers of other sockets on the context
        self.closed = False

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop, config: NodeConfig, security: NodeSecurity | None,
             health: Health, context_factory: Callable[[], zmq.Context[Any]] = zmq.Context) -> Runtime:
        context: zmq.Context[Any] = context_factory()
        router: zmq.Socket[Any] | None = None
        try:
            if security is not None:  # before any bind: without a ZAP handler libzmq lets anyone in
                security.start(context)
            router = context.socket(zmq.ROUTER)
            configure_socket(router, config.limits, hwm=config.socket_hwm)
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            # A reply that cannot be queued (sender gone, or its queue at socket_hwm because it
            # does not read) raises instead of vanishing silently, so it is counted.
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if security is not None:
                security.serve(router, REQUEST_DOMAIN)
            try:
                router.bind(config.listen)
            except zmq.ZMQError as exc:
                raise ConfigError(f"cannot listen on {config.listen}: {exc}") from exc
            mux = RequestMux(
                loop, context=context, limits=config.limits, connect_grace=0.5, health=health,
                socket_setup=security.own.apply if security else None,
            )
        except BaseException:
            if router is not None:
                router.close(0)
            if security is not None:
                security.stop()
            context.term()
            raise
        return cls(context, router, mux, security)

    def own(self, close: Callable[[], None]) -> None:
        """Close another socket of this context (gossip's) with the runtime, before the ROUTER."""
        self._owned.append(close)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.mux.close()
        for close in reversed(self._owned):
            close()
        self.router.close(0)
        if self.security is not None:
            self.security.stop()
        self.context.term()
