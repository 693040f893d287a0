"""Typed configuration: one frozen dataclass per YAML section.

Loading and validation (YAML with line numbers, all errors collected, exit 78) live in
``agent/configload.py``; this module only declares the schema so every stage can import it cheaply.
Each field's ``metadata["doc"]`` is its one-line description (the README's config reference).

Annotations use ``typing.Optional``/``Tuple`` because the loader evaluates them at runtime on Python 3.9.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple


def doc(text: str, **extra: object) -> dict:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class DeviceConfig:
    id: str = field(metadata=doc("device name: letters, digits, '-' and '_'; part of every topic", required=True))
    groups: Tuple[str, ...] = field(default=(), metadata=doc(
        "groups this device takes commands for, on {prefix}/group/<group>/command (letters, digits, '-', '_')"))


FLIPS = ("none", "rotate-180", "horizontal", "vertical")


@dataclass(frozen=True)
class ReconnectConfig:
    initial_s: float = field(default=0.5, metadata=doc("first wait before reopening a failed camera (seconds)"))
    max_s: float = field(default=30.0, metadata=doc("longest wait between reopen attempts (seconds)"))


@dataclass(frozen=True)
class SkipUnchangedConfig:
    threshold: float = field(default=0.02, metadata=doc(
        "share of the picture (over 0, up to 1) that must change for a new request; 0.02 = 2 %"))
    max_interval_s: float = field(default=60.0, metadata=doc(
        "classify at least this often, changed or not (seconds)"))


@dataclass(frozen=True)
class CameraConfig:
    source: str = field(metadata=doc("what to read frames from (folder, image, video file, camera URL)",
                                     required=True))
    fps: float = field(default=1.0, metadata=doc("most frames classified per second; 0 = as fast as possible"))
    loop: bool = field(default=False, metadata=doc("finite sources start over at the end instead of exiting"))
    width: Optional[int] = field(default=None, metadata=doc("capture width asked of the device (pixels)"))
    height: Optional[int] = field(default=None, metadata=doc("capture height asked of the device (pixels)"))
    swap_rb: bool = field(default=False, metadata=doc("swap red and blue (fixes a driver's colour order)"))
    capture_fps: Optional[float] = field(default=None, metadata=doc(
        "frame rate asked of a camera (default: the device's own; csi:// 30)"))
    flip: str = field(default="none", metadata=doc("turn the picture: none | rotate-180 | horizontal | vertical",
                                                    choices=FLIPS))
    timeout_s: float = field(default=5.0, metadata=doc(
        "cameras and streams: open/read timeout; no frame this long = camera down (seconds)"))
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig,
                                       metadata=doc("how a failed camera is reopened"))
    skip_unchanged: Optional[SkipUnchangedConfig] = field(default=None, metadata=doc(
        "no request for a frame that looks like the last classified one; present (even empty) = on"))


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = field(default=4, metadata=doc("tries per request, first one included"))
    initial_s: float = field(default=0.5, metadata=doc("first back-off wait (seconds); doubles each retry, jittered"))
    max_s: float = field(default=8.0, metadata=doc("longest back-off wait (seconds)"))


@dataclass(frozen=True)
class ServerConfig:
    url: str = field(metadata=doc("TF Serving REST base URL, e.g. http://models.lan:8501", required=True))
    model: str = field(metadata=doc("model name on the server", required=True))
    version: Optional[int] = field(default=None, metadata=doc("pin this model version (not with label)"))
    label: Optional[str] = field(default=None, metadata=doc("pin this version label, e.g. stable (not with version)"))
    signature: str = field(default="serving_default", metadata=doc("signature name sent with every request"))
    timeout_s: float = field(default=10.0, metadata=doc("per-request timeout (seconds)"))
    refresh_s: float = field(default=30.0, metadata=doc("a label or latest pin re-reads its version this often (s)"))
    rollback_after: int = field(default=3, metadata=doc(
        "a commanded version failing this many frames in a row is rolled back (0: never)"))
    retry: RetryConfig = field(default_factory=RetryConfig, metadata=doc("retry policy for transient errors"))
    headers: Tuple[Tuple[str, str], ...] = field(default=(), metadata=doc("extra HTTP headers (mapping)"))
    token_file: Optional[str] = field(default=None, metadata=doc("file holding a bearer token for Authorization"))
    ca_certs: Optional[str] = field(default=None, metadata=doc("CA bundle for an https:// server"))
    encoding: str = field(default="auto", metadata=doc(
        "request body: auto (from the model's input type) | json (numbers) | b64_jpeg (encoded image)",
        choices=("auto", "json", "b64_jpeg")))
    json_decimals: int = field(default=4, metadata=doc(
        "decimals per value in json bodies (4 carries every 8-bit step of [0,1] and [-1,1]); 4 to 9"))
    jpeg_quality: int = field(default=90, metadata=doc("JPEG quality of b64_jpeg bodies, 1 to 100"))


@dataclass(frozen=True)
class ModelConfig:
    input: Optional[str] = field(default=None, metadata=doc("input tensor name (default: from /metadata)"))
    output: Optional[str] = field(default=None, metadata=doc("output tensor name (default: from /metadata)"))
    size: Optional[Tuple[int, int]] = field(default=None,
                                            metadata=doc("[height, width] of the model input (default: /metadata)"))
    resize: str = field(default="stretch", metadata=doc("stretch | letterbox | crop",
                                                         choices=("stretch", "letterbox", "crop")))
    interpolation: str = field(default="bilinear", metadata=doc("nearest | bilinear | bicubic | area",
                                                                 choices=("nearest", "bilinear", "bicubic", "area")))
    scale: str = field(default="unit", metadata=doc("unit = [0,1], symmetric = [-1,1], raw = 0..255",
                                                     choices=("unit", "symmetric", "raw")))
    labels: Tuple[str, ...] = field(default=("cat", "dog"), metadata=doc("class names, in output order"))
    threshold: float = field(default=0.5, metadata=doc("sigmoid models: p(labels[1]) at or above this wins"))


@dataclass(frozen=True)
class TlsConfig:
    ca_certs: Optional[str] = field(default=None, metadata=doc("CA bundle (default: the system's)"))
    certfile: Optional[str] = field(default=None, metadata=doc("client certificate (mutual TLS)"))
    keyfile: Optional[str] = field(default=None, metadata=doc("client key, unencrypted (mutual TLS)"))
    insecure: bool = field(default=False, metadata=doc("skip the broker host name check (testing only)"))


@dataclass(frozen=True)
class OutboxConfig:
    max_messages: int = field(default=10_000, metadata=doc(
        "results kept on disk while the broker is away; beyond it the oldest are dropped (counted)"))


@dataclass(frozen=True)
class MqttConfig:
    host: str = field(metadata=doc("broker host name or address", required=True))
    port: int = field(default=1883, metadata=doc("broker port (8883 is usual for TLS)"))
    topic_prefix: str = field(default="catdog", metadata=doc("first level of every topic"))
    qos: int = field(default=1, metadata=doc("QoS of results, state and availability (0, 1 or 2)"))
    client_id: Optional[str] = field(default=None, metadata=doc("MQTT client id (default catdog-<device.id>)"))
    username: Optional[str] = field(default=None, metadata=doc("broker user name"))
    password_file: Optional[str] = field(default=None, metadata=doc("file holding the broker password"))
    tls: Optional[TlsConfig] = field(default=None, metadata=doc("TLS settings; present = TLS on"))
    keepalive: int = field(default=60, metadata=doc("MQTT keepalive (seconds)"))
    state_interval_s: float = field(default=30.0, metadata=doc("retained state is refreshed at least this often"))
    outbox: OutboxConfig = field(default_factory=OutboxConfig, metadata=doc("the durable store of results"))
    snapshot: bool = field(default=False, metadata=doc(
        "publish a retained JPEG of the classified frame on {prefix}/<device>/snapshot when the label changes"))
    snapshot_width: int = field(default=640, metadata=doc("snapshots wider than this are scaled down (pixels)"))
    snapshot_max_bytes: int = field(default=200_000, metadata=doc(
        "largest snapshot (bytes); quality, then size, go down until it fits"))
    homeassistant: bool = field(default=False, metadata=doc("announce the device to Home Assistant (MQTT discovery)"))
    discovery_prefix: str = field(default="homeassistant", metadata=doc("Home Assistant's discovery topic prefix"))


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    camera: CameraConfig
    server: ServerConfig
    mqtt: MqttConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    state_dir: str = field(default="/var/lib/catdog-agent",
                           metadata=doc("outbox and remembered assignments (default $STATE_DIRECTORY if set)"))
    log_level: str = field(default="info", metadata=doc("debug | info | warning | error",
                                                        choices=("debug", "info", "warning", "error")))
    path: str = field(default="", metadata=doc("the file this was loaded from (not a YAML key)", internal=True))

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"catdog-{self.device.id}"
