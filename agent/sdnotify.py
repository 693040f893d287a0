"""systemd's notify protocol (sd_notify(3)) in pure Python: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A message is one datagram of newline-separated ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` ("/path", or "@name" for the abstract namespace). Without ``$NOTIFY_SOCKET`` (not
started by systemd, or a unit that is not ``Type=notify``) every call is a no-op that returns False.
Sending never raises: a dead or full socket is logged once and reported as False, because the agent
must not stop classifying because the service manager is unreachable.

The watchdog is the caller's business: ping (``watchdog()``) from the loop only after real progress,
at the ``watchdog_interval()`` this module derives from ``$WATCHDOG_USEC`` (half the period, as
sd_watchdog_enabled(3) recommends), never from a free-running timer thread, so that a hung camera or
loop lets the watchdog fire.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0  # a full socket queue must not stall the main loop for long


def socket_address(value: str) -> str | None:
    """The address to connect to for a ``$NOTIFY_SOCKET`` value, or None if it is unusable here."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    return None  # empty, relative, or "vsock:…" (virtual machines only)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None if no watchdog is set for us.

    ``$WATCHDOG_PID``, when set, must be this process: a child that inherited the variables is not watched.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def one_line(text: str) -> str:
    """``STATUS=`` takes one line: a newline would start another assignment."""
    return " ".join(text.split())


class Notifier:
    """Sends notifications to the socket named in the environment at construction time.

    Typical use: ``n = Notifier()`` at start; ``n.ready("running")`` once the frame path works;
    ``n.watchdog()`` after each unit of real progress, at most every ``n.watchdog_interval`` seconds;
    ``n.status("…")`` on changes; ``n.reloading()`` then ``n.ready()`` around a SIGHUP; ``n.stopping()`` on SIGTERM.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, timeout: float = SEND_TIMEOUT_S):
        env = os.environ if environ is None else environ
        self.socket_name = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(self.socket_name) if self.socket_name else None
        self.timeout = timeout
        self._watchdog_interval = watchdog_interval(env)
        self._failure_logged = False
        if self.socket_name and self.address is None:
            logger.warning("NOTIFY_SOCKET=%r is not a socket path or abstract name; systemd notifications are off",
                           self.socket_name)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (we run under systemd with Type=notify)."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec=), or None when no watchdog watches this process."""
        return self._watchdog_interval

    def notify(self, state: str) -> bool:
        """Send ``state`` (``KEY=VALUE`` lines) as one datagram. False if not sent (no socket, or it failed)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.address)
                sock.sendall(state.encode("utf-8", "replace"))
        except (OSError, ValueError) as exc:
            if not self._failure_logged:
                self._failure_logged = True
                logger.warning("systemd notify socket %s failed: %s (logged once)", self.socket_name, exc)
            else:
                logger.debug("systemd notify socket %s failed: %s", self.socket_name, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``READY=1``); with ``Type=notify`` systemd waits for this."""
        return self.notify(_with_status("READY=1", status))

    def status(self, text: str) -> bool:
        """A one-line summary shown by ``systemctl status``."""
        return self.notify(f"STATUS={one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive (``WATCHDOG=1``): call only after real progress, every ``watchdog_interval`` seconds."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """The configuration is being read again (``RELOADING=1``); send ``ready()`` when done.

        ``MONOTONIC_USEC`` is what systemd >= 253 (``Type=notify-reload``) requires with it; older ones ignore it.
        """
        return self.notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}", status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (``STOPPING=1``)."""
        return self.notify(_with_status("STOPPING=1", status))

    def extend_timeout(self, seconds: float, status: str | None = None) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires (``EXTEND_TIMEOUT_USEC=``)."""
        return self.notify(_with_status(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}", status))


def _with_status(state: str, status: str | None) -> str:
    return state if status is None else f"{state}\nSTATUS={one_line(status)}"


_shared: Notifier | None = None


def notify(state: str) -> bool:
    """``sd_notify(0, state)``: send to ``$NOTIFY_SOCKET`` as it is now. False if not sent; never raises."""
    global _shared
    if _shared is None or _shared.socket_name != os.environ.get("NOTIFY_SOCKET", ""):
        _shared = Notifier()  # one per socket value, so a dead socket is logged once, not on every call
    return _shared.notify(state)
