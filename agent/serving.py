"""TF Serving REST client: URLs, status, metadata, predict, error mapping and the retry policy.

This module is the one boundary where HTTP exceptions and statuses become agent errors:
connection errors, timeouts and 429/502/503/504 are transient (retried with jittered exponential
back-off); every other failure is permanent or a bad reply, and is never retried blindly.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import quote

import tenacity

from agent.errors import (
    BadReplyError,
    ModelNotAvailable,
    PermanentServerError,
    ServerError,
    TransientServerError,
)
from agent.httpclient import Connection, Response

logger = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """Where the model lives: base URL, model name and at most one of version / label."""

    url: str
    model: str
    version: int | None = None
    label: str | None = None

    @property
    def pin(self) -> str:
        """Human-readable pin: 'version 2', 'label stable' or 'latest'."""
        if self.version is not None:
            return f"version {self.version}"
        if self.label is not None:
            return f"label {self.label}"
        return "latest"

    def model_url(self, *, pinned: bool = True) -> str:
        base = f"{self.url.rstrip('/')}/v1/models/{quote(self.model, safe='')}"
        if pinned and self.version is not None:
            return f"{base}/versions/{self.version}"
        if pinned and self.label is not None:
            return f"{base}/labels/{quote(self.label, safe='')}"
        return base

    @property
    def predict_url(self) -> str:
        return self.model_url() + ":predict"

    @property
    def metadata_url(self) -> str:
        return self.model_url() + "/metadata"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_s: float = 0.5
    max_s: float = 8.0


@dataclass(frozen=True)
class VersionStatus:
    version: str
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} {self.dtype} [{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class ModelMetadata:
    """What ``/metadata`` says about one signature, and which version actually answered."""

    version: str
    inputs: Mapping[str, TensorInfo] = field(default_factory=dict)
    outputs: Mapping[str, TensorInfo] = field(default_factory=dict)


class ServingClient:
    """One keep-alive HTTP connection to one TF Serving model, pinned as the endpoint says.

    The standard library's http.client under a thin keep-alive layer (agent/httpclient.py), not requests
    or urllib3: per request 0.7 ms of CPU instead of 2 or 1.3 ms here (bench/frame_path.py). Proxies from
    the environment (http_proxy, no_proxy) are looked up once, for the server's URL.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        signature: str = "serving_default",
        timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        headers: Mapping[str, str] | None = None,
        ca_certs: str | None = None,
        stop: threading.Event | None = None,
    ):
        self.endpoint = endpoint
        self.signature = signature
        self.timeout_s = timeout_s
        self.retry = retry
        self.stop = stop or threading.Event()
        self.on_retry: Callable[[], None] | None = None  # called before each back-off (systemd watchdog)
        self.headers = {"Content-Type": "application/json", "User-Agent": "catdog-agent", **(headers or {})}
        # Connect within 5 s at most: a dead host fails fast; a busy server may take the full timeout to answer.
        self.http = Connection(endpoint.url, connect_timeout=min(timeout_s, 5.0), read_timeout=timeout_s,
                               ca_certs=ca_certs)

    def close(self) -> None:
        self.http.close()

    # -- public calls -------------------------------------------------------------------------

    def predict(self, body: bytes) -> dict:
        """POST one request body to ``:predict``; the parsed reply (retried on transient errors).

        A 404 (the version was unloaded, the label removed) raises ModelNotAvailable listing what is served.
        """
        try:
            return self._with_retry("predict", lambda: self._call("POST", self.endpoint.predict_url, body))
        except PermanentServerError as exc:
            if exc.status == 404 and not isinstance(exc, ModelNotAvailable):
                raise self._not_available(str(exc)) from exc
            raise

    def status(self, *, pinned: bool = True) -> list[VersionStatus]:
        """Version states of the pinned version, or of all versions (label/latest, or pinned=False)."""
        url = self.endpoint.model_url(pinned=pinned and self.endpoint.version is not None)
        reply = self._with_retry("status", lambda: self._call("GET", url))
        return parse_status(reply, url)

    def metadata(self) -> ModelMetadata:
        """Signature inputs/outputs of the pinned model, and the version that answered."""
        url = self.endpoint.metadata_url
        reply = self._with_retry("metadata", lambda: self._call("GET", url))
        return parse_metadata(reply, self.signature, url)

    def available_versions(self) -> list[str]:
        """Versions the server reports AVAILABLE for this model (one attempt, no retry)."""
        try:
            reply = self._call("GET", self.endpoint.model_url(pinned=False))
            return [v.version for v in parse_status(reply, "") if v.state == "AVAILABLE"]
        except ServerError:
            return []

    def check_available(self) -> list[VersionStatus]:
        """Raise ModelNotAvailable (listing what is) unless the pinned model can be served now."""
        try:
            states = self.status()
        except PermanentServerError as exc:
            if exc.status == 404:
                raise self._not_available(str(exc)) from exc
            raise
        if self.endpoint.version is not None:
            state = states[0].state if states else "missing"
            if state != "AVAILABLE":
                detail = f"version {self.endpoint.version} is {state}"
                if state in ("START", "LOADING"):
                    raise TransientServerError(self._describe(detail + " (still loading)"))
                raise self._not_available(detail)
        elif not any(s.state == "AVAILABLE" for s in states):
            raise TransientServerError(self._describe("no version is AVAILABLE yet"))
        return states

    # -- internals ------------------------------------------------------------------------------

    def _not_available(self, detail: str) -> ModelNotAvailable:
        versions = self.available_versions()
        listed = ", ".join(versions) if versions else "none"
        return ModelNotAvailable(self._describe(f"{detail}; available versions: {listed}"), status=404)

    def _describe(self, detail: str) -> str:
        return f"model {self.endpoint.model} {self.endpoint.pin} at {self.endpoint.url}: {detail}"

    def _with_retry(self, operation: str, call: Callable[[], T]) -> T:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientServerError),
            stop=tenacity.stop_after_attempt(self.retry.attempts) | _stop_when_set(self.stop),
            # "Full jitter" between initial/2 and the capped exponential: devices that lost the server
            # together do not come back in lock-step.
            wait=tenacity.wait_random_exponential(multiplier=self.retry.initial_s, max=self.retry.max_s,
                                                  min=self.retry.initial_s / 2),
            sleep=self._sleep,
            before_sleep=self._before_retry(operation),
            reraise=True,
        )
        return retrying(call)

    def _before_retry(self, operation: str) -> Callable[[tenacity.RetryCallState], None]:
        """One log line per retry, and ``on_retry`` (a retry is progress: the systemd watchdog)."""

        def before(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait_s = state.next_action.sleep if state.next_action else 0.0
            logger.warning("server retry op=%s attempt=%d wait_s=%.2f error=%s", operation,
                           state.attempt_number, wait_s, error)
            if self.on_retry is not None:
                self.on_retry()

        return before

    def _sleep(self, seconds: float) -> None:
        """A back-off wait: a stop signal ends it at once; ``on_retry`` keeps being called (watchdog)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            # Short slices: on_retry pings at most every half watchdog period, so a ping that was just too
            # early to count must get another chance well before the other half has passed.
            if left <= 0 or self.stop.wait(min(left, 0.25)):
                return
            if self.on_retry is not None:
                self.on_retry()

    def _call(self, method: str, url: str, body: bytes | None = None) -> Any:
        """One HTTP exchange, mapped to a parsed JSON reply or an agent error."""
        if self.stop.is_set():  # a retry scheduled before the stop must not go out after it
            raise TransientServerError(f"{method} {url}: not sent, stopping", url=url)
        try:
            response = self.http.request(method, url, body=body, headers=self.headers)
        except (socket.timeout, TimeoutError) as exc:  # before OSError, their parent; 3.9's socket.timeout differs
            raise TransientServerError(f"{method} {url}: timed out after {self.timeout_s:g} s", url=url) from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, TLS, a reply that is not HTTP
            raise TransientServerError(f"{method} {url}: cannot connect ({_root_cause(exc)})", url=url) from exc
        except ValueError as exc:  # a proxy setting or URL that cannot be used
            raise PermanentServerError(f"{method} {url}: {exc}", url=url) from exc
        if response.status != 200:
            raise _status_error(method, url, response)
        return _parse_json(response, url)


def _stop_when_set(stop: threading.Event) -> tenacity.stop.stop_base:
    class _StopWhenSet(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return stop.is_set()

    return _StopWhenSet()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text or type(exc).__name__


def _status_error(method: str, url: str, response: Response) -> ServerError:
    message = f"{method} {url}: HTTP {response.status}: {server_message(response)}"
    if response.status in TRANSIENT_STATUSES:
        return TransientServerError(message, status=response.status, url=url)
    return PermanentServerError(message, status=response.status, url=url)


def server_message(response: Response) -> str:
    """The server's ``{"error": ...}`` text, or a short excerpt of a non-JSON body (HTML proxies)."""
    text = response.data.decode("utf-8", errors="replace")
    try:
        error = json.loads(text).get("error")
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    excerpt = " ".join(text.split())[:160]
    return excerpt or response.reason or "(empty body)"


def _parse_json(response: Response, url: str) -> Any:
    try:
        # TF Serving writes bare NaN/Infinity tokens: Python's json accepts them by default.
        return json.loads(response.data)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        excerpt = " ".join(response.data.decode("utf-8", errors="replace").split())[:80]
        raise BadReplyError(f"reply from {url} is not JSON ({exc}): {excerpt!r}", url=url) from exc


def parse_status(reply: Any, url: str) -> list[VersionStatus]:
    """Decode ``model_version_status`` (newest first, versions as strings)."""
    entries = reply.get("model_version_status") if isinstance(reply, dict) else None
    if not isinstance(entries, list):
        raise BadReplyError(f"status reply from {url} has no model_version_status list", url=url)
    states = []
    for entry in entries:
        status = entry.get("status") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(status, (dict, type(None))):
            raise BadReplyError(f"status reply from {url}: malformed entry {str(entry)[:80]!r}", url=url)
        status = status or {}
        states.append(VersionStatus(str(entry.get("version", "")), str(entry.get("state", "UNKNOWN")),
                                    str(status.get("error_code", "OK")), str(status.get("error_message", ""))))
    return states


def parse_metadata(reply: Any, signature: str, url: str) -> ModelMetadata:
    """Decode the doubled ``metadata.signature_def.signature_def`` map for one signature."""
    try:
        version = str(reply["model_spec"]["version"])
        signatures = reply["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError) as exc:
        raise BadReplyError(f"metadata reply from {url} lacks {exc}", url=url) from exc
    if not isinstance(signatures, dict):
        raise BadReplyError(f"metadata reply from {url}: signature_def is not an object", url=url)
    if signature not in signatures:
        names = ", ".join(sorted(k for k in signatures if not k.startswith("__"))) or "none"
        raise PermanentServerError(f"signature {signature!r} not found at {url} (signatures: {names})", url=url)
    sig = signatures[signature]
    inputs, outputs = (sig.get(key, {}) if isinstance(sig, dict) else None for key in ("inputs", "outputs"))
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise BadReplyError(f"metadata reply from {url}: signature {signature!r} is malformed", url=url)
    return ModelMetadata(version, _tensors(inputs, url), _tensors(outputs, url))


def _tensors(entries: Mapping[str, Any], url: str) -> dict[str, TensorInfo]:
    tensors = {}
    for alias, info in entries.items():
        try:
            dims = info.get("tensor_shape", {}).get("dim", [])
            shape = tuple(int(d.get("size", -1)) for d in dims)
            tensors[alias] = TensorInfo(alias, str(info.get("dtype", "DT_INVALID")), shape)
        except (AttributeError, TypeError, ValueError) as exc:
            raise BadReplyError(f"metadata reply from {url}: tensor {alias!r} is malformed ({exc})") from exc
    return tensors
