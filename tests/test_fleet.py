"""Central control of real agents over a real broker: commands, groups, the remembered assignment, rollback.

Two or three `catdog-agent run` processes classify a looping folder against one stand-in serving
versions 1 and 2; the test plays the central side by publishing commands as `catdog-agent assign`
would, and checks the acknowledgements, the versions in the results and the stand-in's URL log
(tests/test_fleet_real.py runs the real `assign` and `watch` commands against such agents).
Every message the agents publish is validated against its JSON Schema.
"""

from __future__ import annotations

import io

import pytest
from conftest import Collector, wait_until
from helpers_agents import GROUP, Fleet, command, publish
from helpers_schemas import validate
from PIL import Image

from agent.devserver import Fault


@pytest.fixture
def fleet(tmp_path, devserver, broker, agent_processes, photos):
    running = Fleet(tmp_path, devserver, broker.port, agent_processes, photos)
    yield running
    running.stop()


def test_a_version_command_switches_only_that_device_and_a_group_command_switches_both(fleet):
    for device in ("front", "back"):
        fleet.config(device)
        fleet.start(device)
        fleet.wait_version(device, "1")
    command_id, payload = command(set={"version": 2})
    publish(fleet.port, fleet.topic("front", "command"), payload)
    ack = fleet.wait_ack("front", command_id)
    assert ack["ok"] is True and ack["device"] == "front" and ack["state"]["version"] == "2"
    assert ack["state"]["pin"] == {"configured": {"version": 1, "label": None},
                                   "assigned": {"version": 2, "label": None}, "source": "command"}
    seen_back = len(fleet.results("back"))
    fleet.wait_version("front", "2", after=len(fleet.results("front")))
    assert fleet.collector.wait_for(lambda: len(fleet.results("back")) > seen_back + 5)
    assert {r["version"] for r in fleet.results("back")} == {"1"}, "the other device switched too"
    assert not fleet.acks("back", command_id)
    assert any(path.endswith("/versions/2:predict") for path in (r.path for r in fleet.server.recorded()))

    group_id, payload = command(set={"version": 2})
    publish(fleet.port, f"{fleet.prefix}/group/{GROUP}/command", payload)
    for device in ("front", "back"):
        assert fleet.wait_ack(device, group_id)["ok"] is True
    fleet.wait_version("back", "2", after=len(fleet.results("back")))
    fleet.check_schemas()


def test_a_version_the_server_does_not_have_is_refused_and_nothing_changes(fleet):
    fleet.config("solo")
    fleet.start("solo")
    fleet.wait_version("solo", "1")
    command_id, payload = command(set={"version": 9})
    publish(fleet.port, fleet.topic("solo", "command"), payload)
    ack = fleet.wait_ack("solo", command_id)
    assert ack["ok"] is False
    assert "version 9" in ack["error"] and "available versions: 2, 1" in ack["error"], ack["error"]
    label_id, payload = command(set={"label": "nightly"})
    publish(fleet.port, fleet.topic("solo", "command"), payload)
    assert "Unrecognized servable version label: nightly" in fleet.wait_ack("solo", label_id)["error"]
    seen = len(fleet.results("solo"))
    assert fleet.collector.wait_for(lambda: len(fleet.results("solo")) > seen + 5)
    assert {r["version"] for r in fleet.results("solo")} == {"1"}
    assert not any(":predict" in r.path and "/versions/9" in r.path for r in fleet.server.recorded())
    fleet.check_schemas()


def test_a_retained_assignment_is_applied_when_the_device_starts_once_and_remembered(fleet):
    fleet.config("late")
    command_id, payload = command(set={"label": "canary"})
    publish(fleet.port, fleet.topic("late", "command"), payload, retain=True)
    agent = fleet.start("late")
    ack = fleet.wait_ack("late", command_id)
    assert ack["ok"] is True and ack["state"]["pin"]["source"] == "retained-command"
    fleet.wait_version("late", "2")
    assert agent.terminate() == 0
    seen = len(fleet.results("late"))
    fleet.start("late")  # the retained command arrives again: already handled, not applied twice
    fleet.wait_version("late", "2", after=seen)
    assert wait_until(lambda: len(fleet.results("late")) > seen + 3)
    assert {r["version"] for r in fleet.results("late")[seen:]} == {"2"}, "the remembered assignment was lost"
    assert len(fleet.acks("late", command_id)) == 1, "a retained command was honoured twice"
    clear_id, payload = command(set={"version": None})
    publish(fleet.port, fleet.topic("late", "command"), payload)
    assert fleet.wait_ack("late", clear_id)["state"]["pin"]["source"] == "config"
    fleet.wait_version("late", "1", after=len(fleet.results("late")))
    results_before_clear = len(fleet.collector.messages)
    publish(fleet.port, fleet.topic("late", "command"), b"", retain=True)  # withdrawn: no answer, no change
    probe_id, payload = command(set={"fps": 10})
    publish(fleet.port, fleet.topic("late", "command"), payload)
    fleet.wait_ack("late", probe_id)  # answered in order: had the empty message been answered, it came first
    answers = [m for m in list(fleet.collector.messages)[results_before_clear:]
               if m.topic == fleet.topic("late", "command/result")]
    assert [a.json()["id"] for a in answers] == [probe_id], "a withdrawn retained command must not be answered"
    fleet.check_schemas()


def test_a_commanded_version_that_fails_is_rolled_back_by_itself(fleet):
    fleet.config("brave", server={"rollback_after": 3})
    fleet.start("brave")
    fleet.wait_version("brave", "1")
    fleet.server.inject(Fault(status=500, count=1000, path_regex=r"/versions/2:predict$"))
    command_id, payload = command(set={"version": 2})
    publish(fleet.port, fleet.topic("brave", "command"), payload)
    assert fleet.wait_ack("brave", command_id)["ok"] is True  # it was AVAILABLE; its answers are the trouble
    assert fleet.collector.wait_for(lambda: len(fleet.acks("brave", command_id)) == 2), "no rollback report"
    report = fleet.acks("brave", command_id)[1]
    assert report["ok"] is False and report["error"].startswith("rolled back to the configured version 1: ")
    assert "HTTP 500" in report["error"]
    assert report["state"]["rollback"]["from"] == {"version": 2, "label": None}
    seen = len(fleet.results("brave"))
    assert fleet.collector.wait_for(lambda: len(fleet.results("brave")) > seen + 3)
    assert {r["version"] for r in fleet.results("brave")[seen:]} == {"1"}
    fleet.server.clear_faults()
    fleet.check_schemas()


@pytest.mark.parametrize("payload, error", [
    (b"not json", "command is not JSON"),
    (b"\xff\xfe\x00garbage", "command is not UTF-8 text"),
    (b'["set"]', "command must be a JSON object, not an array"),
    (b'{"set": {"version": 2}}', "command needs an id"),
    (b'{"id": "x1", "reboot": true}', "unknown command 'reboot'"),
    (b'{"id": "x2", "set": {"version": "2"}}', "set: version must be a whole number"),
    (b'{"id": "x3", "set": {"version": 2, "label": "stable"}}', "set: either version or label, not both"),
    (b'{"id": "x4", "pause": "yes"}', "pause must be true or false"),
    (b'{"id": "x5", "set": {"fps": -1}}', "set: fps must be 0 (unpaced) or 0.001 to 1000"),
    (b'{"id": "x6"}' + b" " * 70_000, "command is too large (70012 bytes; at most 65536)"),
], ids=["not-json", "not-utf8", "array", "no-id", "unknown", "version-type", "both", "pause-type", "fps-range",
        "oversize"])
def test_every_malformed_command_gets_ok_false_with_the_reason_and_the_agent_goes_on(fleet, payload, error):
    fleet.config("picky")
    fleet.start("picky")
    fleet.wait_version("picky", "1")
    publish(fleet.port, fleet.topic("picky", "command"), payload)
    topic = fleet.topic("picky", "command/result")
    assert fleet.collector.wait_for(lambda: any(m.topic == topic for m in fleet.collector.messages))
    answer = next(m.json() for m in fleet.collector.messages if m.topic == topic)
    assert answer["ok"] is False and error in answer["error"], answer
    seen = len(fleet.results("picky"))
    assert fleet.collector.wait_for(lambda: len(fleet.results("picky")) > seen + 2), "the agent stopped"
    fleet.check_schemas()


def test_pause_fps_and_snapshot_commands(fleet):
    fleet.config("knobs", mqtt={"snapshot": True, "snapshot_width": 200})
    fleet.start("knobs")
    fleet.wait_version("knobs", "1")
    assert fleet.collector.wait_for(lambda: bool(fleet.collector.on("snapshot"))), "no snapshot on the first label"
    pause_id, payload = command(pause=True)
    publish(fleet.port, fleet.topic("knobs", "command"), payload)
    ack = fleet.wait_ack("knobs", pause_id)
    assert ack["state"]["paused"] is True and ack["state"]["status"] == "paused"
    paused_at = len(fleet.results("knobs"))
    snapshot_id, payload = command(snapshot=True)
    snapshots = len(fleet.collector.on("snapshot"))
    publish(fleet.port, fleet.topic("knobs", "command"), payload)
    assert fleet.wait_ack("knobs", snapshot_id)["ok"] is True
    assert fleet.collector.wait_for(lambda: len(fleet.collector.on("snapshot")) > snapshots)
    jpeg = fleet.collector.on("snapshot")[-1].payload
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).width <= 200
    assert len(fleet.results("knobs")) <= paused_at + 1, "results went on while paused"
    fps_id, payload = command(set={"fps": 2})
    publish(fleet.port, fleet.topic("knobs", "command"), payload)
    assert fleet.wait_ack("knobs", fps_id)["ok"] is True
    resume_id, payload = command(pause=False)
    publish(fleet.port, fleet.topic("knobs", "command"), payload)
    assert fleet.wait_ack("knobs", resume_id)["state"]["paused"] is False
    assert fleet.collector.wait_for(lambda: len(fleet.results("knobs")) > paused_at + 2)
    fleet.check_schemas()


def test_home_assistant_discovery_is_retained_valid_and_tied_to_availability(fleet, broker):
    fleet.config("hass", mqtt={"homeassistant": True, "discovery_prefix": f"{fleet.prefix}-ha", "snapshot": True})
    ha = Collector(broker.port, topic=f"{fleet.prefix}-ha/#").start()
    try:
        fleet.start("hass")
        assert ha.wait_for(lambda: len(ha.messages) >= 5), "no discovery configs"
        fleet.wait_version("hass", "1")
        configs = [m for m in ha.messages]
    finally:
        ha.stop()
    components = {m.topic.split("/")[1] for m in configs}
    assert components == {"sensor", "binary_sensor", "image"}
    unique_ids = set()
    for message in configs:
        assert message.topic.endswith("/config") and message.payload
        validate("homeassistant-discovery", message.payload)
        config = message.json()
        unique_ids.add(config["unique_id"])
        assert config["availability"][0]["topic"] == fleet.topic("hass", "availability")
        assert config["device"]["identifiers"] == ["catdog_hass"]
    assert len(unique_ids) == len(configs)
