"""Home Assistant MQTT discovery: the retained config messages that make a device's entities appear in HA.

Pure: ``discovery_messages`` builds (topic, payload) pairs and ``removal_messages`` the empty payloads
that make the entities disappear; the daemon publishes them (RETAINED, QoS >= 1). Every payload
matches ``schemas/homeassistant-discovery.schema.json``.

One config per entity on ``{discovery_prefix}/{component}/catdog_{device}/{object_id}/config``
(https://www.home-assistant.io/integrations/mqtt/ , "Discovery topic"). Home Assistant only accepts
``[a-zA-Z0-9_-]`` in the node and object ids (``TOPIC_MATCHER`` in homeassistant/components/mqtt/
discovery.py; any other character and HA drops the message as an "illegal discovery topic"), so ids
go through ``safe_id``. The topics the entities *read* are the agent's own, with the raw device id.

Entities (all share one ``device`` block and the agent's availability topic):

- sensor ``label``: the last label; the whole result JSON becomes its attributes.
- sensor ``score``: the winning label's probability in % (state_class measurement).
- binary_sensor ``label_<label>`` per label: ON while the last result is that label. No device class:
  the model has no "nothing there" class, so one of them is ON whenever a result has come, even for an
  empty porch; ``occupancy`` would show that as "Detected" and feed HA's presence logic with it.
- sensor ``model_version`` (diagnostic): the model version serving this device, from the state topic.
- image ``snapshot`` (optional): the retained JPEG of the last classified frame.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

MANUFACTURER = "catdog-agent"
DEVICE_MODEL = "catdog-agent"
ORIGIN = "catdog-agent"
NODE_PREFIX = "catdog_"
PAYLOAD_AVAILABLE = "online"
PAYLOAD_NOT_AVAILABLE = "offline"
PAYLOAD_ON = "ON"
PAYLOAD_OFF = "OFF"
# HA subscribes to the state topics with this QoS (its default is 0): a lost result would leave a
# binary sensor on the wrong label until the next one, up to skip_unchanged.max_interval_s later.
SUBSCRIBE_QOS = 1
LABEL_ICONS = {"cat": "mdi:cat", "dog": "mdi:dog"}
DEFAULT_LABEL_ICON = "mdi:paw"

_NOT_ID = re.compile(r"[^a-zA-Z0-9_-]")
# One topic level of ours: no wildcards, no level separator, no NUL (MQTT 3.1.1 section 4.7).
_NOT_LEVEL = re.compile(r"[+#/\x00]")

Message = tuple[str, bytes]


def safe_id(text: str) -> str:
    """``text`` as a Home Assistant node/object id (``[a-zA-Z0-9_-]+``).

    Unchanged when it already is one; otherwise each other character becomes ``_`` and a short hash
    of the original is appended, so two different texts never share an id ("a b" vs "a_b") and the
    id stays the same from run to run (unique_ids are built from it).
    """
    if text and not _NOT_ID.search(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    stem = _NOT_ID.sub("_", text).strip("_")
    return f"{stem}_{digest}" if stem else digest


def node_id(device_id: str) -> str:
    """The discovery node id and device identifier of a device: ``catdog_<device>``."""
    return NODE_PREFIX + safe_id(device_id)


def device_topics(prefix: str, device_id: str) -> dict[str, str]:
    """The agent's own topics the entities read (the same as ``agent.mqtt.Topics`` plus the snapshot)."""
    _check_topic(prefix, "prefix")
    if not device_id or _NOT_LEVEL.search(device_id):
        raise ValueError(f"device id must be one MQTT topic level without wildcards (got {device_id!r})")
    base = f"{prefix}/{device_id}"
    return {"availability": f"{base}/availability", "result": f"{base}/result", "state": f"{base}/state",
            "snapshot": f"{base}/snapshot"}


def discovery_messages(*, device_id: str, prefix: str, labels: Sequence[str], model: str, sw_version: str,
                       discovery_prefix: str = "homeassistant", snapshot: bool = True) -> list[Message]:
    """(topic, payload) for every entity of the device; publish each RETAINED, QoS >= 1.

    ``device_id`` and ``prefix`` are device.id and mqtt.topic_prefix, ``labels`` model.labels (one
    binary sensor each), ``model`` the served model's name (it names the version sensor),
    ``sw_version`` the agent's version. The same arguments always give the same bytes.
    """
    return [(topic, _encode(config))
            for topic, config in discovery_configs(device_id=device_id, prefix=prefix, labels=labels, model=model,
                                                   sw_version=sw_version, discovery_prefix=discovery_prefix,
                                                   snapshot=snapshot)]


def removal_messages(*, device_id: str, prefix: str, labels: Sequence[str], model: str, sw_version: str,
                     discovery_prefix: str = "homeassistant", snapshot: bool = True) -> list[Message]:
    """The same topics as ``discovery_messages`` with empty payloads: publish each RETAINED to remove the
    entities from HA and clear the retained configs from the broker (HA discovery turned off)."""
    return [(topic, b"")
            for topic, _ in discovery_messages(device_id=device_id, prefix=prefix, labels=labels, model=model,
                                               sw_version=sw_version, discovery_prefix=discovery_prefix,
                                               snapshot=snapshot)]


def stale_removals(previous: Iterable[Message], current: Iterable[Message]) -> list[Message]:
    """Empty payloads for the topics of ``previous`` that ``current`` no longer has.

    For a reload: a label, the snapshot, the device id or a prefix that went away leaves a retained
    config behind (and an entity in HA) unless its topic is emptied.
    """
    kept = {topic for topic, _ in current}
    return [(topic, b"") for topic, _ in previous if topic not in kept]


def discovery_configs(*, device_id: str, prefix: str, labels: Sequence[str], model: str, sw_version: str,
                      discovery_prefix: str = "homeassistant",
                      snapshot: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) before encoding; ``discovery_messages`` is this as JSON bytes."""
    _check_topic(discovery_prefix, "discovery_prefix")
    topics = device_topics(prefix, device_id)
    node = node_id(device_id)
    common: dict[str, Any] = {
        "availability": [{"topic": topics["availability"], "payload_available": PAYLOAD_AVAILABLE,
                          "payload_not_available": PAYLOAD_NOT_AVAILABLE}],
        "device": {"identifiers": [node], "name": device_id, "manufacturer": MANUFACTURER, "model": DEVICE_MODEL,
                   "sw_version": sw_version},
        "origin": {"name": ORIGIN, "sw_version": sw_version},
        "qos": SUBSCRIBE_QOS,
    }
    entities = _entities(topics, labels, model, snapshot)
    object_ids = [object_id for _, object_id, _ in entities]
    if len(set(object_ids)) != len(object_ids):
        raise ValueError(f"labels give the same entity id twice: {list(labels)!r}")
    return [(f"{discovery_prefix}/{component}/{node}/{object_id}/config",
             {"name": entity.pop("name"), "unique_id": f"{node}_{object_id}", **entity, **common})
            for component, object_id, entity in entities]


def _entities(topics: dict[str, str], labels: Sequence[str], model: str,
              snapshot: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(component, object_id, entity-specific keys) for each entity, in publishing order."""
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique (got {list(labels)!r})")
    result = topics["result"]
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("sensor", "label", {
            "name": "Label", "state_topic": result, "value_template": "{{ value_json.label }}",
            "json_attributes_topic": result, "icon": DEFAULT_LABEL_ICON}),
        ("sensor", "score", {
            "name": "Score", "state_topic": result, "value_template": "{{ (value_json.score * 100) | round(1) }}",
            "unit_of_measurement": "%", "state_class": "measurement", "suggested_display_precision": 1,
            "icon": "mdi:percent"}),
    ]
    for label in labels:
        entities.append(("binary_sensor", f"label_{safe_id(label)}", {
            "name": label, "state_topic": result, "value_template": label_template(label),
            "payload_on": PAYLOAD_ON, "payload_off": PAYLOAD_OFF,
            "icon": LABEL_ICONS.get(label.lower(), DEFAULT_LABEL_ICON)}))
    entities.append(("sensor", "model_version", {
        "name": f"{model} version" if model else "Model version", "state_topic": topics["state"],
        "value_template": "{{ value_json.version }}", "entity_category": "diagnostic", "icon": "mdi:tag"}))
    if snapshot:
        entities.append(("image", "snapshot", {
            "name": "Snapshot", "image_topic": topics["snapshot"], "content_type": "image/jpeg"}))
    return entities


def label_template(label: str) -> str:
    """``ON`` when the result's label is ``label``, else ``OFF``.

    The label is written as a Python string literal, which Jinja's lexer reads back exactly (quotes,
    backslashes and non-ASCII letters included), so no label can break out of the template.
    """
    return f"{{{{ '{PAYLOAD_ON}' if value_json.label == {label!r} else '{PAYLOAD_OFF}' }}}}"


def _check_topic(prefix: str, what: str) -> None:
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix \
            or any(c in prefix for c in "+#\x00"):
        raise ValueError(f"{what} must be non-empty topic levels without wildcards (got {prefix!r})")


def _encode(config: dict[str, Any]) -> bytes:
    """Compact JSON like the agent's other payloads (agent.mqtt.encode_payload)."""
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
