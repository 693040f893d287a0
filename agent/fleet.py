"""``catdog-agent assign``: pin a model version or label on one device or a group, and report each device's answer.

The whole exchange is the MQTT contract (README "MQTT topics", schemas/):

1. subscribe to ``{prefix}/+/state``, ``{prefix}/+/availability`` and ``{prefix}/+/command/result`` (QoS 1);
2. collect the retained state and availability. MQTT 3.1.1 has no end-of-retained marker, so for one device
   we wait until its state and availability have both arrived, and for a group (or a device that never
   published) a fixed window (``retained_wait``, 1.5 s): retained messages follow the SUBACK at once, so on
   a LAN they are in long before that; raise it for a remote broker with a large fleet;
3. publish ``{"id": "assign-<12 hex>", "set": {...}}`` on ``{prefix}/{device}/command`` or
   ``{prefix}/group/{name}/command``, QoS 1, retained only on request;
4. wait for ``command/result`` with that id from every device that is online, until all answered or timeout.

A group's members are the devices whose retained state lists the group in ``groups``; a device is online
when its retained availability is ``online``. ``assign()`` returns a :class:`Report` (``code, lines = ...``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.fleetclient import (
    TOPIC_LEVEL,
    BrokerAddress,
    BrokerUnavailable,
    Credentials,
    FleetSession,
    describe_pin,
    split_topic,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 69
RETAINED_WAIT_S = 1.5
GROUP_PREFIX = "group:"
LABEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # schemas/command.schema.json set.label


@dataclass(frozen=True)
class Change:
    """What to set: a version, a label, or back to the device's configured pin (``clear``)."""

    version: int | None = None
    label: str | None = None
    clear: bool = False

    def __post_init__(self) -> None:
        if sum((self.version is not None, self.label is not None, self.clear)) != 1:
            raise ValueError("give exactly one of version, label, clear")
        if self.version is not None and (type(self.version) is not int or self.version < 1):
            raise ValueError(f"a model version is a whole number of 1 or more, not {self.version!r}")
        if self.label is not None and (not LABEL.fullmatch(self.label) or self.label.isdigit()):
            raise ValueError(f"a version label has 1 to 64 letters, digits, '-', '_' or '.' and is not all digits "
                             f"(a number is a version), not {self.label!r}")

    def payload(self) -> dict[str, Any]:
        if self.clear:
            return {"version": None}
        return {"version": self.version} if self.version is not None else {"label": self.label}

    def describe(self) -> str:
        if self.clear:
            return "the configured pin"
        return f"version {self.version}" if self.version is not None else f"label {self.label}"


@dataclass(frozen=True)
class Target:
    """A device id or a group (``group:NAME``)."""

    name: str
    group: bool = False

    @classmethod
    def parse(cls, text: str) -> Target:
        group = text.startswith(GROUP_PREFIX)
        name = text[len(GROUP_PREFIX):] if group else text
        if not TOPIC_LEVEL.fullmatch(name):
            what = "group name" if group else "device id"
            raise ValueError(f"{what} {name!r}: 1 to 64 letters, digits, '-' or '_' (a group is group:NAME)")
        return cls(name, group)

    def command_topic(self, prefix: str) -> str:
        return f"{prefix}/group/{self.name}/command" if self.group else f"{prefix}/{self.name}/command"

    def __str__(self) -> str:
        return f"{GROUP_PREFIX}{self.name}" if self.group else self.name


@dataclass
class Report:
    """The outcome: exit ``code``, one ``lines`` entry per device (stdout), ``messages`` for stderr."""

    code: int
    lines: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    command: dict[str, Any] | None = None
    topic: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)  # device -> ok | refused | no-answer | offline | unknown

    def __iter__(self) -> Any:  # code, lines = assign(...)
        yield self.code
        yield self.lines


class Observed:
    """What the broker told us, filled from paho's thread: retained state/availability, and our answers."""

    def __init__(self, prefix: str, command_id: str):
        self.prefix, self.command_id = prefix, command_id
        self.states: dict[str, dict[str, Any]] = {}
        self.availability: dict[str, str] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        where = split_topic(self.prefix, topic)
        if where is None:
            return
        device, kind = where
        with self.changed:
            if kind == "availability":
                self.availability[device] = payload.decode("utf-8", errors="replace").strip()
            elif kind == "state":
                data = _json_object(payload)
                if data is not None:
                    self.states[device] = data
                elif not payload:  # retained state deleted
                    self.states.pop(device, None)
            else:
                answer = _json_object(payload)
                if answer is not None and answer.get("id") == self.command_id:
                    who = answer.get("device")
                    self.answers.setdefault(who if isinstance(who, str) and who else device, answer)
            self.changed.notify_all()

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def members(self, group: str) -> list[str]:
        with self.changed:
            return sorted(d for d, state in self.states.items()
                          if isinstance(state.get("groups"), list) and group in state["groups"])

    def online(self, device: str) -> bool:
        return self.availability.get(device) == "online"


def new_command_id() -> str:
    return "assign-" + uuid.uuid4().hex[:12]


def assign(broker: BrokerAddress | str, target: Target | str, change: Change, *, prefix: str = "catdog",
           timeout: float = 20.0, retain: bool = False, credentials: Credentials | None = None,
           retained_wait: float = RETAINED_WAIT_S, command_id: str | None = None) -> Report:
    """Send one ``set`` command and collect the answers; never raises for broker trouble (code 69)."""
    broker = BrokerAddress.parse(broker) if isinstance(broker, str) else broker
    target = Target.parse(target) if isinstance(target, str) else target
    prefix = prefix.rstrip("/")
    observed = Observed(prefix, command_id or new_command_id())
    session = FleetSession(broker, credentials, on_message=observed.on_message, name="assign")
    try:
        session.start()
        session.subscribe([f"{prefix}/+/state", f"{prefix}/+/availability", f"{prefix}/+/command/result"])
        return _exchange(session, observed, target, change, timeout=timeout, retain=retain,
                         retained_wait=retained_wait)
    except ValueError as exc:  # an unreadable password or TLS file named on the command line
        return Report(EXIT_USAGE, messages=[f"error: {exc}"])
    except BrokerUnavailable as exc:
        return Report(EXIT_UNAVAILABLE, messages=[f"error: {exc}"])
    finally:
        session.stop()


def _exchange(session: FleetSession, observed: Observed, target: Target, change: Change, *, timeout: float,
              retain: bool, retained_wait: float) -> Report:
    if target.group:
        observed.wait(lambda: False, retained_wait)
        addressed = observed.members(target.name)
        if not addressed:
            return Report(EXIT_FAILED, messages=[
                f"error: group {target.name} has no known member: no retained state under {observed.prefix}/ lists "
                f"it in `groups`; nothing was published"])
    else:
        name = target.name
        observed.wait(lambda: name in observed.states and name in observed.availability, retained_wait)
        addressed = [name]
    with observed.changed:
        before = {d: observed.states.get(d) for d in addressed}
        expected = [d for d in addressed if observed.online(d)]
    command = {"id": observed.command_id, "set": change.payload()}
    topic = target.command_topic(observed.prefix)
    session.publish(topic, json.dumps(command, separators=(",", ":")).encode(), retain=retain)
    messages = [f"assign {change.describe()} to {target}: {len(addressed)} device(s), {len(expected)} online; "
                f"command {observed.command_id} on {topic}{' (retained)' if retain else ''}"]
    observed.wait(lambda: all(d in observed.answers or not observed.online(d) for d in expected), timeout)
    with observed.changed:
        outcomes = _outcomes(observed, addressed)
        known = {d for d in outcomes if d in observed.states or d in observed.availability or d in observed.answers}
        width = max(len(d) for d in outcomes)
        lines = [f"{d:<{width}}  " + _line(outcomes[d], observed.answers.get(d), before.get(d), change, timeout,
                                            retain, d in known) for d in sorted(outcomes)]
    return Report(_exit_code(outcomes.values(), retain), lines, messages, command, topic, outcomes)


def _outcomes(observed: Observed, addressed: list[str]) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for device in sorted(set(addressed) | set(observed.answers)):  # a device may answer though not listed
        answer = observed.answers.get(device)
        if answer is not None:
            outcomes[device] = "ok" if answer.get("ok") is True else "refused"
        elif observed.online(device):
            outcomes[device] = "no-answer"
        elif device in observed.states or device in observed.availability:
            outcomes[device] = "offline"
        else:
            outcomes[device] = "unknown"
    return outcomes


def _exit_code(outcomes: Any, retain: bool) -> int:
    outcomes = list(outcomes)
    if any(o in ("refused", "no-answer") for o in outcomes):
        return EXIT_FAILED
    if "ok" not in outcomes and not retain:  # nothing addressed was online: the command went nowhere
        return EXIT_FAILED
    return EXIT_OK


def _line(outcome: str, answer: dict[str, Any] | None, before: dict[str, Any] | None, change: Change,
          timeout: float, retain: bool, known: bool) -> str:
    if outcome == "ok":
        return "ok  " + _applied(answer or {}, before, change)
    if outcome == "refused":
        error = str((answer or {}).get("error") or "refused without a reason")
        return f"REFUSED  {' '.join(error.split())}"
    if outcome == "no-answer":
        return f"no answer within {timeout:g} s"
    note = ("retained: applied when it comes back" if retain
            else "not retained: not applied; use --retain")
    if not known:
        return f"unknown  (never seen on this broker; {note.replace('comes back', 'connects')})"
    return f"offline  ({note})"


def _applied(answer: dict[str, Any], before: dict[str, Any] | None, change: Change) -> str:
    """``version 3 (was 2)``, ``version 4, label canary (was 2)``, ``version 2, configured pin (was 3)``."""
    state = answer.get("state")
    if not isinstance(state, dict):
        return f"{change.describe()} (the answer carries no state)"
    served = state.get("version")
    parts = [f"version {served}" if served is not None else "version not known yet"]
    pin = state.get("pin")
    if isinstance(pin, dict):
        in_force = describe_pin(pin.get("assigned") if pin.get("assigned") is not None else pin.get("configured"))
        if in_force is not None and in_force != parts[0]:
            parts.append(in_force if not in_force.startswith("version") else f"pin {in_force}")
        if pin.get("source") == "config" and change.clear:
            parts.append("configured pin")
    elif isinstance(state.get("label"), str):
        parts.append(f"label {state['label']}")
    was = before.get("version") if isinstance(before, dict) else None
    return ", ".join(parts) + (f" (was {was})" if was is not None else "")


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None
