"""``catdog-agent assign`` against a real mosquitto, with the devices played by the test through the MQTT contract.

The device side answers as schemas/ says (retained state and availability, one command/result per command):
that is the contract the daemon implements, so these tests hold for a real agent too. Every message seen on
the prefix -- the commands the CLI publishes included -- is validated against its JSON Schema.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import Collector
from helpers_fleet import FakeDevice, offline_device, state_payload
from helpers_schemas import validate, validate_message

from agent.cli import main
from agent.devbroker import LocalBroker, free_port
from agent.fleet import Change, Target, assign, new_command_id

CLI = Path(sys.executable).parent / "catdog-agent"  # the installed console script, as an operator runs it
FAST = 0.5  # --retained-wait for groups in-process: retained messages follow the SUBACK within milliseconds


class Fleet:
    """A prefix of our own on the session broker, fake devices on it, and a spy on everything under it."""

    def __init__(self, port: int):
        self.port = port
        self.prefix = "fleet-" + uuid.uuid4().hex[:8]  # retained messages of other tests never show up
        self.devices: list[FakeDevice] = []
        self.spy = Collector(port, topic=f"{self.prefix}/#").start()

    @property
    def broker(self) -> str:
        return f"127.0.0.1:{self.port}"

    def online(self, device: str, **options) -> FakeDevice:
        fake = FakeDevice(self.port, self.prefix, device, **options).start()
        self.devices.append(fake)
        return fake

    def offline(self, device: str, **state) -> None:
        offline_device(self.port, self.prefix, device, **state)

    def commands(self) -> list:
        return self.spy.on("command")

    def args(self, *args: str) -> list[str]:
        return ["assign", "--broker", self.broker, "--prefix", self.prefix, *args]

    def close(self) -> None:
        for fake in self.devices:
            fake.stop()
            assert fake.problems == [], fake.problems
        self.spy.stop()
        for message in self.spy.messages:  # the fakes' messages and, above all, the CLI's commands
            if message.payload:
                validate_message(message.topic, message.payload)


@pytest.fixture
def fleet(broker) -> Fleet:
    running = Fleet(broker.port)
    yield running
    running.close()


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout)


def test_a_device_online_that_accepts_exits_0_with_its_new_version(fleet):
    porch = fleet.online("porch-pi")

    proc = run_cli(*fleet.args("porch-pi", "--version", "3"))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["porch-pi  ok  version 3 (was 2)"]
    [(topic, command, retained)] = porch.commands
    assert topic == f"{fleet.prefix}/porch-pi/command" and not retained
    assert command["set"] == {"version": 3} and command["id"].startswith("assign-") and len(command["id"]) == 19
    assert command["id"] in proc.stderr and "1 online" in proc.stderr


def test_label_and_clear_send_the_documented_set_and_report_the_answered_state(fleet, capsys):
    fleet.online("porch-pi")

    assert main(fleet.args("porch-pi", "--label", "canary")) == 0
    assert capsys.readouterr().out.splitlines() == ["porch-pi  ok  version 4, label canary (was 2)"]
    assert main(fleet.args("porch-pi", "--clear")) == 0
    assert capsys.readouterr().out.splitlines() == ["porch-pi  ok  version 2, configured pin (was 4)"]
    assert [m.json()["set"] for m in fleet.commands()] == [{"label": "canary"}, {"version": None}]


def test_a_device_that_refuses_exits_1_with_its_reason(fleet, capsys):
    fleet.online("garage", answer="refuse", error="version 9 is not served (the server has 1, 2)")

    assert main(fleet.args("garage", "--version", "9")) == 1
    assert capsys.readouterr().out.splitlines() == ["garage  REFUSED  version 9 is not served (the server has 1, 2)"]


def test_a_device_that_never_answers_exits_1_after_the_timeout(fleet):
    attic = fleet.online("attic", answer="silent")

    started = time.monotonic()
    report = assign(fleet.broker, "attic", Change(version=3), prefix=fleet.prefix, timeout=0.5)

    assert report.code == 1 and report.lines == ["attic  no answer within 0.5 s"]
    assert 0.5 <= time.monotonic() - started < 5
    assert attic.got_command.is_set(), "the command was delivered; the device just did not answer"
    assert report.outcomes == {"attic": "no-answer"}


def test_offline_with_retain_exits_0_and_the_command_waits_on_the_broker(fleet, capsys):
    fleet.offline("shed")

    assert main(fleet.args("shed", "--version", "3", "--retain", "--timeout", "5")) == 0
    assert capsys.readouterr().out.splitlines() == ["shed  offline  (retained: applied when it comes back)"]

    later = Collector(fleet.port, topic=f"{fleet.prefix}/shed/command").start()  # the device coming back
    try:
        assert later.wait_for(lambda: bool(later.messages), timeout=5)
        [message] = later.messages
        assert message.retain, "a later subscriber gets it as a retained message"
        assert validate("command", message.payload)["set"] == {"version": 3}
    finally:
        later.stop()


def test_offline_without_retain_exits_1_and_leaves_nothing_on_the_broker(fleet, capsys):
    fleet.offline("shed")

    assert main(fleet.args("shed", "--version", "3")) == 1
    assert capsys.readouterr().out.splitlines() == ["shed  offline  (not retained: not applied; use --retain)"]
    assert [m.retain for m in fleet.commands()] == [False]


def test_a_device_never_seen_is_reported_as_unknown(fleet, capsys):
    assert main(fleet.args("ghost", "--version", "3", "--retained-wait", str(FAST))) == 1
    assert capsys.readouterr().out.splitlines() == [
        "ghost  unknown  (never seen on this broker; not retained: not applied; use --retain)"]


def test_a_group_with_one_member_online_and_one_offline_exits_0_on_the_group_topic(fleet):
    porch = fleet.online("porch-pi", groups=("garden",))
    fleet.offline("shed", groups=["garden", "sheds"])
    fleet.online("kitchen", groups=("indoor",))  # not in the group: must not be addressed

    proc = run_cli(*fleet.args("group:garden", "--version", "3"))  # the default 1.5 s for the retained states

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["porch-pi  ok  version 3 (was 2)",
                                        "shed      offline  (not retained: not applied; use --retain)"]
    [command] = fleet.commands()
    assert command.topic == f"{fleet.prefix}/group/garden/command" and not command.retain
    assert [topic for topic, _, _ in porch.commands] == [command.topic]
    assert fleet.devices[1].commands == []
    assert "2 device(s), 1 online" in proc.stderr


def test_a_group_member_that_refuses_fails_the_group(fleet):
    fleet.online("a1", groups=("garden",))
    fleet.online("a2", groups=("garden",), answer="refuse", error="label canary is not served")

    code, lines = assign(fleet.broker, Target.parse("group:garden"), Change(label="canary"), prefix=fleet.prefix,
                         timeout=5, retained_wait=FAST)

    assert code == 1
    assert lines == ["a1  ok  version 4, label canary (was 2)", "a2  REFUSED  label canary is not served"]


def test_an_unknown_group_exits_1_and_publishes_nothing(fleet, capsys):
    fleet.online("porch-pi", groups=("garden",))

    assert main(fleet.args("group:gardn", "--version", "3", "--retain", "--retained-wait", str(FAST))) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "group gardn has no known member" in captured.err
    assert fleet.commands() == []


def test_an_unreachable_broker_exits_69(capsys):
    port = free_port()  # nothing listens there
    assert main(["assign", "--broker", f"127.0.0.1:{port}", "porch-pi", "--version", "3"]) == 69
    assert "cannot reach the MQTT broker" in capsys.readouterr().err


def test_an_unreachable_broker_exits_69_from_the_console_script():
    proc = run_cli("assign", "--broker", f"127.0.0.1:{free_port()}", "group:garden", "--clear")
    assert proc.returncode == 69 and proc.stdout == ""
    assert proc.stderr.startswith("error: cannot reach the MQTT broker"), proc.stderr


def test_credentials_from_a_password_file_and_a_refused_login(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    with LocalBroker(users={"operator": "s3cret"}) as own:
        base = ["assign", "--broker", f"127.0.0.1:{own.port}", "--retained-wait", str(FAST), "--username", "operator"]
        assert main([*base, "--password-file", str(good), "group:garden", "--clear"]) == 1
        assert "group garden has no known member" in capsys.readouterr().err, "logged in and looked"
        assert main([*base, "--password-file", str(bad), "group:garden", "--clear"]) == 69
        assert "connection refused" in capsys.readouterr().err.lower()
        assert main([*base, "--password-file", str(tmp_path / "missing"), "porch-pi", "--clear"]) == 2
        assert "cannot read the password file" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    pytest.param(["porch-pi"], id="no-change"),
    pytest.param(["porch-pi", "--version", "3", "--label", "canary"], id="version-and-label"),
    pytest.param(["porch-pi", "--version", "0"], id="version-0"),
    pytest.param(["porch-pi", "--label", "123"], id="label-all-digits"),
    pytest.param(["porch/pi", "--clear"], id="device-not-a-topic-level"),
    pytest.param(["group:", "--clear"], id="empty-group"),
    pytest.param(["porch-pi", "--clear", "--timeout", "0"], id="timeout-0"),
])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["assign", "--broker", "127.0.0.1:1", *args])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_every_command_form_validates_against_the_schema():
    for change in (Change(version=1), Change(version=12), Change(label="v1.2_rc-1"), Change(clear=True)):
        validate("command", {"id": new_command_id(), "set": change.payload()})
    with pytest.raises(ValueError):
        Change(version=3, label="x")


def test_the_device_state_with_groups_matches_the_schema():
    state_payload("porch-pi", groups=["garden", "sheds"])
    with pytest.raises(AssertionError):
        state_payload("porch-pi", groups=["garden/x"])
