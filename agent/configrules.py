"""What a valid value is: problem recording and one small check per rule.

``Walk`` collects problems as ``<file>: <key.path>: <what is wrong> (line N)``. Each ``check_*``
receives a section already converted to its dataclass and reports through ``Walk.rule``, which drops
a sentence about a key that already has a problem. ``RULES`` maps a section's key path to its checks;
``agent.configload`` applies them, and the path resolution of ``agent.configpaths``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from agent.config import (
    CameraConfig,
    DeviceConfig,
    ModelConfig,
    MqttConfig,
    OutboxConfig,
    ReconnectConfig,
    RetryConfig,
    ServerConfig,
    SkipUnchangedConfig,
    TlsConfig,
)
from agent.yamlpos import KeyPath

INVALID: Any = object()  # a value that could not be converted; its problem is already reported

_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SERVABLE_NAME = re.compile(r"[^/:]+")  # TF Serving's REST grammar for model names and version labels
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


@dataclass
class Walk:
    """What validation needs along the way, and the problems it found."""

    source: str
    base_dir: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    found: list[tuple[int, str]] = field(default_factory=list)
    bad: set[KeyPath] = field(default_factory=set)

    def add(self, path: KeyPath, message: str, *, line_path: KeyPath | None = None,
            line: int | None = None) -> None:
        """Record one problem about the key at ``path``."""
        self.bad.add(path)
        line = line or self._line_of(line_path or path)
        self.found.append((line or 0, format_problem(self.source, path, message, line)))

    def rule(self, path: KeyPath, message: str, *, involves: tuple[KeyPath, ...] = (),
             line_path: KeyPath | None = None) -> None:
        """Record a cross-check's sentence unless a key it reads already has a problem (no echo errors)."""
        if not self.bad.intersection((path, *involves)):
            self.add(path, message, line_path=line_path)

    def problems(self) -> list[str]:
        """The problems in file order; those without a line (missing sections) first."""
        return [text for _line, text in sorted(self.found, key=lambda item: item[0])]

    def _line_of(self, path: KeyPath) -> int | None:
        # A missing key has no line of its own: point at the nearest enclosing key that has one.
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


_DAY_S = 86400.0  # upper bound for periods: larger values overflow timestamps and mean a typo

def dotted(path: KeyPath) -> str:
    """`mqtt.tls.keyfile`, `model.labels[1]`; the empty path is the whole file."""
    if not path:
        return "(file)"
    return path[0] + "".join(part if part.startswith("[") else f".{part}" for part in path[1:])


def format_problem(source: str, path: KeyPath, message: str, line: int | None) -> str:
    """One problem line: `<file>: <key.path>: <what is wrong> (line N)`."""
    return f"{source}: {dotted(path)}: {message}" + (f" (line {line})" if line else "")


# --- rules -------------------------------------------------------------------------------------------

def check_device_id(device: DeviceConfig, walk: Walk) -> None:
    """device.id is one MQTT topic level and part of file names."""
    if not _DEVICE_ID.fullmatch(device.id):
        walk.rule(("device", "id"), f"use 1 to 64 letters, digits, '-' or '_' (got {device.id!r})")


def check_device_groups(device: DeviceConfig, walk: Walk) -> None:
    """Each group is one topic level of {prefix}/group/<group>/command."""
    for group in device.groups:
        if not _DEVICE_ID.fullmatch(group):
            walk.rule(("device", "groups"), f"use 1 to 64 letters, digits, '-' or '_' per group (got {group!r})")
    if len(set(device.groups)) != len(device.groups):
        walk.rule(("device", "groups"), "groups must be unique")


def check_camera_fps(camera: CameraConfig, walk: Walk) -> None:
    """camera.fps is a pace; 0 means as fast as the server answers."""
    if camera.fps != 0 and not 0.001 <= camera.fps <= 1000:
        walk.rule(("camera", "fps"), f"must be 0 (unpaced) or 0.001 to 1000 (got {camera.fps:g})")


def check_capture_size(camera: CameraConfig, walk: Walk) -> None:
    """camera.width and camera.height are positive and given together."""
    for name in ("width", "height"):
        size = getattr(camera, name)
        if size is not None and size <= 0:
            walk.rule(("camera", name), f"must be a positive number of pixels (got {size})")
    if (camera.width is None) != (camera.height is None):
        given = "width" if camera.height is None else "height"
        walk.rule(("camera",), f"set width and height together (only {given} is set)",
                  involves=(("camera", "width"), ("camera", "height")), line_path=("camera", given))


def check_camera_timing(camera: CameraConfig, walk: Walk) -> None:
    """Capture rate and camera timeout within what a device can do and a watchdog tolerates."""
    if camera.capture_fps is not None and not 0.1 <= camera.capture_fps <= 240:
        walk.rule(("camera", "capture_fps"), f"must be 0.1 to 240 frames per second (got {camera.capture_fps:g})")
    if not 0.5 <= camera.timeout_s <= 14:
        # A read is not watched by systemd's watchdog (30 s): it must end well within half of it.
        walk.rule(("camera", "timeout_s"), f"must be 0.5 to 14 seconds (got {camera.timeout_s:g})")
    elif camera.capture_fps is not None and camera.capture_fps * camera.timeout_s < 2:
        # Fewer than two frames per timeout and a healthy camera would be reported down between frames.
        walk.rule(("camera", "capture_fps"), f"{camera.capture_fps:g} fps is too slow for camera.timeout_s "
                  f"{camera.timeout_s:g}: at least two frames must arrive per timeout (raise one of them)",
                  involves=(("camera", "timeout_s"),))


def check_reconnect(reconnect: ReconnectConfig, walk: Walk) -> None:
    """The camera reopen back-off starts small and is capped."""
    if not 0.01 <= reconnect.initial_s <= 60:
        walk.rule(("camera", "reconnect", "initial_s"), f"must be 0.01 to 60 seconds (got {reconnect.initial_s:g})")
    if not reconnect.initial_s <= reconnect.max_s <= 600:
        walk.rule(("camera", "reconnect", "max_s"),
                  f"must be at least initial_s ({reconnect.initial_s:g}) and at most 600 (got {reconnect.max_s:g})")


def check_skip_unchanged(skip: SkipUnchangedConfig, walk: Walk) -> None:
    """camera.skip_unchanged: a share of the picture, and a real period."""
    if not 0 < skip.threshold <= 1:
        walk.rule(("camera", "skip_unchanged", "threshold"),
                  f"must be more than 0 and at most 1, a share of the picture (got {skip.threshold:g})")
    if not 0 < skip.max_interval_s <= _DAY_S:
        walk.rule(("camera", "skip_unchanged", "max_interval_s"),
                  f"must be more than 0 and at most 86400 seconds (got {skip.max_interval_s:g})")


def check_server_url(server: ServerConfig, walk: Walk) -> None:
    """server.url is an http(s) base URL that request paths can be appended to."""
    problem = _url_problem(server.url)
    if problem:
        walk.rule(("server", "url"), f"{problem} (got {server.url!r})")


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises on `host:99999` or `host:abc`
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host name"
    if "?" in url or "#" in url:
        return "must not have a query or fragment"
    return None


def check_server_model(server: ServerConfig, walk: Walk) -> None:
    """server.model becomes one segment of every request path."""
    if not _SERVABLE_NAME.fullmatch(server.model):
        walk.rule(("server", "model"), f"must be a model name without '/' or ':' (got {server.model!r})")


def check_server_version(server: ServerConfig, walk: Walk) -> None:
    """server.version is a TF Serving version number."""
    if server.version is not None and server.version < 0:
        walk.rule(("server", "version"), f"must be 0 or more (got {server.version})")


def check_server_label(server: ServerConfig, walk: Walk) -> None:
    """server.label follows TF Serving's grammar and cannot be mistaken for a version."""
    label = server.label
    if label is None:
        return
    if not _SERVABLE_NAME.fullmatch(label):
        walk.rule(("server", "label"), f"must be a non-empty label without '/' or ':' (got {label!r})")
    elif label.isdigit():
        walk.rule(("server", "label"), f"must not be all digits; pin a number with server.version (got {label!r})")


def check_version_or_label(server: ServerConfig, walk: Walk) -> None:
    """A model is pinned by version or by label, never both."""
    if server.version is not None and server.label is not None:
        walk.rule(("server",), "set either version or label, not both",
                  involves=(("server", "version"), ("server", "label")), line_path=("server", "label"))


def check_server_timeout(server: ServerConfig, walk: Walk) -> None:
    """server.timeout_s bounds every request; server.refresh_s paces version look-ups."""
    for key in ("timeout_s", "refresh_s"):
        value = getattr(server, key)
        if not 0 < value <= _DAY_S:
            walk.rule(("server", key), f"must be more than 0 and at most 86400 seconds (got {value:g})")


def check_server_encoding(server: ServerConfig, walk: Walk) -> None:
    """Fewer than 4 decimals moves a [0,1] pixel by more than a third of its 8-bit step."""
    if not 4 <= server.json_decimals <= 9:
        walk.rule(("server", "json_decimals"), f"must be 4 to 9 (got {server.json_decimals})")
    if not 1 <= server.jpeg_quality <= 100:
        walk.rule(("server", "jpeg_quality"), f"must be 1 to 100 (got {server.jpeg_quality})")
    if not 0 <= server.rollback_after <= 1000:
        walk.rule(("server", "rollback_after"), f"must be 0 (never) to 1000 frames (got {server.rollback_after})")


def check_server_headers(server: ServerConfig, walk: Walk) -> None:
    """server.headers are sendable: token names, values without line breaks."""
    for name, value in server.headers:
        if not _HEADER_NAME.fullmatch(name):
            walk.rule(("server", "headers", name), "is not a valid HTTP header name")
        elif "\r" in value or "\n" in value:
            walk.rule(("server", "headers", name), "must not contain a line break")


def check_retry_attempts(retry: RetryConfig, walk: Walk) -> None:
    """server.retry.attempts counts the first try."""
    if retry.attempts < 1:
        walk.rule(("server", "retry", "attempts"), f"must be 1 or more (got {retry.attempts})")


def check_retry_initial(retry: RetryConfig, walk: Walk) -> None:
    """server.retry.initial_s is a real wait."""
    if not 0 < retry.initial_s <= _DAY_S:
        walk.rule(("server", "retry", "initial_s"),
                  f"must be more than 0 and at most 86400 seconds (got {retry.initial_s:g})")


def check_retry_max(retry: RetryConfig, walk: Walk) -> None:
    """server.retry.max_s caps a back-off that starts at initial_s."""
    if retry.max_s > _DAY_S:
        walk.rule(("server", "retry", "max_s"), f"must be at most 86400 seconds (got {retry.max_s:g})")
    elif 0 < retry.initial_s and retry.max_s < retry.initial_s:
        walk.rule(("server", "retry", "max_s"),
                  f"must be at least initial_s, which is {retry.initial_s:g} (got {retry.max_s:g})",
                  involves=(("server", "retry", "initial_s"),))


def check_model_size(model: ModelConfig, walk: Walk) -> None:
    """model.size is [height, width] in pixels."""
    if model.size is not None and min(model.size) <= 0:
        walk.rule(("model", "size"), f"must be [height, width] of positive integers (got {list(model.size)})")


def check_model_labels(model: ModelConfig, walk: Walk) -> None:
    """model.labels names at least two distinct classes."""
    problem = _labels_problem(model.labels)
    if problem:
        walk.rule(("model", "labels"), problem)


def _labels_problem(labels: tuple[str, ...]) -> str | None:
    if len(labels) < 2:
        return f"needs at least 2 labels (got {len(labels)})"
    if not all(label.strip() for label in labels):
        return "labels must not be empty"
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    return f"labels must be unique ({repeated[0]!r} is given twice)" if repeated else None


def check_model_threshold(model: ModelConfig, walk: Walk) -> None:
    """model.threshold is a probability strictly between 0 and 1."""
    if not 0 < model.threshold < 1:
        walk.rule(("model", "threshold"), f"must be between 0 and 1, both excluded (got {model.threshold:g})")


def check_mqtt_host(mqtt: MqttConfig, walk: Walk) -> None:
    """mqtt.host is a host name or address, not a URL."""
    if not mqtt.host.strip():
        walk.rule(("mqtt", "host"), "must not be empty")
    elif "://" in mqtt.host or "/" in mqtt.host:
        walk.rule(("mqtt", "host"), f"give a host name or address, not a URL (got {mqtt.host!r})")


def check_mqtt_port(mqtt: MqttConfig, walk: Walk) -> None:
    """mqtt.port is a TCP port."""
    if not 1 <= mqtt.port <= 65535:
        walk.rule(("mqtt", "port"), f"must be 1 to 65535 (got {mqtt.port})")


def check_mqtt_qos(mqtt: MqttConfig, walk: Walk) -> None:
    """mqtt.qos is an MQTT quality of service."""
    if mqtt.qos not in (0, 1, 2):
        walk.rule(("mqtt", "qos"), f"must be 0, 1 or 2 (got {mqtt.qos})")


def check_mqtt_keepalive(mqtt: MqttConfig, walk: Walk) -> None:
    """mqtt.keepalive is long enough not to flood a slow link with pings."""
    if not 5 <= mqtt.keepalive <= 65535:  # a 16-bit field in the CONNECT packet
        walk.rule(("mqtt", "keepalive"), f"must be 5 to 65535 seconds (got {mqtt.keepalive})")


def check_topic_prefix(mqtt: MqttConfig, walk: Walk) -> None:
    """mqtt.topic_prefix and discovery_prefix are one or more non-empty topic levels without wildcards."""
    for key in ("topic_prefix", "discovery_prefix"):
        problem = _topic_prefix_problem(getattr(mqtt, key))
        if problem:
            walk.rule(("mqtt", key), f"{problem} (got {getattr(mqtt, key)!r})")


def check_snapshot_bounds(mqtt: MqttConfig, walk: Walk) -> None:
    """A snapshot is a picture a dashboard can show, and small enough for any broker."""
    if not 32 <= mqtt.snapshot_width <= 4096:
        walk.rule(("mqtt", "snapshot_width"), f"must be 32 to 4096 pixels (got {mqtt.snapshot_width})")
    if not 2_000 <= mqtt.snapshot_max_bytes <= 10_000_000:
        walk.rule(("mqtt", "snapshot_max_bytes"), f"must be 2000 to 10000000 bytes (got {mqtt.snapshot_max_bytes})")


def _topic_prefix_problem(prefix: str) -> str | None:
    if not prefix:
        return "must not be empty"
    if "+" in prefix or "#" in prefix:
        return "must not contain the MQTT wildcards '+' or '#'"
    if prefix.startswith("/") or prefix.endswith("/"):
        return "must not start or end with '/'"
    return "must not have empty levels ('//')" if "//" in prefix else None


def check_state_interval(mqtt: MqttConfig, walk: Walk) -> None:
    """mqtt.state_interval_s is a real period."""
    if not 0 < mqtt.state_interval_s <= _DAY_S:
        walk.rule(("mqtt", "state_interval_s"),
                  f"must be more than 0 and at most 86400 seconds (got {mqtt.state_interval_s:g})")


def check_password_needs_username(mqtt: MqttConfig, walk: Walk) -> None:
    """A broker password is only sent with a user name."""
    if mqtt.password_file is not None and mqtt.username is None:
        walk.rule(("mqtt", "password_file"), "needs mqtt.username as well",
                  involves=(("mqtt", "username"),))


def check_tls_key_needs_cert(tls: TlsConfig, walk: Walk) -> None:
    """A client key is useless without its certificate (a certificate file may hold both)."""
    if tls.keyfile is not None and tls.certfile is None:
        walk.rule(("mqtt", "tls", "keyfile"), "needs mqtt.tls.certfile as well",
                  involves=(("mqtt", "tls", "certfile"),))


def check_outbox_bound(outbox: OutboxConfig, walk: Walk) -> None:
    """The outbox holds at least one result and at most what a small SD card should carry (~300 B each)."""
    if not 1 <= outbox.max_messages <= 10_000_000:
        walk.rule(("mqtt", "outbox", "max_messages"), f"must be 1 to 10000000 (got {outbox.max_messages})")


RULES: dict[KeyPath, tuple[Callable[[Any, Walk], None], ...]] = {
    ("device",): (check_device_id, check_device_groups),
    ("camera",): (check_camera_fps, check_capture_size, check_camera_timing),
    ("camera", "reconnect"): (check_reconnect,),
    ("camera", "skip_unchanged"): (check_skip_unchanged,),
    ("server",): (check_server_url, check_server_model, check_server_version, check_server_label,
                  check_version_or_label, check_server_timeout, check_server_headers, check_server_encoding),
    ("server", "retry"): (check_retry_attempts, check_retry_initial, check_retry_max),
    ("model",): (check_model_size, check_model_labels, check_model_threshold),
    ("mqtt",): (check_mqtt_host, check_mqtt_port, check_mqtt_qos, check_mqtt_keepalive, check_topic_prefix,
                check_state_interval, check_password_needs_username, check_snapshot_bounds),
    ("mqtt", "tls"): (check_tls_key_needs_cert,),
    ("mqtt", "outbox"): (check_outbox_bound,),
}
