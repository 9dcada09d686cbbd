"""The systemd notify protocol (sd_notify(3)), for `Type=notify` units.

A datagram of ``KEY=VALUE`` lines sent to the unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means the abstract namespace). Outside systemd the variable is unset
and every call is a no-op. Small enough that a dependency would cost more than it saves.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``) to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        return True
    except OSError as exc:  # systemd gone or socket unwritable: never fatal for the node
        log.warning("sd_notify %s failed: %s", states, exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None if systemd
    did not ask for them (or asked another process)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.01)
    except ValueError:
        return None
