"""Commands as they arrive on paho's network thread, held for the main loop, which applies them.

Bounded (a flood of commands cannot grow memory; the oldest go first, counted) and with a pipe that
wakes the main loop out of its pacing wait, so a command is applied within milliseconds, not at the
next frame.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.commands import MAX_COMMAND_BYTES

logger = logging.getLogger(__name__)

MAX_WAITING = 32


@dataclass(frozen=True)
class Inbound:
    """One message from a command topic. ``payload`` is cut after MAX_COMMAND_BYTES + 1 (``size`` is the real one)."""

    topic: str
    payload: bytes
    size: int
    retained: bool  # delivered from the broker's store on subscribing, not as it was published


class CommandInbox:
    """Subscribes to the command topics on every connect and queues what arrives on them."""

    def __init__(self, topics: Sequence[str]):
        self.topics = tuple(topics)
        self.dropped = 0
        self._waiting: collections.deque[Inbound] = collections.deque()
        self._lock = threading.Lock()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def subscribe(self, client: Any) -> None:
        """Called on each (re)connect: a clean session forgets subscriptions."""
        if self.topics:
            client.subscribe([(topic, 1) for topic in self.topics])

    def put(self, topic: str, payload: bytes | bytearray, retained: bool) -> None:
        """From paho's thread: queue one message (an oversized one keeps only its first bytes and size)."""
        message = Inbound(topic, bytes(payload[:MAX_COMMAND_BYTES + 1]), len(payload), retained)
        with self._lock:
            if len(self._waiting) >= MAX_WAITING:
                self._waiting.popleft()
                self.dropped += 1
                logger.warning("commands arrive faster than they are applied: dropped the oldest count=%d",
                               self.dropped)
            self._waiting.append(message)
            if self._write_fd < 0:
                return  # closed: the client stopped
            try:
                os.write(self._write_fd, b"x")
            except OSError:  # the pipe is full: a wake-up is waiting already
                pass

    def take(self) -> list[Inbound]:
        """Everything waiting, oldest first (the main loop only)."""
        try:
            while os.read(self._read_fd, 512):
                pass
        except OSError:  # BlockingIOError: drained
            pass
        with self._lock:
            messages = list(self._waiting)
            self._waiting.clear()
        return messages

    def fileno(self) -> int:
        """Readable while commands wait."""
        return self._read_fd

    def close(self) -> None:
        """Release the pipe (once; commands still waiting are dropped with it)."""
        with self._lock:  # put() on paho's thread must never write to a descriptor number reused since
            if self._read_fd >= 0:
                os.close(self._read_fd)
                os.close(self._write_fd)
                self._read_fd = self._write_fd = -1
