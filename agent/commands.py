"""Commands from the central side: parsed and checked here, applied by the daemon between two frames.

A command is a JSON object with an ``id`` and exactly one action::

    {"id": "a1", "set": {"version": 3}}        pin version 3 (or {"label": "canary"}; null = the config's pin)
    {"id": "a2", "set": {"fps": 0.5}}          classify at most 0.5 frames per second (0 = unpaced)
    {"id": "a3", "pause": true}                stop classifying (false: resume)
    {"id": "a4", "snapshot": true}             publish the last classified frame on the snapshot topic

Anything else is refused with a one-line reason that goes back on ``command/result``; nothing here
raises past ``parse_command``. The JSON Schema is ``schemas/command.schema.json``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_COMMAND_BYTES = 64 * 1024
ACTIONS = ("set", "pause", "snapshot")
SET_KEYS = ("version", "label", "fps")
_ID = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces: it is echoed in logs and topics' payloads
_LABEL = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class CommandError(ValueError):
    """A command that cannot be applied; ``command_id`` is its id when it had a usable one."""

    def __init__(self, message: str, command_id: str | None = None):
        super().__init__(message)
        self.command_id = command_id


@dataclass(frozen=True)
class Pin:
    """Which version answers: a version number, a label, or neither (the server's latest)."""

    version: int | None = None
    label: str | None = None

    def describe(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        if self.label is not None:
            return f"label {self.label}"
        return "latest"

    def payload(self) -> dict[str, Any]:
        return {"version": self.version, "label": self.label}

    @classmethod
    def from_payload(cls, data: Any) -> Pin:
        if not isinstance(data, dict):
            raise ValueError(f"a pin must be an object, not {data!r}")
        version, label = data.get("version"), data.get("label")
        if not (version is None or (type(version) is int and version >= 0)) or not (
                label is None or (isinstance(label, str) and _LABEL.fullmatch(label))):
            raise ValueError(f"not a valid pin: {data!r}")
        return cls(version, label)


@dataclass(frozen=True)
class Command:
    """One checked command. ``pin`` is set for a version/label change; ``unpin`` for a return to the config's pin."""

    id: str
    pin: Pin | None = None
    unpin: bool = False
    fps: float | None = None
    pause: bool | None = None
    snapshot: bool = False

    def describe(self) -> str:
        if self.unpin:
            return "back to the configured pin"
        if self.pin is not None:
            return f"pin {self.pin.describe()}"
        if self.fps is not None:
            return f"fps {self.fps:g}"
        if self.pause is not None:
            return "pause" if self.pause else "resume"
        return "snapshot"


def parse_command(payload: bytes) -> Command:
    """The command in an MQTT payload, or CommandError with the reason (and the id, when there was one)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command is too large ({len(payload)} bytes; at most {MAX_COMMAND_BYTES})")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise CommandError("command is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"command is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"command must be a JSON object, not {_json_type(data)}")
    command_id = data.get("id")
    if not isinstance(command_id, str) or not _ID.fullmatch(command_id):
        raise CommandError("command needs an id: a string of 1 to 64 printable characters without spaces")
    try:
        return _action(command_id, data)
    except CommandError as exc:
        exc.command_id = command_id
        raise


def _action(command_id: str, data: dict[str, Any]) -> Command:
    keys = [key for key in data if key != "id"]
    unknown = [key for key in keys if key not in ACTIONS]
    if unknown:
        raise CommandError(f"unknown command {unknown[0]!r} (known: {', '.join(ACTIONS)})")
    if not keys:
        raise CommandError(f"no command given (one of: {', '.join(ACTIONS)})")
    if len(keys) > 1:
        raise CommandError(f"one command per message, got {', '.join(sorted(keys))}")
    action, value = keys[0], data[keys[0]]
    if action == "pause":
        if not isinstance(value, bool):
            raise CommandError(f"pause must be true or false, not {_json_type(value)}")
        return Command(command_id, pause=value)
    if action == "snapshot":
        if value is not True:
            raise CommandError("snapshot must be true")
        return Command(command_id, snapshot=True)
    return _set(command_id, value)


def _set(command_id: str, value: Any) -> Command:
    if not isinstance(value, dict) or not value:
        raise CommandError("set must be an object with version, label or fps")
    unknown = [key for key in value if key not in SET_KEYS]
    if unknown:
        raise CommandError(f"set: unknown key {unknown[0]!r} (known: {', '.join(SET_KEYS)})")
    if "fps" in value:
        if len(value) > 1:
            raise CommandError("set: fps goes in a command of its own, not with version or label")
        return Command(command_id, fps=_fps(value["fps"]))
    if "version" in value and "label" in value:
        raise CommandError("set: either version or label, not both")
    version, label = value.get("version"), value.get("label")
    if version is not None and (type(version) is not int or version < 0):
        raise CommandError(f"set: version must be a whole number of 0 or more, not {json.dumps(version)}")
    if label is not None and (not isinstance(label, str) or not _LABEL.fullmatch(label) or label.isdigit()):
        raise CommandError(f"set: label must be a version label such as stable (letters, digits, '-', '_', "
                           f"'.'; not all digits), not {json.dumps(label)}")
    if version is None and label is None:
        return Command(command_id, unpin=True)
    return Command(command_id, pin=Pin(version, label))


def _fps(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not (value == 0 or 0.001 <= value <= 1000):
        raise CommandError(f"set: fps must be 0 (unpaced) or 0.001 to 1000, not {json.dumps(value)}")
    return float(value)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
