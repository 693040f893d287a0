"""Home Assistant MQTT discovery configs (agent/homeassistant.py): schema, HA's topic and id rules, templates."""

from __future__ import annotations

import json
import re

import pytest
from helpers_schemas import errors, validate

from agent.classify import Classification
from agent.health import Health
from agent.homeassistant import (
    discovery_configs,
    discovery_messages,
    label_template,
    node_id,
    removal_messages,
    safe_id,
    stale_removals,
)
from agent.mqtt import Topics, encode_payload
from agent.result import Result

# homeassistant/components/mqtt/discovery.py TOPIC_MATCHER, which HA applies to the topic after its discovery
# prefix: HA drops any other config topic as "illegal".
HA_TOPIC = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
HA_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
ARGS = {"device_id": "porch-pi", "prefix": "catdog", "labels": ("cat", "dog"), "model": "cat_dog_classifier",
        "sw_version": "0.1.0"}
AVAILABILITY = [{"topic": "catdog/porch-pi/availability", "payload_available": "online",
                 "payload_not_available": "offline"}]


def configs(**overrides: object) -> dict[str, dict]:
    """topic -> decoded config, as published."""
    return {topic: json.loads(payload) for topic, payload in discovery_messages(**{**ARGS, **overrides})}


def ha_match(topic: str, discovery_prefix: str = "homeassistant") -> re.Match:
    """How Home Assistant splits a discovery topic; fails for one it would drop."""
    assert topic.startswith(discovery_prefix + "/"), topic
    match = HA_TOPIC.fullmatch(topic[len(discovery_prefix) + 1:])
    assert match, f"Home Assistant would drop {topic!r} as an illegal discovery topic"
    return match


def component_of(topic: str, discovery_prefix: str = "homeassistant") -> str:
    return ha_match(topic, discovery_prefix)["component"]


def by_object_id(**overrides: object) -> dict[str, dict]:
    return {ha_match(topic)["object_id"]: config for topic, config in configs(**overrides).items()}


# -- topics, ids, device -----------------------------------------------------------------------------------


def test_the_entities_and_their_topics():
    assert sorted(configs()) == sorted([
        "homeassistant/sensor/catdog_porch-pi/label/config",
        "homeassistant/sensor/catdog_porch-pi/score/config",
        "homeassistant/binary_sensor/catdog_porch-pi/label_cat/config",
        "homeassistant/binary_sensor/catdog_porch-pi/label_dog/config",
        "homeassistant/sensor/catdog_porch-pi/model_version/config",
        "homeassistant/image/catdog_porch-pi/snapshot/config",
    ])
    assert not any("/image/" in topic for topic in configs(snapshot=False))


@pytest.mark.parametrize("overrides", [
    pytest.param({}, id="default"),
    pytest.param({"snapshot": False}, id="no-snapshot"),
    pytest.param({"device_id": "Porch Pi.küche", "labels": ("golden retriever", "chat \"noir\"", "猫")},
                 id="ids-ha-does-not-allow"),
    pytest.param({"prefix": "site/a/catdog", "discovery_prefix": "ha/discovery"}, id="nested-prefixes"),
])
def test_every_payload_matches_the_schema_of_its_component_and_every_topic_ha_s_pattern(overrides):
    discovery_prefix = str(overrides.get("discovery_prefix", "homeassistant"))
    for topic, config in configs(**overrides).items():
        match = ha_match(topic, discovery_prefix)
        assert match["component"] in ("sensor", "binary_sensor", "image")
        assert match["node_id"] == node_id(str(overrides.get("device_id", "porch-pi")))
        validate("homeassistant-discovery", config, component=match["component"])
        validate("homeassistant-discovery", config)


def test_unique_ids_are_unique_prefixed_by_the_device_and_stable_across_calls():
    first = discovery_messages(**ARGS)
    assert discovery_messages(**ARGS) == first  # the same bytes: republishing changes nothing in HA
    unique_ids = [config["unique_id"] for config in configs().values()]
    assert len(set(unique_ids)) == len(unique_ids)
    assert all(uid.startswith("catdog_porch-pi_") and HA_ID.match(uid) for uid in unique_ids)
    other = [config["unique_id"] for config in configs(device_id="garden-pi").values()]
    assert not set(unique_ids) & set(other)


def test_all_entities_share_one_device_and_the_agent_s_availability_topic():
    topics = Topics.for_device("catdog", "porch-pi")
    devices = [config["device"] for config in configs().values()]
    assert all(device == devices[0] for device in devices)
    assert devices[0] == {"identifiers": ["catdog_porch-pi"], "name": "porch-pi", "manufacturer": "catdog-agent",
                          "model": "catdog-agent", "sw_version": "0.1.0"}
    for config in configs().values():
        assert config["availability"] == AVAILABILITY
        assert config["availability"][0]["topic"] == topics.availability
        assert "availability_topic" not in config  # HA refuses both forms at once
        assert config["origin"] == {"name": "catdog-agent", "sw_version": "0.1.0"}


def test_entities_read_the_agent_s_own_topics():
    topics = Topics.for_device("catdog", "porch-pi")
    entities = by_object_id()
    for object_id in ("label", "score", "label_cat", "label_dog"):
        assert entities[object_id]["state_topic"] == topics.result
    assert entities["label"]["json_attributes_topic"] == topics.result
    assert entities["model_version"]["state_topic"] == topics.state
    assert entities["model_version"]["entity_category"] == "diagnostic"
    assert entities["snapshot"]["image_topic"] == "catdog/porch-pi/snapshot"
    assert entities["snapshot"]["content_type"] == "image/jpeg"


def test_only_the_score_is_numeric():
    # HA refuses a non-numeric state from a sensor with a unit or a state class: the label must have neither.
    entities = by_object_id()
    assert entities["score"]["unit_of_measurement"] == "%"
    assert entities["score"]["state_class"] == "measurement"
    for object_id in ("label", "model_version"):
        assert "unit_of_measurement" not in entities[object_id] and "state_class" not in entities[object_id]


def test_a_device_id_ha_does_not_allow_in_ids_still_gives_valid_topics_reading_the_raw_device_topics():
    entities = configs(device_id="Porch Pi.1")
    for topic, config in entities.items():
        assert ha_match(topic)["node_id"] == node_id("Porch Pi.1")
        assert HA_ID.match(config["unique_id"])
        assert config["availability"][0]["topic"] == "catdog/Porch Pi.1/availability"
    assert node_id("Porch Pi.1") != node_id("Porch_Pi_1")  # two devices never share an id
    assert node_id("Porch Pi.1") == node_id("Porch Pi.1")


def test_safe_id_keeps_valid_ids_and_makes_others_valid_distinct_and_stable():
    texts = ["porch-pi", "Porch_Pi_2", "a b", "a_b", "a.b", "küche", "kuche", "猫", "", "x/y", "it's"]
    made = [safe_id(text) for text in texts]
    assert all(HA_ID.match(one) for one in made)
    assert [one for text, one in zip(texts, made) if HA_ID.match(text)] == [t for t in texts if HA_ID.match(t)]
    assert len(set(made)) == len(texts)
    assert [safe_id(text) for text in texts] == made


def test_labels_that_differ_only_in_characters_ha_does_not_allow_get_different_entities():
    entities = configs(labels=("a b", "a_b", "a.b"))
    object_ids = [ha_match(topic)["object_id"] for topic in entities if "/binary_sensor/" in topic]
    assert len(set(object_ids)) == 3


@pytest.mark.parametrize("overrides", [
    {"device_id": ""}, {"device_id": "porch/pi"}, {"device_id": "porch+"}, {"device_id": "#"},
    {"prefix": ""}, {"prefix": "catdog/"}, {"prefix": "cat+dog"}, {"discovery_prefix": ""},
    {"discovery_prefix": "homeassistant/#"}, {"labels": ("cat", "cat")},
])
def test_arguments_that_would_give_broken_topics_are_refused(overrides):
    with pytest.raises(ValueError):
        discovery_messages(**{**ARGS, **overrides})


# -- removal -----------------------------------------------------------------------------------------------


def test_removal_messages_empty_exactly_the_discovery_topics():
    for overrides in ({}, {"snapshot": False}, {"labels": ("cat", "dog", "fox")}):
        removals = removal_messages(**{**ARGS, **overrides})
        assert [topic for topic, _ in removals] == [topic for topic, _ in discovery_messages(**{**ARGS, **overrides})]
        assert all(payload == b"" for _, payload in removals)


def test_stale_removals_empty_what_a_reload_no_longer_publishes():
    before = discovery_messages(**{**ARGS, "labels": ("cat", "dog", "fox")})
    after = discovery_messages(**{**ARGS, "snapshot": False})
    assert stale_removals(before, after) == [
        ("homeassistant/binary_sensor/catdog_porch-pi/label_fox/config", b""),
        ("homeassistant/image/catdog_porch-pi/snapshot/config", b""),
    ]
    renamed = discovery_messages(**{**ARGS, "device_id": "garden-pi"})
    assert stale_removals(before, renamed) == [(topic, b"") for topic, _ in before]
    assert stale_removals(after, after) == []


# -- templates, rendered as Home Assistant does (Jinja, value_json = the parsed payload) ---------------------


def result_payload(label: str, scores: dict[str, float], version: str = "2") -> bytes:
    """The bytes the agent publishes on the result topic for one classified frame."""
    result = Result(device="porch-pi", model="cat_dog_classifier", version=version, frame=17,
                    captured_at=1_795_000_000.123, classification=Classification(label, scores[label], scores),
                    latency_ms=41.66, origin="porch-0017.jpg")
    return encode_payload(result.payload())


def render(template: str, payload: bytes) -> str:
    sandbox = pytest.importorskip("jinja2.sandbox")  # HA renders in an immutable sandbox
    env = sandbox.ImmutableSandboxedEnvironment()
    text = payload.decode()
    return env.from_string(template).render(value=text, value_json=json.loads(text))


def test_result_templates_render_label_score_and_one_binary_sensor_on():
    entities = by_object_id()
    payload = result_payload("dog", {"cat": 0.038, "dog": 0.962})
    assert render(entities["label"]["value_template"], payload) == "dog"
    assert render(entities["score"]["value_template"], payload) == "96.2"
    cat, dog = entities["label_cat"], entities["label_dog"]
    assert render(cat["value_template"], payload) == cat["payload_off"] == "OFF"
    assert render(dog["value_template"], payload) == dog["payload_on"] == "ON"
    payload = result_payload("cat", {"cat": 1.0, "dog": 0.0})
    assert render(entities["score"]["value_template"], payload) == "100.0"
    assert render(cat["value_template"], payload) == "ON"
    assert render(dog["value_template"], payload) == "OFF"
    assert isinstance(json.loads(payload), dict)  # json_attributes_topic: HA takes a JSON object as attributes


def test_the_version_template_renders_the_state_s_version_and_none_as_ha_s_unknown():
    template = by_object_id()["model_version"]["value_template"]
    health = Health(device="porch-pi", model="cat_dog_classifier", label=None, version="3")
    assert render(template, encode_payload(health.snapshot(queued=0))) == "3"
    health.version = None  # starting: no version resolved yet
    assert render(template, encode_payload(health.snapshot(queued=0))) == "None"  # HA's PAYLOAD_NONE: unknown


@pytest.mark.parametrize("label", ["golden retriever", "it's", 'say "cat"', "back\\slash", "chat noir é", "猫",
                                   "{{ 7 * 7 }}"])
def test_a_label_template_matches_exactly_its_label_whatever_its_characters(label):
    template = label_template(label)
    assert render(template, result_payload(label, {label: 0.9, "other": 0.1})) == "ON"
    assert render(template, result_payload("other", {label: 0.1, "other": 0.9})) == "OFF"


# -- the schema agrees with Home Assistant -----------------------------------------------------------------


def test_a_sensor_in_the_config_category_fails_the_schema_as_ha_refuses_it():
    # sensor/__init__.py: "cannot be added as the entity category is set to config".
    (topic, config), *_ = discovery_configs(**ARGS)
    assert component_of(topic) == "sensor"
    assert errors("homeassistant-discovery", {**config, "entity_category": "config"}, component="sensor")
    assert not errors("homeassistant-discovery", {**config, "entity_category": "diagnostic"}, component="sensor")
