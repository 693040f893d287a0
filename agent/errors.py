"""One exception hierarchy for the agent; library exceptions are mapped to it at one boundary each.

AgentError
 ├── ConfigError              bad configuration (exit 78)
 ├── SourceError              a frame source failed (open/read/decode)
 │    ├── SourceUnavailable   the device or file is missing at start (exit 69)
 │    ├── CameraStalled       a camera call never returns: the run ends (exit 1) for systemd to restart it
 │    └── FrameDecodeError    one frame/file could not be decoded (skipped, counted)
 ├── ServerError              TF Serving request failed
 │    ├── TransientServerError   connection refused/reset, timeout, 429/502/503/504: retried
 │    ├── PermanentServerError   400/404/other 4xx and 5xx: never retried blindly
 │    │    └── ModelNotAvailable  the pinned version/label is not served (lists what is)
 │    └── BadReplyError           reply is not what the protocol promises (not JSON, shape, NaN)
 └── PublishError             MQTT setup failed (bad TLS files, unresolvable host)
"""

from __future__ import annotations

# Process exit codes (README "Exit codes"): sysexits' EX_UNAVAILABLE and EX_CONFIG, 130 for Ctrl-C.
EXIT_OK, EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 69, 78, 130


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    kind = "agent"


class ConfigError(AgentError):
    """The configuration is invalid; ``problems`` holds one line per error."""

    kind = "config"

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class SourceError(AgentError):
    kind = "source"


class SourceUnavailable(SourceError):
    kind = "source_unavailable"


class CameraStalled(SourceError):
    kind = "camera_stalled"


class FrameDecodeError(SourceError):
    kind = "decode"


class ServerError(AgentError):
    kind = "server"

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url


class TransientServerError(ServerError):
    kind = "server_transient"


class PermanentServerError(ServerError):
    kind = "server_permanent"


class ModelNotAvailable(PermanentServerError):
    kind = "model_unavailable"


class BadReplyError(ServerError):
    kind = "bad_reply"


class PublishError(AgentError):
    kind = "publish"
