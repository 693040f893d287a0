"""The operator's commands against real agents: ``catdog-agent assign`` and ``catdog-agent watch``.

Two ``catdog-agent run`` processes (devices ``front`` and ``back``, both in group ``yard``) classify a looping
folder at 10 fps against one stand-in serving versions 1 and 2, over one real mosquitto. The operator side runs
the installed console script as a child process, exactly as typed in a shell: exit codes and printed lines
are the contract. What changed is proved by the agents' results and by the stand-in's URL log; every message
seen under the test's prefix, the CLI's commands included, is validated against its JSON Schema.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Callable

import pytest
from helpers_agents import GROUP, Fleet

CLI = Path(sys.executable).parent / "catdog-agent"  # the installed console script, as an operator runs it
DEVICES = ("front", "back")
TERMINAL = (40, 160)  # rows, columns of the pseudo-terminal
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


@pytest.fixture
def fleet(tmp_path, devserver, broker, agent_processes, photos):
    running = Fleet(tmp_path, devserver, broker.port, agent_processes, photos)
    yield running
    running.stop()


def start_pair(fleet: Fleet, versions: tuple[int, int] = (1, 1)) -> None:
    """``front`` and ``back`` running, each answering with its configured version, its retained state saying so."""
    for device, version in zip(DEVICES, versions):
        fleet.config(device, server={"version": version})
        fleet.start(device)
    for device, version in zip(DEVICES, versions):
        fleet.wait_version(device, str(version))
        fleet.wait_state(device, str(version))


def operator(fleet: Fleet, *args: str) -> list[str]:
    """``catdog-agent COMMAND --broker 127.0.0.1:PORT --prefix P ARGS...``."""
    command, *rest = args
    return [str(CLI), command, "--broker", f"127.0.0.1:{fleet.port}", "--prefix", fleet.prefix, *rest]


def run(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(operator(fleet, *args), capture_output=True, text=True, timeout=60)


def predicted(fleet: Fleet, version: int) -> list[str]:
    """The stand-in's URL log: predict requests addressed to ``version``."""
    return [r.path for r in fleet.server.recorded() if r.path.endswith(f"/versions/{version}:predict")]


def versions(fleet: Fleet, device: str, after: int = 0) -> set[str]:
    return {r["version"] for r in fleet.results(device)[after:]}


def test_assign_switches_only_the_named_device_and_refuses_a_version_the_server_lacks(fleet):
    start_pair(fleet)
    assert predicted(fleet, 2) == []
    front_seen = len(fleet.results("front"))

    switched = run(fleet, "assign", "front", "--version", "2")

    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.splitlines() == ["front  ok  version 2 (was 1)"]
    assert "assign version 2 to front: 1 device(s), 1 online" in switched.stderr
    fleet.wait_version("front", "2", after=front_seen)
    fleet.more_results("back")  # classified after front switched
    assert versions(fleet, "back") == {"1"}, "the other device switched too"
    assert predicted(fleet, 2), "the stand-in never saw a request for version 2"
    assert not fleet.collector.on("back/command/result"), "the other device was addressed"

    front_seen, back_seen = len(fleet.results("front")), len(fleet.results("back"))
    refused = run(fleet, "assign", "front", "--version", "9")

    assert refused.returncode == 1, refused.stderr
    [line] = refused.stdout.splitlines()
    assert line.startswith("front  REFUSED  ") and "version 9" in line, line
    assert "available versions: 2, 1" in line, line
    fleet.more_results("front")
    fleet.more_results("back")
    assert versions(fleet, "front", after=front_seen) == {"2"}, "a refused version changed the device"
    assert versions(fleet, "back", after=back_seen) == {"1"}
    assert predicted(fleet, 9) == []
    assert fleet.states("front")[-1]["pin"]["assigned"] == {"version": 2, "label": None}
    fleet.check_schemas(commands=True)


def test_assign_to_a_group_switches_every_member(fleet):
    start_pair(fleet)
    seen = {device: len(fleet.results(device)) for device in DEVICES}

    proc = run(fleet, "assign", f"group:{GROUP}", "--version", "2")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["back   ok  version 2 (was 1)", "front  ok  version 2 (was 1)"]
    assert f"assign version 2 to group:{GROUP}: 2 device(s), 2 online" in proc.stderr
    [sent] = fleet.collector.on("command")
    assert sent.topic == f"{fleet.prefix}/group/{GROUP}/command" and not sent.retain
    for device in DEVICES:
        fleet.wait_version(device, "2", after=seen[device])
    assert predicted(fleet, 2)
    fleet.check_schemas(commands=True)


class Watch:
    """``catdog-agent watch`` with its stdout on a pipe (plain text) or on a pseudo-terminal (the live table)."""

    def __init__(self, args: list[str], tty: bool):
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # the terminal's own size
        self.tty, self.raw = tty, b""
        if tty:
            self.fd, terminal = os.openpty()
            fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", *TERMINAL, 0, 0))
            try:
                self.process = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
            finally:
                os.close(terminal)
        else:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, env=env)
            assert self.process.stdout is not None
            self.fd = self.process.stdout.fileno()

    @property
    def output(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False at the end of the output."""
        if not select.select([self.fd], [], [], max(timeout, 0.0))[0]:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            chunk = b""
        self.raw += chunk
        return bool(chunk)

    def read_until(self, done: Callable[[str], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done(self.output):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                return done(self.output)
        return True

    def interrupt(self) -> int:
        """Ctrl-C, then the rest of the output; the exit code."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._read(0.2):
            pass
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.tty:
            os.close(self.fd)
        elif self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def watch():
    started: list[Watch] = []

    def start(args: list[str], tty: bool) -> Watch:
        started.append(Watch(args, tty))
        return started[-1]

    yield start
    for process in started:
        process.close()


def table_rows(output: str) -> dict[str, list[str]]:
    """Each device's last row in the tables drawn so far: DEVICE, AVAIL, STATUS, VERSION, RESULT, ..."""
    rows: dict[str, list[str]] = {}
    for line in ANSI.sub("", output).replace("\r", "").splitlines():
        cells = re.split(r" {2,}", line.strip())
        if len(cells) >= 5 and cells[0] in DEVICES:
            rows[cells[0]] = cells
    return rows


def shows(expected: dict[str, str]) -> Callable[[str], bool]:
    """Both devices online and running, each with its version and a rate above 0 (the results seen live: the
    state published when an agent started says fps 0)."""
    def done(output: str) -> bool:
        rows = table_rows(output)
        return all(device in rows and rows[device][1:4] == ["online", "running", version]
                   and re.fullmatch(r"~[1-9][0-9]*", rows[device][5]) is not None
                   for device, version in expected.items())
    return done


def test_watch_into_a_pipe_prints_plain_tables_of_both_agents_and_their_versions(fleet, watch):
    start_pair(fleet, versions=(1, 2))
    expected = {"front": "1", "back": "2"}

    plain = watch(operator(fleet, "watch", "--interval", "1"), tty=False)

    assert plain.read_until(shows(expected)), plain.output
    assert f"prefix {fleet.prefix}: 2 device(s), 2 online" in plain.output
    assert plain.interrupt() == 0, plain.output
    assert "\x1b" not in plain.output, "terminal control sequences in a pipe"
    header = next(line for line in plain.output.splitlines() if line.startswith("DEVICE"))
    assert header.split() == ["DEVICE", "AVAIL", "STATUS", "VERSION", "RESULT", "RES/MIN", "AGE", "LAST", "ERROR"]
    fleet.check_schemas()


def test_watch_in_a_terminal_draws_the_live_table_of_both_agents_and_their_versions(fleet, watch):
    start_pair(fleet, versions=(1, 2))
    expected = {"front": "1", "back": "2"}

    live = watch(operator(fleet, "watch"), tty=True)

    assert live.read_until(shows(expected)), live.output
    assert live.output.startswith(HIDE_CURSOR), "not drawn as a terminal table"
    assert f"prefix {fleet.prefix}: 2 device(s), 2 online" in ANSI.sub("", live.output)
    assert all(len(line) <= TERMINAL[1] for line in ANSI.sub("", live.output).replace("\r", "").splitlines())
    assert live.interrupt() == 0, live.output
    assert live.output.rstrip("\r\n").endswith(SHOW_CURSOR), "the cursor was left hidden"
    fleet.check_schemas()
