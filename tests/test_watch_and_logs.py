"""What people read: the `watch` table and lines of MQTT traffic, and log lines under systemd's journal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import queue
import select
import signal
import struct
import subprocess
import termios
import threading
import time
import uuid
from collections import deque

from conftest import agent_command, agent_config, device_for, run_agent, wait_until
from helpers_fleet import retain, state_payload

from agent.config import MqttConfig
from agent.fleetview import DeviceView, render_table
from agent.mqtt import Publisher, Topics
from agent.watch import format_message


def test_format_message_renders_results_state_and_availability():
    result = (b'{"device":"porch","label":"dog","score":0.962,"scores":{"cat":0.038,"dog":0.962},'
              b'"version":"2","frame":17,"latency_ms":41.7,"source":"a.jpg"}')
    line = format_message("catdog/porch/result", result)
    assert line is not None
    assert "porch" in line and "frame   17" in line and "dog   0.962" in line and "version 2" in line
    assert format_message("catdog/porch/availability", b"online").split() == ["porch", "online"]
    assert "state running" in format_message("catdog/porch/state", b'{"status":"running","results":3}')
    assert format_message("catdog/porch/result", b"\xff\xfe not json") is not None, "never raises on garbage"


def test_watch_prints_what_a_device_publishes(tmp_path, broker):
    device = device_for(tmp_path)
    watch = subprocess.Popen(agent_command("watch", "--lines", "--host", "127.0.0.1", "--port", str(broker.port),
                                           "--device", device), stdout=subprocess.PIPE, text=True)
    try:
        publisher = Publisher(MqttConfig(host="127.0.0.1", port=broker.port), Topics.for_device("catdog", device),
                              "catdog-watch-test").start()
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the retained "online" or the live one, whichever the watcher got
        assert device in first and "online" in first
        publisher.publish_result({"device": device, "label": "cat", "score": 0.9, "scores": {"cat": 0.9, "dog": 0.1},
                                  "version": "2", "frame": 1, "latency_ms": 3.0, "source": "x.png"})
        line = watch.stdout.readline()
        assert "frame    1" in line and "cat" in line
        publisher.stop()
    finally:
        watch.terminate()
        watch.communicate(timeout=5)


def test_under_the_journal_lines_carry_syslog_priorities_and_no_timestamps(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"version": 7})
    log = tmp_path / "journal-stream"
    with open(log, "wb") as stream:
        stat = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        proc = subprocess.run(agent_command("run", "--config", str(config)), stderr=stream, env=env, timeout=60)

    assert proc.returncode == 69
    lines = log.read_text().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<3>agent.daemon: cannot start:") for line in lines), lines


def test_outside_the_journal_lines_have_timestamps_and_levels(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"version": 7})
    proc = run_agent(config)
    line = next(line for line in proc.stderr.splitlines() if "cannot start" in line)
    assert " ERROR agent.daemon: cannot start: " in line and line[:4].isdigit()


# -- the fleet table (`watch` without --lines) --------------------------------------------------------------

NOW = 1000.0
PIN_V3 = {"configured": {"version": 2, "label": None}, "assigned": {"version": 3, "label": None}, "source": "command"}
PIN_STABLE = {"configured": {"version": None, "label": "stable"}, "assigned": None, "source": "config"}


def device_view(device: str, *, availability: str = "online", since: float = 0.0, seen: float = NOW - 5,
                result: dict | None = None, results_at: tuple = (), **state) -> DeviceView:
    return DeviceView(device, since, availability=availability, state=state_payload(device, **state),
                      last_result=result, result_times=deque(results_at), last_seen=seen)


def row(table: str, device: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(device + " "))


def test_the_table_shows_each_device_its_availability_version_last_result_rate_and_age():
    porch = device_view("porch-pi", version="3", pin=PIN_V3, result={"label": "dog", "score": 0.962},
                        results_at=(NOW - 70, NOW - 30, NOW - 10))
    shed = device_view("shed", availability="offline", status="stopped", pin=PIN_STABLE, seen=NOW - 7200,
                       last_error="camera unplugged")

    table = render_table({"shed": shed, "porch-pi": porch}, NOW, 200)

    header, first, second = table.splitlines()
    assert header.split() == ["DEVICE", "AVAIL", "STATUS", "VERSION", "RESULT", "RES/MIN", "AGE", "LAST", "ERROR"]
    assert first.startswith("porch-pi") and second.startswith("shed"), "sorted by device id"
    assert first.split() == ["porch-pi", "online", "running", "3", "(assigned)", "dog", "0.962", "2", "5s", "-"]
    assert second.split() == ["shed", "offline", "stopped", "2", "(label", "stable)", "-", "0", "2h", "camera",
                              "unplugged"]
    assert header.index("VERSION") == first.index("3 (assigned)") == second.index("2 (label stable)"), "aligned"


def test_before_a_minute_of_watching_the_rate_is_estimated_from_the_state_fps():
    fresh = device_view("porch-pi", since=NOW - 20, fps=0.5, results_at=(NOW - 3,))
    gone = device_view("shed", availability="offline", since=NOW - 20, fps=0.5)
    table = render_table([fresh, gone], NOW, 200)
    assert " ~30 " in row(table, "porch-pi") and row(table, "shed").split()[5] == "0"


def test_a_long_error_is_shortened_and_the_version_shows_the_pin():
    error = "server unreachable: " + "connection refused by models.lan:8501 " * 8 + "END"
    table = render_table([device_view("porch-pi", last_error=error, version="2", pin={**PIN_V3, "source": "command"})],
                         NOW, 500)
    line = row(table, "porch-pi")
    assert "END" not in line and line.endswith("…") and "server unreachable: connection" in line
    assert len(line.split("  ")[-1].strip()) == 48
    assert "2 (pin version 3, assigned)" in line, "version 3 assigned, version 2 still answering"


def test_a_narrow_terminal_cuts_every_line_to_its_width():
    views = [device_view("porch-pi", last_error="x" * 80), device_view("a-rather-long-device-name", version=None)]
    for width in (30, 12, 1):
        lines = render_table(views, NOW, width).splitlines()
        assert len(lines) == 3 and all(len(line) <= width for line in lines), lines
    lines = render_table(views, NOW, 30).splitlines()
    assert lines[1].startswith("a-rather-long-device-name") and lines[1].endswith("…")
    assert render_table([], NOW, 80).splitlines()[1].startswith("(no device")


def test_the_age_of_a_retained_message_is_a_lower_bound():
    view = device_view("porch-pi", seen=NOW - 65)
    view.last_retained = True
    assert row(render_table([view], NOW, 200), "porch-pi").split()[-2] == ">1m"


def publish_fleet(port: int, prefix: str) -> None:
    retain(port, {
        f"{prefix}/porch-pi/state": state_payload("porch-pi", version="3", pin=PIN_V3),
        f"{prefix}/porch-pi/availability": "online",
        f"{prefix}/shed/state": state_payload("shed", pin=PIN_STABLE, last_error="camera unplugged"),
        f"{prefix}/shed/availability": "offline",
    })


def publish_result(port: int, prefix: str) -> None:
    result = {"device": "porch-pi", "label": "cat", "score": 0.87, "scores": {"cat": 0.87, "dog": 0.13},
              "model": "cat_dog_classifier", "version": "3", "frame": 5, "captured_at": "2026-11-23T20:01:02.123Z",
              "latency_ms": 40.0}
    publisher = Publisher(MqttConfig(host="127.0.0.1", port=port), Topics.for_device(prefix, "porch-pi"),
                          "catdog-watch-table-test", announce=False).start()
    try:
        publisher.publish_result(result)
        assert publisher.wait_delivered(5, outbox=False)
    finally:
        publisher.stop()


def watch_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


def test_watch_on_a_pipe_prints_the_whole_table_when_it_changed(broker):
    prefix = "watch-" + uuid.uuid4().hex[:8]
    publish_fleet(broker.port, prefix)
    watch = subprocess.Popen(agent_command("watch", "--broker", f"127.0.0.1:{broker.port}", "--prefix", prefix,
                                           "--interval", "0.3"), stdout=subprocess.PIPE, text=True, env=watch_env())
    lines: queue.Queue = queue.Queue()
    assert watch.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout], daemon=True)
    reader.start()

    def until(predicate) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while not predicate(seen):
            seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        return seen

    try:
        first = until(lambda seen: sum("porch-pi" in s or s.startswith("shed") for s in seen) >= 2)
        assert first[0].startswith("catdog fleet") and "2 device(s), 1 online" in first[0]
        porch, shed = row("".join(first), "porch-pi"), row("".join(first), "shed")
        assert porch.split()[1:5] == ["online", "running", "3", "(assigned)"]
        assert shed.split()[1:5] == ["offline", "running", "2", "(label"] and "camera unplugged" in shed
        publish_result(broker.port, prefix)
        later = until(lambda seen: any(s.startswith("porch-pi") and "cat 0.870" in s for s in seen))
        assert sum(s.startswith("catdog fleet") for s in later) == 1, "printed again once, when it changed"
    finally:
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0, "Ctrl-C ends a watch normally"
    reader.join(5)
    watch.stdout.close()
    rest = [lines.get_nowait() for _ in range(lines.qsize())]
    assert "\x1b" not in "".join(first + later + rest), "plain text when stdout is not a terminal"


def test_watch_on_a_terminal_redraws_in_place(broker):
    prefix = "watch-" + uuid.uuid4().hex[:8]
    publish_fleet(broker.port, prefix)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    watch = subprocess.Popen(agent_command("watch", "--broker", f"127.0.0.1:{broker.port}", "--prefix", prefix),
                             stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=watch_env())
    os.close(slave)
    screen = b""

    def read_until(predicate, timeout: float = 15) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while not predicate(screen):
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"timed out; the terminal showed {screen[-2000:]!r}"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                return
            screen += chunk

    try:
        read_until(lambda s: s.count(b"\x1b[H") >= 2 and b"shed" in s.rsplit(b"\x1b[H", 1)[1])
        frame = screen.rsplit(b"\x1b[H", 1)[1].decode()
        assert b"\x1b[2J" in screen and b"\x1b[?25l" in screen, "clears once, hides the cursor"
        lines = [line.replace("\x1b[K", "").rstrip("\r") for line in frame.split("\n")]
        assert all(len(line) <= 100 for line in lines)
        assert row("\n".join(lines), "porch-pi").split()[1:5] == ["online", "running", "3", "(assigned)"]
        assert row("\n".join(lines), "shed").split()[1:5] == ["offline", "running", "2", "(label"]
    finally:
        watch.send_signal(signal.SIGINT)
        code = watch.wait(timeout=10)
        read_until(lambda s: False, timeout=5)  # drain until the child's side closes
        os.close(master)
        assert watch.stderr is not None
        watch.stderr.close()
    assert code == 0
    assert screen.endswith(b"\x1b[?25h") or b"\x1b[?25h" in screen[-200:], "the cursor comes back"


def test_the_table_survives_a_broker_restart(tmp_path):
    from agent.devbroker import LocalBroker
    from agent.fleetclient import BrokerAddress
    from agent.fleetview import watch_table

    out, stop, prefix = io.StringIO(), threading.Event(), "watch-" + uuid.uuid4().hex[:8]
    with LocalBroker() as own:
        retain(own.port, {f"{prefix}/porch-pi/availability": "online"})
        thread = threading.Thread(target=watch_table, args=(BrokerAddress("127.0.0.1", own.port),),
                                  kwargs={"prefix": prefix, "out": out, "interval": 0.1, "tty": False, "stop": stop})
        thread.start()
        try:
            assert wait_until(lambda: "porch-pi" in out.getvalue())
            own.restart()  # no persistence: the retained messages are gone, the subscriptions too
            retain(own.port, {f"{prefix}/shed/availability": "online"})
            assert wait_until(lambda: "shed" in out.getvalue(), timeout=20), out.getvalue()
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


def test_watch_against_an_unreachable_broker_exits_69():
    from agent.devbroker import free_port

    proc = subprocess.run(agent_command("watch", "--broker", f"127.0.0.1:{free_port()}"), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 69 and "cannot reach the MQTT broker" in proc.stderr
    lines = subprocess.run(agent_command("watch", "--lines", "--broker", f"127.0.0.1:{free_port()}"),
                           capture_output=True, text=True, timeout=30)
    assert lines.returncode == 69, lines.stderr


def test_broker_and_host_together_are_a_usage_error():
    proc = subprocess.run(agent_command("watch", "--broker", "h", "--host", "h"), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "--broker replaces --host/--port" in proc.stderr
