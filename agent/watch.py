"""A terminal view of what devices publish: availability, results, state (``catdog-agent watch``)."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


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
                 out: TextIO | None = None, on_message: Callable[[str, bytes], None] | None = None):
        self.host, self.port = host, port
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
