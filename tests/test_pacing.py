"""The loop's clock: pacing, interruptible calls, and a stop flag that signal handlers can set safely."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_until

from agent.pacing import Pacer, Stopped, StopSignal, Worker, call_unless_stopped


def test_stop_signal_wakes_every_waiting_thread_and_stays_set():
    stop = StopSignal()
    woke = []
    waiters = [threading.Thread(target=lambda: woke.append(stop.wait(30))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    stop.set("test")
    for waiter in waiters:
        waiter.join(5)
    assert woke == [True, True, True] and stop.is_set() and stop.reason == "test"
    assert stop.wait(0) is True
    with pytest.raises(RuntimeError):
        stop.clear()


def test_stop_signal_set_from_a_signal_handler_during_a_wait_never_deadlocks():
    """threading.Event.set() in a handler that interrupted Event.wait() deadlocked the agent for good
    (seen once in a SIGTERM test); with Event this script hangs within a few hundred rounds."""
    code = """
import os, signal, sys, threading
from agent.pacing import StopSignal
for round in range(2000):
    stop = StopSignal()
    signal.signal(signal.SIGUSR1, lambda *a: stop.set("usr1"))
    threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    while not stop.wait(0):  # a busy waiter holds Event's lock most of the time: the worst case
        pass
    stop.close()
print("done")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "done", proc.stderr


def test_pacer_spaces_iterations_without_bursting_after_a_slow_one():
    pacer = Pacer(fps=10)
    first = pacer.next_delay()
    assert 0 <= first <= 0.1
    time.sleep(0.35)  # a slow iteration: the pacer must not try to catch up with a burst
    assert pacer.next_delay() == 0.0
    assert 0 < pacer.next_delay() <= 0.1  # one interval after the late iteration, not a burst of them
    assert Pacer(fps=0).next_delay() == 0.0


def test_call_unless_stopped_returns_the_value_or_raises_the_calls_error():
    stop = StopSignal()
    assert call_unless_stopped(lambda: 42, stop) == 42
    with pytest.raises(ZeroDivisionError):
        call_unless_stopped(lambda: 1 / 0, stop)


def test_call_unless_stopped_abandons_a_hung_call_when_stopped():
    stop = StopSignal()
    release = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        call_unless_stopped(lambda: release.wait(30), stop)
    assert time.monotonic() - started < 5
    release.set()




def workers() -> int:
    """Threads of the Worker under test (other tests' timers and helpers may come and go meanwhile)."""
    return sum(thread.name == "test-worker" for thread in threading.enumerate())


def test_worker_runs_every_call_on_one_thread_and_hands_back_values_and_errors():
    stop, worker = threading.Event(), Worker("test-worker")
    threads = {worker.call(threading.get_ident, stop) for _ in range(200)}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert workers() == 1
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0, stop)
    assert worker.call(lambda: 42, stop) == 42
    worker.close()
    assert wait_until(lambda: workers() == 0)


def test_worker_abandons_a_hung_call_on_stop_and_its_thread_ends_when_the_call_returns():
    stop, worker = threading.Event(), Worker("test-worker")
    release = threading.Event()
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(Stopped):
        worker.call(lambda: release.wait(30), stop)
    with pytest.raises(Stopped):
        worker.call(lambda: 1, stop)  # stopped: nothing more is started
    release.set()
    assert wait_until(lambda: workers() == 0)
    fresh = threading.Event()
    assert worker.call(lambda: 7, fresh) == 7  # a later call (a new run) gets a new thread
    worker.close()
