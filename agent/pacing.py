"""Keeping time in the loop: pacing to camera.fps, calls that a stop signal can cut short, signal flags."""

from __future__ import annotations

import math
import os
import select
import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class StopSignal(threading.Event):
    """A one-way "stop" flag that a signal handler may set.

    ``threading.Event.set()`` takes a lock: called from a handler that interrupted the main thread
    while it held that same lock (inside ``Event.wait``), it deadlocks the process for good. This
    flag takes no lock: ``set()`` flips a bool and writes a byte to a pipe, and every waiter (any
    thread) wakes from ``select`` on it. Once set, it stays set.
    """

    def __init__(self) -> None:
        super().__init__()
        self._flag = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.reason = ""  # what set it, for the log (a handler must not log: logging takes locks)

    def set(self, reason: str = "") -> None:
        if not self._flag:
            self.reason = reason
            self._flag = True
            try:
                os.write(self._write_fd, b"x")
            except OSError:  # the pipe is full: it was written already
                pass

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        if not self._flag:
            poller = select.poll()  # poll, not select: no limit on the descriptor's number
            poller.register(self._read_fd, select.POLLIN)
            poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return self._flag

    def close(self) -> None:
        """Release the pipe (tests that make many of them; the agent keeps one for its lifetime)."""
        os.close(self._read_fd)
        os.close(self._write_fd)

    def clear(self) -> None:
        raise RuntimeError("a StopSignal cannot be cleared")

    def fileno(self) -> int:
        """The descriptor that becomes readable when the flag is set (to wait on it with others)."""
        return self._read_fd


class ReloadSignal:
    """A "read the config again" request (SIGHUP) that a signal handler may make; the main loop takes it.

    Lock-free for the same reason as StopSignal: ``set()`` flips a bool and writes a byte to a pipe.
    Requests that arrive before the loop looks are one reload: the file is read once, as it is then.
    """

    def __init__(self) -> None:
        self._flag = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def set(self) -> None:
        self._flag = True
        try:
            os.write(self._write_fd, b"x")
        except OSError:  # the pipe is full: a wake-up is already waiting
            pass

    def is_set(self) -> bool:
        return self._flag

    def take(self) -> bool:
        """True once per request, which it clears (the main loop only)."""
        if not self._flag:
            return False
        self._flag = False  # before draining: a request landing in between stays set
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Block until a reload is requested, ``stop`` is set or ``timeout`` passes; True if either is set."""
        if self._flag or stop.is_set():
            return True
        if not isinstance(stop, StopSignal):  # a plain Event (a caller that owns the signals) has no descriptor
            return stop.wait(timeout) or self._flag
        poller = select.poll()
        for fd in (self._read_fd, stop.fileno()):
            poller.register(fd, select.POLLIN)
        poller.poll(max(0, math.ceil(timeout * 1000)))
        return self._flag or stop.is_set()

    def close(self) -> None:
        """Release the pipe (tests; the agent keeps one for its lifetime)."""
        os.close(self._read_fd)
        os.close(self._write_fd)


class Stopped(Exception):
    """The stop event was set while waiting."""


def backoff_s(failures: int, first_s: float, max_s: float) -> float:
    """Wait after the ``failures``-th failure in a row: first_s, doubling each time, capped at max_s."""
    return min(max_s, first_s * 2 ** max(0, min(failures - 1, 16)))


class Pacer:
    """Holds the loop to at most ``fps`` iterations per second without bursting to catch up."""

    def __init__(self, fps: float):
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.next_due = time.monotonic()

    def next_delay(self) -> float:
        """Seconds to wait before the next iteration (0 when unpaced or already late)."""
        if not self.interval:
            return 0.0
        self.next_due = max(self.next_due + self.interval, time.monotonic())
        return max(0.0, self.next_due - time.monotonic())


def call_unless_stopped(call: Callable[[], T], stop: threading.Event) -> T:
    """Run ``call`` in a helper thread; raise Stopped as soon as ``stop`` is set (the call is abandoned)."""
    if stop.is_set():
        raise Stopped()
    outcome: dict = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="predict", daemon=True).start()
    while not done.wait(0.05):
        if stop.is_set():
            raise Stopped()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
