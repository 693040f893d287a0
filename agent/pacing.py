"""Keeping time in the loop: pacing to camera.fps, calls that a stop signal can cut short, signal flags."""

from __future__ import annotations

import math
import os
import queue
import select
import threading
import time
from typing import Any, Callable, Generic, TypeVar

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

    def wait(self, timeout: float, stop: threading.Event, also: Any = None) -> bool:
        """Block until a reload is requested, ``stop`` is set, ``also`` (anything with a ``fileno()``, such
        as the command inbox) turns readable or ``timeout`` passes; True unless the time ran out."""
        if self._flag or stop.is_set():
            return True
        poller = select.poll()
        descriptors = [self._read_fd] + ([also.fileno()] if also is not None else [])
        plain = not isinstance(stop, StopSignal)  # a plain Event (a caller that owns the signals) has no descriptor
        if isinstance(stop, StopSignal):
            descriptors.append(stop.fileno())
        for fd in descriptors:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            woken = bool(poller.poll(max(0, math.ceil((min(left, 0.05) if plain else left) * 1000))))
            if woken or self._flag or stop.is_set():
                return True
            if left <= 0:
                return False

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


class Worker:
    """One long-lived thread for the calls the main loop waits on (a read, a predict), so that a stop
    signal can abandon a call that hangs -- without starting a thread per call.

    An abandoned call keeps its thread until it returns; that thread then ends, and the next call gets
    a fresh one.
    """

    def __init__(self, name: str = "worker"):
        self.name = name
        self._jobs: queue.SimpleQueue | None = None
        self._last: Job[Any] | None = None

    def call(self, call: Callable[[], T], stop: threading.Event) -> T:
        """Run ``call`` on the worker thread; raise Stopped as soon as ``stop`` is set."""
        return self.submit(call, stop).result(stop)

    def submit(self, call: Callable[[], T], stop: threading.Event) -> Job[T]:
        """Start ``call`` on the worker thread and return at once; ``result()`` waits for it."""
        if stop.is_set():
            raise Stopped()
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._jobs,), name=self.name, daemon=True).start()
        job: Job[T] = Job(self)
        self._jobs.put((call, job.outcome, job.done))
        self._last = job
        return job

    def idle(self, timeout_s: float) -> bool:
        """Whether the last call is over, waiting up to ``timeout_s`` for it even after a stop."""
        return self._last is None or self._last.done.wait(timeout_s)

    def close(self) -> None:
        """Let the thread end (after the call in flight, if any)."""
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None


class Job(Generic[T]):
    """A call handed to a Worker: its outcome once done."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.outcome: dict = {}
        self.done = threading.Event()

    def result(self, stop: threading.Event) -> T:
        """The call's value (or its exception, raised here); Stopped as soon as ``stop`` is set."""
        while not self.done.wait(0.05):
            if stop.is_set():
                self.worker.close()  # abandoned: the thread ends once the call returns
                raise Stopped()
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["value"]


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        call, outcome, done = job
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()
        del call, outcome, done, job  # hold nothing (a frame, a reply) while idle


def call_unless_stopped(call: Callable[[], T], stop: threading.Event) -> T:
    """Run ``call`` in a helper thread of its own; raise Stopped as soon as ``stop`` is set (the call is abandoned)."""
    worker = Worker("predict")
    try:
        return worker.call(call, stop)
    finally:
        worker.close()
