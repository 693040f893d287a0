"""The JSON Schemas in schemas/: valid, matched by what the agent really publishes, strict on commands."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, Collector, agent_config, device_for, run_agent
from helpers_schemas import (
    SCHEMAS,
    errors,
    kind_for_topic,
    kinds,
    load_schema,
    schema_paths,
    validate,
    validate_message,
)
from jsonschema import Draft202012Validator

from agent.classify import Classification
from agent.health import Health, Status
from agent.result import Result

ID_BASE = "https://catdog-agent.invalid/schemas/"


# -- the schema files themselves ---------------------------------------------------------------------------


def test_the_readmes_result_and_state_examples_match_their_schemas():
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.S)]
    examples = {"result": [b for b in blocks if "scores" in b], "state": [b for b in blocks if "uptime_s" in b]}
    for kind, payloads in examples.items():
        assert payloads, f"README.md has no {kind} example"
        for payload in payloads:
            assert errors(kind, payload) == [], f"README's {kind} example: {errors(kind, payload)}"


@pytest.mark.parametrize("path", schema_paths(), ids=lambda p: p.name)
def test_every_schema_is_a_valid_draft_2020_12_schema_with_id_title_and_described_fields(path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == ID_BASE + path.name
    assert schema["title"] and schema["description"]
    undocumented = [name for name, sub in schema.get("properties", {}).items() if "description" not in sub]
    assert not undocumented, f"{path.name}: fields without a description: {undocumented}"


def test_the_expected_schemas_exist_and_both_readmes_list_every_one():
    assert set(kinds()) >= {"result", "state", "availability", "command", "command-result", "homeassistant-discovery"}
    index = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in schema_paths():
        assert path.name in index, f"schemas/README.md does not list {path.name}"
        assert f"schemas/{path.name}" in readme, f"README.md does not link schemas/{path.name}"


# -- what the agent really publishes -----------------------------------------------------------------------


@pytest.mark.parametrize("server_section", [
    pytest.param({"version": 2}, id="version"),
    pytest.param({"version": None, "label": "canary"}, id="label"),
    pytest.param({"version": None}, id="latest"),
])
def test_every_message_of_a_real_run_matches_its_schema(tmp_path, photos, devserver, broker, collector,
                                                         server_section):
    (photos / "05-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a whole JPEG")  # fills errors/last_error
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server=server_section)

    proc = run_agent(config)

    assert proc.returncode == 0, proc.stderr
    assert collector.wait_for(lambda: collector.on("availability")
                              and collector.on("availability")[-1].payload == b"offline")
    late = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/#").start()
    try:  # what a subscriber that connects afterwards gets: the retained state and availability
        assert late.wait_for(lambda: late.on("state") and late.on("availability"))
        retained = list(late.messages)
    finally:
        late.stop()
    assert all(m.retain for m in retained)

    checked: dict[str, int] = {}
    for message in [*collector.messages, *retained]:
        kind = validate_message(message.topic, message.payload)
        checked[str(kind)] = checked.get(str(kind), 0) + 1
    assert checked.get("result") == 4, checked
    assert checked.get("state", 0) >= 3, checked  # starting … stopped, and the retained one
    assert checked.get("availability", 0) >= 3, checked  # online, offline, and the retained offline
    states = [m.json() for m in collector.on("state")]
    assert any(state["errors"] for state in states), "the broken file should have filled state.errors"


def test_a_result_built_in_process_matches_with_and_without_a_source():
    classification = Classification("dog", 0.962, {"cat": 0.038, "dog": 0.962})
    result = Result("porch-pi", "cat_dog_classifier", "2", 17, 1795464062.123, classification, 41.72)
    payload = validate("result", result.payload())
    assert payload["source"] == "" and payload["captured_at"] == "2026-11-23T20:01:02.123Z"
    without_source = {k: v for k, v in result.payload().items() if k != "source"}
    validate("result", without_source)  # what an older agent's outbox may still send


def test_a_fresh_and_a_busy_health_snapshot_match_the_state_schema():
    health = Health("porch-pi", "cat_dog_classifier", None)
    validate("state", health.snapshot(queued=0))  # version and label null, errors empty
    health = Health("porch-pi", "cat_dog_classifier", "stable.v1", version="2", status=Status.DEGRADED)
    health.record_result()
    health.record_error("server_transient", "server unreachable")
    health.server_ok = False
    validate("state", health.snapshot(queued=3, dropped=1))


# -- results and state: strict on fields --------------------------------------------------------------------

RESULT = {"device": "porch-pi", "label": "dog", "score": 0.962, "scores": {"cat": 0.038, "dog": 0.962},
          "model": "cat_dog_classifier", "version": "2", "frame": 17, "captured_at": "2026-11-23T20:01:02.123Z",
          "latency_ms": 41.7, "source": "porch-0017.jpg"}


@pytest.mark.parametrize(("change", "reason"), [
    ({"extra": 1}, "an unreviewed field"),
    ({"version": 2}, "version is a string"),
    ({"frame": 0}, "frames count from 1"),
    ({"score": 1.2}, "not a probability"),
    ({"captured_at": "2026-11-23T20:01:02Z"}, "milliseconds are part of the format"),
    ({"device": "porch/pi"}, "not a topic level"),
    ({"scores": {"dog": 1.0}}, "one score per label, at least two"),
])
def test_results_that_differ_from_the_contract_fail(change, reason):
    assert errors("result", {**RESULT, **change}), reason
    missing = {k: v for k, v in RESULT.items() if k != "latency_ms"}
    assert errors("result", missing)


PIN = {"configured": {"version": 2, "label": None}, "assigned": {"version": None, "label": "canary"},
       "source": "command"}


def state_with(**fields) -> dict:
    return {**Health("porch-pi", "cat_dog_classifier", None).snapshot(queued=0), **fields}


@pytest.mark.parametrize("fields", [
    pytest.param({}, id="today"),
    pytest.param({"skipped": 0, "paused": True, "pin": PIN, "rollback": None}, id="fleet-fields"),
    pytest.param({"pin": {**PIN, "assigned": None, "source": "config"}}, id="no-assignment"),
    pytest.param({"pin": {"configured": {"version": 0, "label": None}, "assigned": {"version": None, "label": None},
                          "source": "rollback"}}, id="rollback-to-latest"),
    pytest.param({"rollback": {"from": 3, "to": 2, "reason": "3 of 3 frames failed", "at": "x"}}, id="rollback"),
])
def test_state_with_the_fleet_control_fields_is_valid(fields):
    validate("state", state_with(**fields))


@pytest.mark.parametrize("fields", [
    pytest.param({"paused": "yes"}, id="paused-not-bool"),
    pytest.param({"skipped": -1}, id="skipped-negative"),
    pytest.param({"pin": {**PIN, "source": "mqtt"}}, id="pin-source"),
    pytest.param({"pin": {**PIN, "configured": {"version": 2, "label": "stable"}}}, id="pin-both"),
    pytest.param({"pin": {**PIN, "configured": {"version": 2}}}, id="pin-label-key-missing"),
    pytest.param({"status": "sleeping"}, id="status"),
    pytest.param({"surprise": 1}, id="unreviewed-field"),
])
def test_invalid_state_fails(fields):
    assert errors("state", state_with(**fields))


# -- availability -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "ok"), [
    (b"online", True), (b"offline", True), (b"Online", False), (b"", False), (b'"online"', False),
])
def test_availability_is_plain_text_online_or_offline(payload, ok):
    assert (not errors("availability", payload)) == ok


# -- commands and their results -----------------------------------------------------------------------------


COMMANDS = [
    ({"id": "a", "set": {"version": 3}}, True),
    ({"id": "a", "set": {"label": "canary"}}, True),
    ({"id": "a", "set": {"label": "v1.2_rc-1"}}, True),
    ({"id": "a", "set": {"version": None}}, True),  # back to the config's pin
    ({"id": "a", "set": {"label": None}}, True),
    ({"id": "a", "set": {"fps": 2.5}}, True),
    ({"id": "a", "set": {"fps": 0}}, True),  # unpaced
    ({"id": "a", "set": {"fps": 1000}}, True),
    ({"id": "a", "pause": True}, True),
    ({"id": "a", "pause": False}, True),
    ({"id": "a", "snapshot": True}, True),
    ({"id": "x" * 64, "pause": True}, True),
    ({"id": "2026-11-23T20:01:02Z#7", "pause": True}, True),
    ({"id": "a", "set": {"version": 3, "label": "x"}}, False),  # a version or a label, never both
    ({"id": "a", "set": {"version": None, "label": None}}, False),
    ({"id": "a", "set": {"version": 3, "fps": 1}}, False),  # fps goes alone
    ({"set": {"version": 3}}, False),  # no id
    ({"id": "", "pause": True}, False),
    ({"id": "x" * 65, "pause": True}, False),
    ({"id": "has space", "pause": True}, False),
    ({"id": 7, "pause": True}, False),
    ({"id": "a"}, False),  # no action
    ({"id": "a", "pause": True, "snapshot": True}, False),  # two actions
    ({"id": "a", "pause": "yes"}, False),
    ({"id": "a", "snapshot": False}, False),
    ({"id": "a", "set": {}}, False),
    ({"id": "a", "set": {"version": 0}}, True),
    ({"id": "a", "set": {"version": -1}}, False),
    ({"id": "a", "set": {"version": 2.5}}, False),
    ({"id": "a", "set": {"version": "3"}}, False),
    ({"id": "a", "set": {"version": True}}, False),
    ({"id": "a", "set": {"label": "has space"}}, False),
    ({"id": "a", "set": {"label": "a/b"}}, False),
    ({"id": "a", "set": {"label": "123"}}, False),  # digits are a version
    ({"id": "a", "set": {"label": "l" * 65}}, False),
    ({"id": "a", "set": {"fps": -1}}, False),
    ({"id": "a", "set": {"fps": 0.0001}}, False),
    ({"id": "a", "set": {"fps": 1001}}, False),
    ({"id": "a", "set": {"fps": False}}, False),
    ({"id": "a", "set": {"model": "other"}}, False),
    ({"id": "a", "reboot": True}, False),
    (["id", "a"], False),
]


@pytest.mark.parametrize(("command", "ok"), COMMANDS)
def test_commands_validate_or_fail_as_intended(command, ok):
    problems = errors("command", json.dumps(command).encode())
    assert not problems if ok else problems, problems


@pytest.mark.parametrize("command", [command for command, ok in COMMANDS if ok])
def test_the_agent_accepts_every_command_the_schema_accepts(command):
    """The schema may be stricter than the agent's parser, never laxer: a sender that validates is never refused."""
    commands = pytest.importorskip("agent.commands")
    commands.parse_command(json.dumps(command).encode())


@pytest.mark.parametrize(("ack", "ok"), [
    ({"id": "a", "ok": True, "device": "porch-pi"}, True),
    ({"id": "a", "ok": True, "device": "porch-pi", "state": state_with(paused=True)}, True),
    ({"id": "a", "ok": False, "error": "set: version 9 is not served", "device": "porch-pi"}, True),
    ({"id": None, "ok": False, "error": "not JSON", "device": "porch-pi"}, True),
    ({"id": "a", "ok": False, "device": "porch-pi"}, False),  # error missing
    ({"id": "a", "ok": True, "error": "", "device": "porch-pi"}, False),  # error only with ok false
    ({"id": "a", "ok": True}, False),  # no device
    ({"ok": True, "device": "porch-pi"}, False),  # id must be there, null if unknown
    ({"id": "a", "ok": True, "device": "porch-pi", "state": {"status": "running"}}, False),
])
def test_command_results_validate_or_fail_as_intended(ack, ok):
    problems = errors("command-result", ack)
    assert not problems if ok else problems, problems


def test_topics_map_to_their_schema():
    assert kind_for_topic("catdog/porch-pi/command/result") == "command-result"
    assert kind_for_topic("catdog/group/porch/command") == "command"
    assert kind_for_topic("site/a/catdog/porch-pi/result") == "result"
    assert kind_for_topic("catdog/porch-pi/snapshot") is None
    with pytest.raises(KeyError, match="no schema for topic"):
        kind_for_topic("catdog/porch-pi/debug")


# -- Home Assistant discovery -------------------------------------------------------------------------------

DEVICE = {"identifiers": ["catdog-agent_porch-pi"], "name": "porch-pi", "manufacturer": "catdog-agent",
          "model": "catdog-agent", "sw_version": "0.1.0"}
AVAILABILITY = [{"topic": "catdog/porch-pi/availability", "payload_available": "online",
                 "payload_not_available": "offline"}]
SENSOR = {"name": "Label", "unique_id": "catdog_porch-pi_label", "state_topic": "catdog/porch-pi/result",
          "value_template": "{{ value_json.label }}", "json_attributes_topic": "catdog/porch-pi/result",
          "availability": AVAILABILITY, "device": DEVICE, "icon": "mdi:cat",
          "default_entity_id": "sensor.porch_pi_label", "object_id": "porch_pi_label"}
BINARY = {"name": "Server", "unique_id": "catdog_porch-pi_server_ok", "state_topic": "catdog/porch-pi/state",
          "value_template": "{{ 'ON' if value_json.server_ok else 'OFF' }}", "payload_on": "ON", "payload_off": "OFF",
          "device_class": "connectivity", "entity_category": "diagnostic",
          "availability_topic": "catdog/porch-pi/availability", "device": DEVICE}
IMAGE = {"name": "Snapshot", "unique_id": "catdog_porch-pi_snapshot", "image_topic": "catdog/porch-pi/snapshot",
         "content_type": "image/jpeg", "availability": AVAILABILITY, "device": DEVICE,
         "origin": {"name": "catdog-agent", "sw_version": "0.1.0"}}


@pytest.mark.parametrize(("component", "config"), [("sensor", SENSOR), ("binary_sensor", BINARY), ("image", IMAGE)])
def test_discovery_configs_we_mean_to_publish_are_valid(component, config):
    validate("homeassistant-discovery", config, component=component)
    validate("homeassistant-discovery", config)


@pytest.mark.parametrize(("component", "config"), [
    pytest.param("sensor", {**SENSOR, "stat_t": "x"}, id="abbreviation"),
    pytest.param("sensor", {**SENSOR, "availability_topic": "catdog/porch-pi/availability"}, id="both-availabilities"),
    pytest.param("sensor", {k: v for k, v in SENSOR.items() if k != "availability"}, id="no-availability"),
    pytest.param("sensor", {k: v for k, v in SENSOR.items() if k != "unique_id"}, id="no-unique-id"),
    pytest.param("sensor", {**SENSOR, "device": {"name": "porch-pi"}}, id="device-without-identifiers"),
    pytest.param("sensor", {**SENSOR, "device": {**DEVICE, "identifiers": "catdog"}}, id="identifiers-not-list"),
    pytest.param("sensor", {**SENSOR, "state_topic": "catdog/+/result"}, id="wildcard"),
    pytest.param("sensor", {**SENSOR, "icon": "cat"}, id="icon-without-prefix"),
    pytest.param("sensor", {**SENSOR, "default_entity_id": "binary_sensor.x"}, id="entity-id-domain"),
    pytest.param("sensor", {**SENSOR, "payload_on": "ON"}, id="binary-key-on-sensor"),
    pytest.param("binary_sensor", {**BINARY, "device_class": "cat"}, id="unknown-binary-device-class"),
    pytest.param("binary_sensor", {**BINARY, "entity_category": "config"}, id="binary-config-category"),
    pytest.param("sensor", {**SENSOR, "payload_available": "up"}, id="payload-available-without-topic"),
    pytest.param("image", {**IMAGE, "image_encoding": "b64"}, id="image-b64"),
    pytest.param("image", {**IMAGE, "url_topic": "catdog/porch-pi/url"}, id="image-url-topic"),
    pytest.param("image", {**IMAGE, "state_topic": "catdog/porch-pi/snapshot"}, id="image-state-topic"),
    pytest.param("image", {k: v for k, v in IMAGE.items() if k != "image_topic"}, id="image-without-topic"),
])
def test_discovery_configs_that_home_assistant_would_misread_fail(component, config):
    assert errors("homeassistant-discovery", config, component=component)


def test_every_schema_kind_loads():
    for kind in kinds():
        assert load_schema(kind)["$id"].endswith(f"/{kind}.schema.json")
