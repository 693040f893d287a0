"""The operator side's MQTT session (``assign``, ``watch``): broker address, auth, TLS, and what devices publish.

Nothing here touches a device: it only reads the topics of the MQTT contract (README "MQTT topics") and
publishes commands. One :class:`FleetSession` is one paho-mqtt 2.x client (callback API VERSION2, exceptions
in callbacks suppressed so the network thread never dies), connected synchronously so that an unreachable
broker is an immediate, clear error (exit 69) instead of a silent retry loop.
"""

from __future__ import annotations

import re
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883
TOPIC_LEVEL = re.compile(r"[A-Za-z0-9_-]{1,64}")  # device ids and group names: one topic level each
CONNECT_TIMEOUT_S = 10.0


class BrokerUnavailable(Exception):
    """The broker cannot be reached or refused us (exit 69)."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int | None = None  # None: 1883, or 8883 with TLS

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        """``host``, ``host:port``, ``[v6addr]`` or ``[v6addr]:port``; ValueError when malformed."""
        host, port = text.strip(), ""
        if host.startswith("["):
            host, _, rest = host[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"not HOST[:PORT]: {text!r}")
            port = rest[1:]
        elif host.count(":") == 1:
            host, port = host.split(":")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"not HOST[:PORT] (port 1 to 65535): {text!r}")
        return cls(host, int(port) if port else None)

    def port_for(self, tls: bool) -> int:
        if self.port is not None:
            return self.port
        return DEFAULT_TLS_PORT if tls else DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    """Optional user name/password and TLS for the operator's connection."""

    username: str | None = None
    password_file: str | None = None
    tls: bool = False  # TLS with the system's CAs (implied by ca_certs)
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.ca_certs or self.certfile)

    def apply(self, client: paho.Client) -> None:
        """Set auth and TLS on a client; ValueError with a one-line reason for an unusable file."""
        if self.password_file and not self.username:
            raise ValueError("--password-file needs --username")
        if self.username:
            password = None
            if self.password_file:
                try:
                    password = Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    raise ValueError(f"cannot read the password file: {exc}") from None
            client.username_pw_set(self.username, password)
        if self.uses_tls:
            try:
                client.tls_set(ca_certs=self.ca_certs, certfile=self.certfile, keyfile=self.keyfile,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ValueError(f"cannot load the TLS files: {exc}") from None


def split_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(device, kind)`` of ``{prefix}/{device}/{kind}`` (kind ``command/result`` included), else None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    device, _, kind = topic[len(head):].partition("/")
    if not TOPIC_LEVEL.fullmatch(device) or kind not in ("availability", "state", "result", "command/result"):
        return None
    return device, kind


def describe_pin(pin: Any) -> str | None:
    """``version 3`` / ``label stable`` / ``latest`` for a pin object of state.pin, None if it is not one."""
    if not isinstance(pin, dict):
        return None
    if pin.get("version") is not None:
        return f"version {pin['version']}"
    if pin.get("label") is not None:
        return f"label {pin['label']}"
    return "latest"


def describe_version(state: Any) -> str:
    """The served version and the pin in force, from a state payload: ``3``, ``2 (label stable)``, ``4 (latest,
    assigned)``, ``2 (pin version 3)`` while the new version is not answering yet; ``-`` when unknown."""
    if not isinstance(state, dict):
        return "-"
    version = state.get("version")
    served = "-" if version is None else str(version)
    notes: list[str] = []
    pin = state.get("pin")
    if isinstance(pin, dict):
        in_force = pin.get("assigned") if pin.get("assigned") is not None else pin.get("configured")
        described = describe_pin(in_force)
        if described is not None and described != f"version {served}":
            notes.append(described if not described.startswith("version") else f"pin {described}")
        source = pin.get("source")
        if source in ("command", "retained-command"):
            notes.append("assigned")
        elif source == "rollback":
            notes.append("rolled back")
    elif isinstance(state.get("label"), str):
        notes.append(f"label {state['label']}")
    return f"{served} ({', '.join(notes)})" if notes else served


class FleetSession:
    """One connected MQTT client for the operator; ``on_message(topic, payload, retained)`` runs in paho's thread."""

    def __init__(self, broker: BrokerAddress, credentials: Credentials | None = None,
                 on_message: Callable[[str, bytes, bool], None] | None = None, name: str = "cli"):
        self.broker = broker
        self.credentials = credentials or Credentials()
        self.on_message = on_message
        self.connected = threading.Event()
        self.refused: str | None = None
        self._answered = threading.Event()
        self._subscribed = threading.Event()
        self._sub_failed = False
        self._topics: list[str] = []  # subscribed again after a reconnect (clean session: the broker forgot them)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"catdog-{name}-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv311, clean_session=True)
        self.client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = CONNECT_TIMEOUT_S) -> FleetSession:
        """Connect and wait for the broker's answer; BrokerUnavailable (unreachable, TLS, refused) otherwise.
        ValueError for unusable credential files (a usage error)."""
        self.credentials.apply(self.client)
        port = self.broker.port_for(self.credentials.uses_tls)
        self.client.connect_timeout = min(timeout, 5.0)
        try:
            self.client.connect(self.broker.host, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:  # refused, unresolvable, TLS handshake, timeout
            raise BrokerUnavailable(f"cannot reach the MQTT broker {self.broker.host}:{port}: {exc}") from None
        self.client.loop_start()
        if not self._answered.wait(timeout) or self.refused is not None:
            self.stop()
            why = self.refused or f"no answer to CONNECT within {timeout:g} s"
            raise BrokerUnavailable(f"MQTT broker {self.broker.host}:{port}: {why}")
        return self

    def subscribe(self, topics: list[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Subscribe (QoS 1) and wait for the SUBACK, after which the retained messages follow."""
        self._subscribed.clear()
        self._topics = list(topics)
        self.client.subscribe([(topic, 1) for topic in topics])
        if not self._subscribed.wait(timeout) or self._sub_failed:
            raise BrokerUnavailable(f"the broker did not accept the subscription to {', '.join(topics)}")

    def publish(self, topic: str, payload: bytes, retain: bool, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """QoS 1; waits for the broker's PUBACK (BrokerUnavailable if none comes)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
            published = info.is_published()
        except (RuntimeError, ValueError) as exc:  # not connected any more, or the queue is full
            raise BrokerUnavailable(f"cannot publish on {topic}: {exc}") from None
        if not published:
            raise BrokerUnavailable(f"the broker did not acknowledge the command on {topic} within {timeout:g} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = f"connection refused: {reason}"
            client.disconnect()  # no reconnect loop with credentials that were refused
        else:
            self.connected.set()
            if self._topics:  # a reconnect: the retained messages come again, then the live ones
                client.subscribe([(topic, 1) for topic in self._topics])
        self._answered.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._sub_failed = any(code.is_failure for code in codes)
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message.topic, bytes(message.payload), bool(message.retain))
