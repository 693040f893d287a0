"""What the central side assigned to this device, remembered in ``state_dir`` across restarts.

``assignment.json`` holds the pin a command set (and the one before it, for a rollback), fps and
pause, and the ids of the last commands handled -- so a retained command is applied once, not on
every reconnect. It is small and written only when a command changes something (SD cards wear).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.commands import Pin

logger = logging.getLogger(__name__)

FILE_NAME = "assignment.json"
REMEMBERED_IDS = 64


@dataclass(frozen=True)
class Assignment:
    """Overrides of the config's pin, fps and pause, with where the pin came from."""

    pin: Pin | None = None  # None: the config's pin
    previous: Pin | None = None  # what served before ``pin`` (None: the config's pin): the rollback target
    command_id: str | None = None  # the command that set ``pin``
    source: str = "config"  # config | command | retained-command | rollback
    fps: float | None = None
    paused: bool = False
    handled: tuple[str, ...] = field(default=())  # ids of the last commands handled, oldest first

    def handled_id(self, command_id: str) -> Assignment:
        ids = tuple(i for i in self.handled if i != command_id) + (command_id,)
        return replace(self, handled=ids[-REMEMBERED_IDS:])

    def payload(self) -> dict[str, Any]:
        return {
            "pin": self.pin.payload() if self.pin else None,
            "previous": self.previous.payload() if self.previous else None,
            "command_id": self.command_id,
            "source": self.source,
            "fps": self.fps,
            "paused": self.paused,
            "handled": list(self.handled),
        }

    @classmethod
    def from_payload(cls, data: Any) -> Assignment:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        pin, previous = (Pin.from_payload(data[key]) if data.get(key) is not None else None
                         for key in ("pin", "previous"))
        fps, paused, handled = data.get("fps"), data.get("paused", False), data.get("handled", [])
        if fps is not None and (type(fps) not in (int, float) or fps < 0):
            raise ValueError(f"fps {fps!r} is not a number of 0 or more")
        if not isinstance(paused, bool) or not isinstance(handled, list):
            raise ValueError("paused must be a boolean and handled a list")
        source = data.get("source", "command")
        return cls(pin, previous, data.get("command_id"), str(source), None if fps is None else float(fps),
                   paused, tuple(str(i) for i in handled[-REMEMBERED_IDS:]))


class AssignmentStore:
    """Reads and atomically rewrites ``state_dir/assignment.json``."""

    def __init__(self, state_dir: str):
        self.path = Path(state_dir) / FILE_NAME

    def load(self) -> Assignment:
        """The remembered assignment; a missing file is none, an unreadable one is logged and ignored."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Assignment()
        except OSError as exc:
            logger.error("cannot read the remembered assignment path=%s: %s; using the config's pin", self.path, exc)
            return Assignment()
        try:
            return Assignment.from_payload(json.loads(text))
        except ValueError as exc:
            logger.error("ignoring a malformed remembered assignment path=%s: %s; using the config's pin",
                         self.path, exc)
            return Assignment()

    def save(self, assignment: Assignment) -> None:
        """Write it whole or not at all (temp file, fsync, rename); an error is logged, not raised."""
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "w", encoding="utf-8") as out:
                json.dump(assignment.payload(), out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            logger.error("cannot remember the assignment path=%s: %s; it holds until the agent restarts",
                         self.path, exc)
