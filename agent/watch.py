"""A terminal view of what devices publish (``catdog-agent watch``): the fleet table (agent/fleetview.py) by
default, or with ``--lines`` one line per message (availability, results, state)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from agent.fleetclient import BrokerAddress, Credentials

EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 2, 69


def watch(args: argparse.Namespace) -> int:
    """``catdog-agent watch``: broker from --broker, --host/--port or --config (in that order), then localhost."""
    if args.broker is not None and (args.host is not None or args.port is not None):
        args.parser.error("--broker replaces --host/--port: give one or the other")
    broker, prefix, credentials = _connection(args)
    if not args.lines:
        from agent.fleetview import watch_table

        return watch_table(broker, prefix=prefix, device=args.device, credentials=credentials,
                           interval=args.interval)
    watcher = Watcher(broker.host, broker.port_for(credentials.uses_tls), prefix, args.device, out=sys.stdout,
                      credentials=credentials)
    try:
        watcher.start()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot reach the MQTT broker {broker}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        threading.Event().wait()
    finally:
        watcher.stop()
    return EXIT_OK


def _connection(args: argparse.Namespace) -> tuple[BrokerAddress, str, Credentials]:
    from agent.fleetclient import BrokerAddress, Credentials

    broker = args.broker or BrokerAddress(args.host or "", args.port)
    prefix = args.prefix
    credentials = Credentials(username=args.username, password_file=args.password_file, tls=args.tls,
                              ca_certs=args.ca_certs)
    if args.config is not None:
        from agent.configload import load_config

        mqtt = load_config(args.config).mqtt
        broker = BrokerAddress(broker.host or mqtt.host, broker.port or mqtt.port)
        prefix = prefix or mqtt.topic_prefix
        if not (args.username or args.tls or args.ca_certs):
            tls = mqtt.tls
            credentials = Credentials(username=mqtt.username, password_file=mqtt.password_file, tls=tls is not None,
                                      ca_certs=tls.ca_certs if tls else None, certfile=tls.certfile if tls else None,
                                      keyfile=tls.keyfile if tls else None)
    return BrokerAddress(broker.host or "localhost", broker.port), prefix or "catdog", credentials


def format_message(topic: str, payload: bytes) -> str | None:
    """One human line for a device message, or None for topics we do not show."""
    parts = topic.split("/")
    if len(parts) < 3:
        return None
    device, kind = parts[-2], parts[-1]
    text = payload.decode("utf-8", errors="replace")
    if kind == "availability":
        return f"{device:<14} {text}"
    try:
        data = json.loads(text)
    except ValueError:
        return f"{device:<14} {kind}: {text[:120]}"
    if kind == "result" and isinstance(data, dict):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in (data.get("scores") or {}).items())
        return (f"{device:<14} frame {data.get('frame')!s:>4}  {data.get('label', '?'):<5} "
                f"{data.get('score', 0):.3f}  ({scores})  version {data.get('version')}  "
                f"{data.get('latency_ms')} ms  {data.get('source', '')}")
    if kind == "state" and isinstance(data, dict):
        return (f"{device:<14} state {data.get('status')}: {data.get('results')} results, "
                f"errors {data.get('errors')}, server_ok={data.get('server_ok')}, queued={data.get('queued')}")
    return None


class Watcher:
    """Subscribes to ``{prefix}/{device}/#`` and writes one line per message to ``out``."""

    def __init__(self, host: str, port: int, prefix: str = "catdog", device: str = "+",
                 out: TextIO | None = None, on_message: Callable[[str, bytes], None] | None = None,
                 credentials: Credentials | None = None):
        self.host, self.port = host, port
        self.credentials = credentials
        self.topic = f"{prefix}/{device}/#"
        self.out = out
        self.extra = on_message
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        self.client.suppress_exceptions = True
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> Watcher:
        if self.credentials is not None:
            self.credentials.apply(self.client)
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if self.extra is not None:
            self.extra(message.topic, payload)
        line = format_message(message.topic, payload)
        if line is not None and self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()
