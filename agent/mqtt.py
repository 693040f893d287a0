"""MQTT publisher (paho-mqtt 2.x): availability with Last Will, results, retained state.

paho runs its network thread (``loop_start``); we never call ``wait_for_publish`` (it raises for
messages queued while offline and can hang). Delivery is tracked by message id from ``on_publish``,
which for QoS 1 fires on the broker's PUBACK.

Results go through the durable outbox (``agent/outbox.py``): stored first, then handed to paho by one
sender thread, in order, at most WINDOW at a time and only while connected, so paho's own memory
never becomes a second, unbounded queue. paho resends what it holds after a reconnect by itself; the
outbox forgets a result when its PUBACK arrives.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.errors import PublishError
from agent.inbox import CommandInbox
from agent.logsetup import OncePerWindow
from agent.outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)

# Messages paho may hold (state, availability, results without an outbox, i.e. QoS 0).
MAX_QUEUED = 10_000
# Results handed to paho at a time; below its in-flight limit (20), so all of them are on the wire.
WINDOW = 10


@dataclass(frozen=True)
class Topics:
    availability: str
    result: str
    state: str
    command: str
    command_result: str
    snapshot: str = ""
    group_commands: tuple[str, ...] = ()  # {prefix}/group/{group}/command for each of device.groups

    @classmethod
    def for_device(cls, prefix: str, device: str, groups: tuple[str, ...] = ()) -> Topics:
        base = f"{prefix}/{device}"
        return cls(f"{base}/availability", f"{base}/result", f"{base}/state", f"{base}/command",
                   f"{base}/command/result", f"{base}/snapshot",
                   tuple(f"{prefix}/group/{group}/command" for group in groups))

    @property
    def commands(self) -> tuple[str, ...]:
        """Every topic this device takes commands from."""
        return (self.command, *self.group_commands)


def encode_payload(payload: dict) -> bytes:
    """Compact JSON, the same bytes for the same payload."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Publisher:
    """A connected-when-possible MQTT client that knows which messages the broker has acknowledged."""

    def __init__(self, cfg: MqttConfig, topics: Topics, client_id: str, *, announce: bool = True,
                 outbox: Outbox | None = None):
        self.cfg = cfg
        self.topics = topics
        self.announce = announce  # False for `check`: no Last Will, no "online" (the device's agent owns those)
        self.outbox = outbox  # None: results go straight to paho (QoS 0, or `check`)
        self._dropped = 0  # results paho refused because its queue was full (no outbox)
        self._lock = threading.Condition()  # guards the mid maps; notified on every acknowledgement and new result
        self._pending: set[int] = set()  # mids published but not yet acknowledged
        self._in_flight: dict[int, int] = {}  # mid -> outbox id of the results handed to paho
        self._acked_early: set[int] = set()  # mids acknowledged before publish() returned them
        self._sender: threading.Thread | None = None
        self._sending = True  # the sender thread runs until stop() has waited for what it could flush
        self._connected = threading.Event()
        self._retained_state: bytes | None = None
        self.refused: str | None = None  # the broker's reason when it refused our CONNECT
        self._stopping = False
        self._reported_down = False  # one "cannot connect" line per outage, not one per attempt
        self.on_connect_hooks: list[Callable[[], None]] = []
        self.inbox: CommandInbox | None = None  # set before start(): subscribe to the command topics
        self.client = self._build_client(client_id)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Publisher:
        """Connect in the background; paho reconnects on its own with capped back-off."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        if self.outbox is not None:
            self._sender = threading.Thread(target=self._send_outbox, name="mqtt-outbox", daemon=True)
            self._sender.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, timeout: float = 3.0, drain: bool = True, stop: threading.Event | None = None) -> bool:
        """Publish ``offline``, wait up to ``timeout`` for acknowledgements, disconnect. True if all were acked.

        ``drain=False`` waits for ``offline`` only, not for the outbox (a reload hands it to the next client).
        """
        deadline = time.monotonic() + timeout
        self._stopping = True
        if self.connected and self.announce:
            self._publish(self.topics.availability, b"offline", retain=True)
            self.wait_delivered(timeout, stop, outbox=drain)
        delivered = self.pending() == 0
        # Always disconnect: paho's loop only ends on a disconnect once messages are queued, even on a
        # connection that never got its CONNACK. The join is bounded so a stuck network thread cannot hold us.
        with self._lock:
            self._sending = False  # the sender flushed what it could while we waited above; now it ends
            self._lock.notify_all()
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(1.2, deadline - time.monotonic()))  # paho notices a stop within 1 s when idle
        if self._sender is not None:
            self._sender.join(1.0)  # it ends within one wait; claim() on a closed outbox returns nothing
        if self.outbox is not None:
            self.outbox.close()  # what is left stays on disk for the next run
        if self.inbox is not None:
            self.inbox.close()
        return delivered

    # -- publishing -----------------------------------------------------------------------------

    def publish_result(self, payload: dict) -> None:
        """Store the result in the outbox (the sender publishes it), or publish it at once without one."""
        data = encode_payload(payload)
        if self.outbox is None:
            self._publish(self.topics.result, data, retain=False)
            return
        try:
            self.outbox.put(self.topics.result, data, int(payload.get("frame", 0)))
        except OutboxError as exc:  # disk full or gone: better sent without a copy on disk than not at all
            _QUEUE_LOGGER.error("%s; publishing results without the outbox meanwhile", exc)
            self._publish(self.topics.result, data, retain=False)
            return
        with self._lock:
            self._lock.notify_all()

    @property
    def dropped(self) -> int:
        """Results dropped because the outbox (or paho's queue) was full."""
        return self._dropped + (self.outbox.dropped if self.outbox is not None else 0)

    def publish_state(self, payload: dict) -> None:
        self._retained_state = encode_payload(payload)
        if self.connected:
            self._publish(self.topics.state, self._retained_state, retain=True)

    def publish_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._publish(topic, payload, retain=retain)

    def pending(self) -> int:
        """Messages the broker has not acknowledged yet: results in the outbox, state and availability."""
        with self._lock:
            waiting = len(self._pending)
        return waiting + (len(self.outbox) if self.outbox is not None else 0)

    def wait_delivered(self, timeout: float | None, stop: threading.Event | None = None, outbox: bool = True) -> bool:
        """Block until every published message (with ``outbox``: every result too) is acknowledged,
        ``timeout`` passes or ``stop`` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending or (outbox and self.outbox is not None and len(self.outbox)):
                if stop is not None and stop.is_set():
                    return False
                left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._lock.wait(left)  # woken by every acknowledgement; the cap re-checks ``stop``
            return True

    def _send_outbox(self) -> None:
        """The sender thread: hands the oldest results to paho, in order, while connected and the window has room.

        paho is never called with our lock held: its network thread holds its own lock while it calls
        on_publish, which takes ours.
        """
        while self._sending:
            try:
                self._send_some()
            except Exception as exc:  # a disk or library error must not end delivery for good
                _QUEUE_LOGGER.error("outbox sender: %s: %s; retrying", type(exc).__name__, exc)
                with self._lock:
                    self._lock.wait(1.0)

    def _send_some(self) -> None:
        """One round of the sender: wait for room and results, then hand paho the next few."""
        assert self.outbox is not None
        with self._lock:
            room = WINDOW - len(self._in_flight) if self.connected else 0
            if room <= 0 or len(self.outbox) <= len(self._in_flight):
                self._lock.wait(0.5)  # woken by a new result, an acknowledgement or a connect
                return
        entries = self.outbox.claim(room)
        if not entries:  # all of them handed out already: wait for news rather than spin
            with self._lock:
                self._lock.wait(0.5)
        for entry in entries:
            info = self.client.publish(entry.topic, entry.payload, qos=self.cfg.qos, retain=False)
            with self._lock:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                    self.outbox.ack(entry.id)
                else:
                    self._in_flight[info.mid] = entry.id

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._dropped += 1
            _QUEUE_LOGGER.warning("mqtt queue full, dropping messages (broker away too long) limit=%d", MAX_QUEUED)
            return
        if self.cfg.qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS:
            return  # paho drops QoS 0 while offline; nothing will ever acknowledge it
        # QoS >= 1: paho keeps the message (rc NO_CONN/CONN_LOST included) and sends it after reconnecting.
        with self._lock:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._pending.add(info.mid)

    # -- paho wiring ----------------------------------------------------------------------------

    def _build_client(self, client_id: str) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                             clean_session=True)
        client.suppress_exceptions = True  # a bug in a callback must never end the network thread
        if self.announce:
            client.will_set(self.topics.availability, b"offline", qos=max(1, self.cfg.qos), retain=True)
        client.max_queued_messages_set(MAX_QUEUED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._configure_auth(client)
        client.enable_logger(_PAHO_LOGGER)  # its warnings/errors carry the reason (TLS, socket), deduplicated
        client.on_connect_fail = _guarded(self._on_connect_fail)
        client.on_connect = _guarded(self._on_connect)
        client.on_disconnect = _guarded(self._on_disconnect)
        client.on_publish = _guarded(self._on_publish)
        client.on_message = _guarded(self._on_message)
        return client

    def _configure_auth(self, client: paho.Client) -> None:
        if self.cfg.username:
            password = None
            if self.cfg.password_file:
                password = Path(self.cfg.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            client.username_pw_set(self.cfg.username, password)
        tls = self.cfg.tls
        if tls is None:
            return
        if tls.keyfile and b"ENCRYPTED" in Path(tls.keyfile).read_bytes():
            # paho would prompt for the pass phrase on a terminal, which hangs a daemon.
            raise PublishError(f"mqtt.tls.keyfile {tls.keyfile} is encrypted; use an unencrypted key file")
        try:
            client.tls_set(ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise PublishError(f"mqtt.tls: cannot load certificates: {exc}") from exc
        client.tls_insecure_set(tls.insecure)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = f"connection refused: {reason}"
            logger.error("mqtt connect refused host=%s port=%s reason=%s", self.cfg.host, self.cfg.port, reason)
            return
        logger.info("mqtt connected host=%s port=%s", self.cfg.host, self.cfg.port)
        self._reported_down = False
        self._connected.set()
        if self.announce and not self._stopping:  # a reconnect while stopping must not undo "offline"
            self._publish(self.topics.availability, b"online", retain=True)
        if self._retained_state is not None:
            self._publish(self.topics.state, self._retained_state, retain=True)
        if self.inbox is not None:
            self.inbox.subscribe(client)
        for hook in self.on_connect_hooks:
            hook()
        with self._lock:
            self._lock.notify_all()  # the outbox sender may go on

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._connected.is_set() and not self._stopping:
            logger.warning("mqtt disconnected host=%s reason=%s", self.cfg.host, reason)
            self._reported_down = True
        self._connected.clear()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` block, so the reason is the exception being handled.
        error = sys.exc_info()[1]
        self.refused = str(error) if error else "connection failed"
        if not self._reported_down and not self._stopping:
            self._reported_down = True
            logger.warning("mqtt cannot connect host=%s port=%s error=%s; retrying with back-off up to 30 s",
                           self.cfg.host, self.cfg.port, self.refused)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self.inbox is not None:
            self.inbox.put(message.topic, message.payload, bool(message.retain))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            entry_id = self._in_flight.pop(mid, None)
            if entry_id is not None and self.outbox is not None:
                self.outbox.ack(entry_id)
            elif mid in self._pending:
                self._pending.discard(mid)
            else:
                self._acked_early.add(mid)
            self._lock.notify_all()


class _PahoNoise(OncePerWindow):
    """paho's own warnings, each once per window, minus the one it repeats while waiting to reconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Client is not connected"):
            return False  # our own "cannot connect" line already told the story
        return super().filter(record)


_PAHO_LOGGER = logging.getLogger("agent.mqtt.paho")
_PAHO_LOGGER.setLevel(logging.WARNING)
_PAHO_LOGGER.addFilter(_PahoNoise())
_QUEUE_LOGGER = logging.getLogger("agent.mqtt.queue")
_QUEUE_LOGGER.addFilter(OncePerWindow())


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    def guarded(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("mqtt callback failed callback=%s", callback.__name__)

    return guarded
