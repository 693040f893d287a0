"""The JSON Schemas of schemas/ for tests: ``validate(kind, payload)`` and ``validate_message(topic, payload)``.

``kind`` is a schema file's stem (``result``, ``state``, ``availability``, ``command``, ``command-result``,
``homeassistant-discovery``). Payloads may be given as received (bytes) or decoded: JSON kinds are parsed,
``availability`` is plain text and only decoded as UTF-8.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
PLAIN_TEXT_KINDS = {"availability"}
# Topic suffix -> kind, most specific first ("…/command/result" also ends with "/result").
TOPIC_KINDS = (
    ("/command/result", "command-result"),
    ("/command", "command"),
    ("/availability", "availability"),
    ("/result", "result"),
    ("/state", "state"),
    ("/snapshot", None),  # raw JPEG bytes, no schema
)
JPEG_MAGIC = b"\xff\xd8\xff"


def schema_paths() -> list[Path]:
    return sorted(SCHEMAS.glob("*.schema.json"))


def kinds() -> list[str]:
    return [path.name.removesuffix(".schema.json") for path in schema_paths()]


def load_schema(kind: str) -> dict:
    path = SCHEMAS / f"{kind}.schema.json"
    if not path.is_file():
        raise KeyError(f"no schema for {kind!r}; known: {', '.join(kinds())}")
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def registry() -> Registry:
    """Every schema under its $id, so that one can $ref another (command-result embeds state)."""
    resources = []
    for kind in kinds():
        contents = load_schema(kind)
        resources.append((contents["$id"], Resource.from_contents(contents, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


@cache
def validator(kind: str, component: str | None = None) -> Draft202012Validator:
    """The validator for ``kind``; ``component`` picks a ``$defs`` entry (``homeassistant-discovery``: sensor…)."""
    schema = load_schema(kind)
    if component is not None:
        if component not in schema.get("$defs", {}):
            raise KeyError(f"{kind} has no $defs/{component}")
        schema = {"$schema": schema["$schema"], "$ref": f"{schema['$id']}#/$defs/{component}"}
    return Draft202012Validator(schema, registry=registry())


def decode(kind: str, payload: Any) -> Any:
    """A payload as received (bytes) or as text, decoded for ``kind``; anything else is returned as is."""
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload).decode("utf-8")
    if isinstance(payload, str) and kind not in PLAIN_TEXT_KINDS:
        return json.loads(payload)
    return payload


def errors(kind: str, payload: Any, component: str | None = None) -> list[str]:
    """Every reason ``payload`` does not match the schema, one line each; empty if it does."""
    instance = decode(kind, payload)
    found = sorted(validator(kind, component).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found]


def validate(kind: str, payload: Any, component: str | None = None) -> Any:
    """Assert that ``payload`` matches ``schemas/<kind>.schema.json``; returns the decoded payload."""
    problems = errors(kind, payload, component)
    assert not problems, f"{kind} payload does not match its schema:\n  " + "\n  ".join(problems) + \
        f"\npayload: {payload!r}"
    return decode(kind, payload)


def kind_for_topic(topic: str) -> str | None:
    """The schema kind of a catdog topic (None for the raw-JPEG snapshot); KeyError for a topic with none."""
    for suffix, kind in TOPIC_KINDS:
        if topic.endswith(suffix):
            return kind
    raise KeyError(f"no schema for topic {topic!r}: add one to schemas/ and to tests/helpers_schemas.py")


def validate_message(topic: str, payload: bytes) -> str | None:
    """Validate one received message by its topic; returns the kind it was checked against."""
    kind = kind_for_topic(topic)
    if kind is None:
        assert payload.startswith(JPEG_MAGIC), f"{topic}: snapshot payload is not JPEG: {payload[:16]!r}"
        return None
    validate(kind, payload)
    return kind
