"""The agent under a real notify socket: READY, STATUS, WATCHDOG only after progress, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import SAMPLES, agent_command, agent_config

from agent.devserver import Fault


class NotifySocket:
    """What systemd's side of NOTIFY_SOCKET sees: every datagram with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.messages.append((time.monotonic(), data.decode()))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(list(self.messages)), timeout)

    def times_of(self, state: str) -> list[float]:
        with self.cond:
            return [at for at, text in self.messages if state in text.splitlines()]

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def start_under_systemd(config: Path, notify: NotifySocket, watchdog_s: float) -> subprocess.Popen:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    log = open(config.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen(agent_command("run", "--config", str(config)), stderr=log, env=env)
    process.log = log  # type: ignore[attr-defined]
    return process


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=10)
    finally:
        process.log.close()  # type: ignore[attr-defined]


def test_ready_status_watchdog_and_stopping_while_frames_flow(tmp_path, photos, devserver, broker):
    notify = NotifySocket(tmp_path / "notify")
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 10})
    process = start_under_systemd(config, notify, watchdog_s=1.0)
    try:
        assert notify.wait_for(lambda m: any("READY=1" in text for _, text in m))
        assert notify.wait_for(lambda m: sum("WATCHDOG=1" in text for _, text in m) >= 6)
        assert stop(process) == 0
    finally:
        stop(process)
        notify.close()

    texts = [text for _, text in notify.messages]
    ready = next(text for text in texts if "READY=1" in text)
    assert "STATUS=running" in ready, "READY comes after a frame made it through, with the summary"
    assert any(line.startswith("STATUS=") for text in texts for line in text.splitlines())
    assert "STOPPING=1" in texts[-1]
    pings = notify.times_of("WATCHDOG=1")
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 1.0, f"pings every WATCHDOG_USEC/2 while frames flow, never a whole period apart: {gaps}"
    assert min(gaps) >= 0.5 - 0.1, f"no faster than WATCHDOG_USEC/2: {gaps}"


def test_no_watchdog_pings_while_the_source_hangs(tmp_path, devserver, broker):
    fifo = tmp_path / "camera.jpg"  # a named pipe: reading it blocks until someone writes a picture
    os.mkfifo(fifo)
    notify = NotifySocket(tmp_path / "notify")
    config = agent_config(tmp_path, source=fifo, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 20})
    process = start_under_systemd(config, notify, watchdog_s=1.0)

    def write_one_picture() -> None:
        with open(SAMPLES / "dog.jpg", "rb") as picture, open(fifo, "wb") as pipe:
            shutil.copyfileobj(picture, pipe)

    writer = threading.Thread(target=write_one_picture)
    try:
        writer.start()  # one picture: one result, then the next read blocks on the empty pipe
        assert notify.wait_for(lambda m: any("READY=1" in text for _, text in m))
        writer.join(timeout=10)
        hung_since = time.monotonic()
        # The loop now sits in source.read(): a watchdog period passes with no ping.
        assert not notify.wait_for(lambda m: any(at > hung_since + 0.6 and "WATCHDOG=1" in text
                                                 for at, text in m), timeout=2.5)
        assert process.poll() is None, "the agent is alive but stuck: exactly what the watchdog is for"
    finally:
        process.kill()
        process.wait(timeout=10)
        process.log.close()  # type: ignore[attr-defined]
        notify.close()


def test_watchdog_keeps_being_fed_while_the_server_is_down(tmp_path, photos, builtin_models, broker):
    from agent.devserver import DevServer

    server = DevServer(builtin_models).start()
    notify = NotifySocket(tmp_path / "notify")
    config = agent_config(tmp_path, source=photos, server_url=server.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 10}, server={"retry": {"attempts": 2, "initial_s": 1.0,
                                                                             "max_s": 2.0}})
    process = start_under_systemd(config, notify, watchdog_s=1.0)
    try:
        assert notify.wait_for(lambda m: any("READY=1" in text for _, text in m))
        server.stop()
        down_since = time.monotonic()
        assert notify.wait_for(lambda m: any("STATUS=degraded" in text for _, text in m))
        assert notify.wait_for(lambda m: any(at > down_since + 4 and "WATCHDOG=1" in text for at, text in m))
        pings = [at for at in notify.times_of("WATCHDOG=1") if at > down_since]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert pings and max(gaps) < 1.0, f"a deliberate back-off is progress, not a hang: {gaps}"
        assert stop(process) == 0
    finally:
        stop(process)
        server.stop()
        notify.close()


def test_a_server_that_hangs_does_not_starve_the_watchdog(tmp_path, photos, devserver, broker):
    """Scaled down 15x: WatchdogSec=2 s, requests time out after 0.9 s (< half the period) and are retried."""
    notify = NotifySocket(tmp_path / "notify")
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 10},
                          server={"timeout_s": 0.9, "retry": {"attempts": 3, "initial_s": 0.5, "max_s": 0.9}})
    process = start_under_systemd(config, notify, watchdog_s=2.0)
    try:
        assert notify.wait_for(lambda m: any("READY=1" in text for _, text in m))
        devserver.inject(Fault(delay_s=60, count=1000))  # accepts every request, answers none
        hung_since = time.monotonic()
        assert notify.wait_for(lambda m: any(at > hung_since + 6 and "WATCHDOG=1" in text for at, text in m),
                               timeout=15)
        pings = [hung_since] + [at for at in notify.times_of("WATCHDOG=1") if at > hung_since]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 2.0, f"the watchdog period (2 s) passed without a ping: {gaps}"
        devserver.clear_faults()
        assert stop(process) == 0
    finally:
        stop(process)
        notify.close()
