"""The Result of one classified frame and its MQTT payload (fields are a contract: add, don't rename)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from agent.classify import Classification


@dataclass(frozen=True)
class Result:
    device: str
    model: str
    version: str
    frame: int
    captured_at: float  # epoch seconds
    classification: Classification
    latency_ms: float  # capture -> classification, on this device
    origin: str = ""

    def payload(self) -> dict:
        return {
            "device": self.device,
            "label": self.classification.label,
            "score": self.classification.score,
            "scores": dict(self.classification.scores),
            "model": self.model,
            "version": self.version,
            "frame": self.frame,
            "captured_at": iso_utc(self.captured_at),
            "latency_ms": round(self.latency_ms, 1),
            "source": self.origin,
        }


def iso_utc(epoch_s: float) -> str:
    """2026-11-23T20:01:02.123Z"""
    stamp = datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
