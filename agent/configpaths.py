"""Path resolution of config values: files next to the config or in $CREDENTIALS_DIRECTORY, URLs trimmed.

``normaliser_for`` gives the resolution of a key by its name; ``agent.configload`` applies it to each
value after conversion. A value that cannot be resolved is reported through ``Walk`` and becomes INVALID.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Callable

from agent.configrules import INVALID, Walk
from agent.yamlpos import KeyPath

_TLS_FILE_KEYS = ("ca_certs", "certfile", "keyfile")
# Camera sources that are devices or URLs, never files next to the config: `rtsp://…`, `picamera2:1`, `/dev/…`.
_DEVICE_SOURCE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|picamera2(:\d+)?$|/dev/")


def normaliser_for(name: str) -> Callable[[Any, KeyPath, Walk], Any] | None:
    """How a key's value is resolved: files next to the config or in $CREDENTIALS_DIRECTORY, URLs trimmed."""
    if name.endswith("_file") or name in _TLS_FILE_KEYS:
        return _resolve_file
    return {"source": _resolve_source, "state_dir": _resolve_dir, "url": _strip_slash}.get(name)


def _resolve_file(value: str, path: KeyPath, walk: Walk) -> Any:
    resolved = _locate_file(value, walk.base_dir)
    if os.path.isdir(resolved):
        walk.add(path, f"expected a file, found a directory: {resolved}")
    elif not os.path.exists(resolved):
        walk.add(path, f"file not found: {resolved}")
    else:
        problem = _unreadable(resolved, key=path[-1])
        if problem is None:
            return resolved
        walk.add(path, problem)
    return INVALID


def _unreadable(path: str, key: str) -> str | None:
    """Why the agent cannot use the file (permissions, not UTF-8 for a secret), or None.

    Checked here, as the agent's own user, so that a root-owned 0600 token is a config error (exit 78,
    one line) rather than a crash that systemd restarts for ever.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None  # a pipe or a device: reading it here could block (or consume it)
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 20)  # secrets and certificates are small
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if not key.endswith("_file"):
        return None  # a certificate or a key: ssl reads it
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{path} is not UTF-8 text (byte {exc.start})"
    token = text.strip()
    if key == "token_file" and not (token.isascii() and token.isprintable() and token):
        return f"{path}: a bearer token is one line of printable ASCII (no BOM, no other characters)"
    return None


def _locate_file(value: str, base_dir: str) -> str:
    if os.path.isabs(value):
        return os.path.normpath(value)
    # systemd LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY; those win over files next to the config.
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and os.path.exists(os.path.join(credentials, value)):
        return os.path.normpath(os.path.join(credentials, value))
    return os.path.normpath(os.path.join(base_dir, value))


def _resolve_source(value: str, path: KeyPath, walk: Walk) -> Any:
    if not value.strip():
        walk.add(path, "must not be empty")
        return INVALID
    if value.startswith("picamera2:") and not _DEVICE_SOURCE.match(value):
        walk.add(path, f"use picamera2 or picamera2:N with N a camera number (got {value!r})")
        return INVALID
    return value if _DEVICE_SOURCE.match(value) else _resolve_dir(value, path, walk)


def _resolve_dir(value: str, _path: KeyPath, walk: Walk) -> str:
    return os.path.normpath(os.path.join(walk.base_dir, value))


def _strip_slash(value: str, _path: KeyPath, _walk: Walk) -> str:
    # Request paths are appended to the base URL; only the path's trailing '/' goes, never the '//'.
    scheme, separator, rest = value.partition("://")
    return scheme + separator + rest.rstrip("/") if separator else value.rstrip("/")
