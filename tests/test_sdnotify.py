"""sd_notify against real AF_UNIX datagram sockets the tests bind: a path socket and an abstract one."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from agent import sdnotify
from agent.sdnotify import Notifier, notify, watchdog_interval


@pytest.fixture
def path_socket():
    """A bound datagram socket at a short path (AF_UNIX paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    path = folder / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture
def abstract_socket():
    name = f"catdog-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_and_stopping_arrive_as_datagrams_on_a_path_socket(path_socket):
    sock, path = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("running: 0 results")
    assert received(sock) == "READY=1\nSTATUS=running: 0 results"
    assert notifier.status("degraded: server unreachable")
    assert received(sock) == "STATUS=degraded: server unreachable"
    assert notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    assert notifier.stopping()
    assert received(sock) == "STOPPING=1"
    assert notifier.ready()
    assert received(sock) == "READY=1"


def test_an_abstract_socket_name_starting_with_at_reaches_the_abstract_namespace(abstract_socket):
    sock, name = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    assert notifier.extend_timeout(2.5, "waiting for the model server")
    assert received(sock) == "EXTEND_TIMEOUT_USEC=2500000\nSTATUS=waiting for the model server"


def test_the_module_function_reads_notify_socket_from_the_environment_at_each_call(abstract_socket, monkeypatch):
    sock, name = abstract_socket
    assert notify("READY=1") is False, "no NOTIFY_SOCKET yet"
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert notify("READY=1\nSTATUS=up") is True
    assert received(sock) == "READY=1\nSTATUS=up"


def test_status_text_is_kept_on_one_line_so_it_cannot_inject_other_assignments(abstract_socket):
    sock, name = abstract_socket
    assert Notifier({"NOTIFY_SOCKET": name}).status("camera lost\nREADY=1\tretrying")
    assert received(sock) == "STATUS=camera lost READY=1 retrying"


def test_without_notify_socket_every_call_is_a_no_op_returning_false():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval is None


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234", "@"])
def test_an_unusable_notify_socket_value_turns_notifications_off(value, caplog):
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled and notifier.ready() is False
    assert "notifications are off" in caplog.text


def test_a_dead_socket_does_not_raise_and_is_logged_once(caplog):
    folder = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    gone = folder / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(gone))
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    try:
        for address in (str(gone), str(folder / "never-existed")):
            notifier = Notifier({"NOTIFY_SOCKET": address})
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
                results = [notifier.watchdog() for _ in range(3)] + [notifier.ready("x")]
            assert results == [False] * 4
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and address in warnings[0].getMessage()
    finally:
        gone.unlink()
        folder.rmdir()


def test_the_module_function_logs_a_dead_socket_once_across_calls(monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", "@catdog-test-nobody-listens-" + uuid.uuid4().hex)
    monkeypatch.setattr(sdnotify, "_shared", None)
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        assert [notify("WATCHDOG=1") for _ in range(3)] == [False] * 3
    assert len(caplog.records) == 1


def test_a_full_socket_queue_gives_up_after_the_send_timeout_instead_of_blocking(abstract_socket):
    _, name = abstract_socket  # bound but never read: its queue fills up
    notifier = Notifier({"NOTIFY_SOCKET": name}, timeout=0.05)
    sent = 0
    while notifier.watchdog():
        sent += 1
        assert sent < 100_000, "the queue never filled"
    started = time.monotonic()
    assert notifier.watchdog() is False
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["usec", "our-pid", "other-pid", "bad-pid", "zero", "garbage", "unset"],
)
def test_watchdog_interval_is_half_the_period_and_only_for_our_pid(env, expected):
    assert watchdog_interval(env) == expected
    assert Notifier(env).watchdog_interval == expected


def test_watchdog_interval_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
