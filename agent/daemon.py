"""The agent's main loop: frame -> tensor -> prediction -> result -> MQTT, paced, with signals and health.

Read ``run()`` top to bottom: it is the whole product. Each stage lives in its own module; this
one only wires them, decides what an error means for the loop, and keeps ``state`` true. A SIGHUP
re-reads the config between two frames (``agent/reload.py`` decides what that rebuilds).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from functools import partial

from agent.config import Config
from agent.encode import PixelEncoder
from agent.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    AgentError,
    BadReplyError,
    CameraStalled,
    FrameDecodeError,
    PublishError,
    ServerError,
    SourceError,
    SourceUnavailable,
    TransientServerError,
)
from agent.frames import Frame
from agent.health import FAILED_FRAMES_DEGRADED, Health, Status
from agent.logsetup import RepeatFilter
from agent.model import ServedModel, fetch_served_model
from agent.mqtt import Publisher, Topics
from agent.outbox import Outbox, OutboxError
from agent.pacing import Pacer, ReloadSignal, Stopped, StopSignal, backoff_s, call_unless_stopped
from agent.result import Result
from agent.sdnotify import Notifier
from agent.serving import Endpoint, RetryPolicy, ServingClient
from agent.sources import opened_source
from agent.sources.base import FrameSource
from agent.supervision import Heartbeat, Outage, StateReporter

logger = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.0  # SIGTERM -> exit well inside systemd's and the contract's 5 s


def run(config: Config, stop: threading.Event | None = None) -> int:
    """Run the agent until the source ends or ``stop`` is set (SIGTERM/SIGINT set it). Returns the exit code."""
    reloads = ReloadSignal()  # SIGHUP sets it, when run() owns the signals (no ``stop`` given)
    stop = stop or install_signals(StopSignal(), reloads)
    health = Health(config.device.id, config.server.model, config.server.label)
    serving = make_serving_client(config, stop)
    try:
        outbox = open_outbox(config)
        publisher = Publisher(config.mqtt, Topics.for_device(config.mqtt.topic_prefix, config.device.id),
                              config.client_id, outbox=outbox).start()
    except (PublishError, OSError) as exc:
        logger.error("mqtt setup failed: %s", exc)
        return EXIT_CONFIG
    except OutboxError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG
    notifier = Notifier()
    half_period = notifier.watchdog_interval
    if half_period is not None and config.server.timeout_s > half_period:
        logger.warning("server.timeout_s=%g is longer than half the watchdog period (%g s): a server that hangs "
                       "could get the agent killed; lower server.timeout_s or raise WatchdogSec",
                       config.server.timeout_s, half_period)
    agent = Agent(config, stop, reloads, health, serving, publisher, Heartbeat(notifier, health))
    try:
        return agent.run()
    finally:
        agent.shutdown()


class Agent:
    """One run of the pipeline; owns the stages it opens and closes them in ``shutdown``."""

    def __init__(self, config: Config, stop: threading.Event, reloads: ReloadSignal, health: Health,
                 serving: ServingClient, publisher: Publisher, heartbeat: Heartbeat):
        self.config, self.stop, self.reloads, self.health, self.heartbeat = config, stop, reloads, health, heartbeat
        self.serving, self.publisher = serving, publisher
        self.source: FrameSource | None = None
        self.model: ServedModel | None = None
        self.encoder = PixelEncoder(config.model.scale)
        self.pacer = Pacer(config.camera.fps)
        self.outage = Outage(health, config.server.retry.initial_s)
        self.reporter = StateReporter(health, publisher, config.mqtt.state_interval_s)
        self.finished = False  # the finite source ended (as opposed to a stop signal)
        self.repeats = RepeatFilter()
        self.next_refresh = time.monotonic() + config.server.refresh_s
        self.camera_failures = 0
        # Frame numbers go on from the last run's, and across sources a reload swaps: subscribers dedupe
        # on device + frame.
        self.last_frame = publisher.outbox.last_frame if publisher.outbox is not None else 0
        serving.on_retry = heartbeat.progress  # a retry is a decision taken: the loop is alive

    def run(self) -> int:
        self.reporter.publish()
        try:
            self.model = self.wait_for_model()
            if self.model is None:
                return EXIT_OK  # stopped while waiting for the server
            self.source = opened_source(self.config.camera, self.stop)
        except Stopped:
            return EXIT_OK
        except (ServerError, SourceUnavailable) as exc:  # transient server errors are waited out above
            return self.fail_start(exc)
        logger.info("running device=%s source=%s model=%s %s", self.config.device.id, self.source.description,
                    self.config.server.model, self.model.describe())
        self.health.status = Status.RUNNING
        self.reporter.publish()
        try:
            self.loop()
        except CameraStalled as exc:
            self.record_error(exc, logging.ERROR)
            logger.error("exiting so that systemd restarts the agent: only a new process recovers a stuck camera")
            return EXIT_FAILURE
        return EXIT_OK

    def loop(self) -> None:
        """frame -> pixels -> request -> reply -> classification -> result -> MQTT, paced to camera.fps.

        A reload (SIGHUP) is applied between two frames; it may replace the source, so each turn reads it anew.
        """
        retry_frame: Frame | None = None
        while not self.stop.is_set():
            if self.reloads.take():
                self.reload_config()
            source = self.source
            assert source is not None
            try:
                # In a helper thread: a read that blocks (a named pipe with no writer, a dead device)
                # must not hold SIGTERM. A file read that hangs feeds no watchdog, so it trips it; a
                # camera read is bounded by camera.timeout_s, and a camera stuck for good ends the run.
                frame = retry_frame or call_unless_stopped(partial(self.next_frame, source), self.stop)
            except Stopped:
                break
            except SourceError as exc:
                self.source_failed(source, exc)
                self.wait(self.pacer.next_delay())  # every iteration is paced, failed ones too: no busy loop
                continue
            if frame is None:
                self.finished = True
                break
            retry_frame = self.process(frame, source.live)
            self.wait(self.pacer.next_delay())

    def process(self, frame: Frame, live: bool) -> Frame | None:
        """Classify and publish one frame; returns the frame when it should be tried again."""
        try:
            result = self.classify_frame(frame, self.refresh_model())
        except TransientServerError as exc:
            self.outage.down(exc)
            self.reporter.maybe_publish()
            self.wait(self.outage.pause_s())
            return None if live else frame  # a file's frame is worth the wait; a camera has newer ones
        except (ServerError, Stopped) as exc:
            self.skip_frame(frame, exc)
            return None
        self.outage.up()
        self.publisher.publish_result(result.payload())
        self.health.record_result()
        self.heartbeat.ready()
        self.reporter.maybe_publish()
        return None

    def source_failed(self, source: FrameSource, exc: SourceError) -> None:
        """A bad item is skipped; a failing camera or looping source is waited for; a finite one ends the run."""
        if isinstance(exc, FrameDecodeError):
            self.health.record_failed_frame()
            self.record_error(exc, logging.WARNING)
            self.pause_after_failures()
            return
        if isinstance(exc, CameraStalled):
            raise exc  # feeding the watchdog on would keep a wedged camera running for ever
        self.health.camera_ok = False
        self.record_error(exc, logging.ERROR)
        if source.live:
            return  # its read() waited camera.timeout_s already; its capture thread reconnects with back-off
        if not self.config.camera.loop:
            raise exc
        self.camera_failures += 1
        self.wait(backoff_s(self.camera_failures, 0.5, 30.0))

    def refresh_model(self) -> ServedModel:
        """A label (or "latest") can be moved on the server: re-read now and then which version answers."""
        assert self.model is not None
        if self.config.server.version is not None or time.monotonic() < self.next_refresh:
            return self.model
        self.next_refresh = time.monotonic() + self.config.server.refresh_s
        if not self.health.server_ok:
            return self.model
        try:
            model = call_unless_stopped(lambda: fetch_served_model(self.serving, self.config.model), self.stop)
        except (AgentError, Stopped) as exc:
            logger.warning("model refresh failed, keeping version %s: %s", self.model.version, exc)
            return self.model
        if model.version != self.model.version:
            logger.info("model version changed pin=%s from=%s to=%s", self.serving.endpoint.pin,
                        self.model.version, model.version)
        self.model, self.health.version = model, model.version
        return model

    def next_frame(self, source: FrameSource) -> Frame | None:
        """The next frame, or None at the end of a finite source; raises SourceError (decode errors too)."""
        frame = source.read()
        if frame is not None:
            self.health.frames += 1
            self.last_frame += 1
            frame = dataclasses.replace(frame, seq=self.last_frame)  # the device-wide number, not the source's
            if not self.health.camera_ok:
                logger.info("source back source=%s", source.description)
            self.health.camera_ok, self.camera_failures = True, 0
        return frame

    def classify_frame(self, frame: Frame, model: ServedModel) -> Result:
        body = model.request_body(frame.rgb, self.encoder, self.serving.signature)
        reply = call_unless_stopped(lambda: self.serving.predict(body), self.stop)
        classification = model.classification(reply, self.config.model.labels, self.config.model.threshold)
        latency_ms = (time.time() - frame.captured_at) * 1000.0
        logger.debug("result frame=%d origin=%s label=%s score=%.4f latency_ms=%.1f", frame.seq, frame.origin,
                     classification.label, classification.score, latency_ms)
        return Result(self.config.device.id, self.config.server.model, model.version, frame.seq,
                      frame.captured_at, classification, latency_ms, frame.origin)

    def skip_frame(self, frame: Frame, exc: ServerError | Stopped) -> None:
        if isinstance(exc, Stopped):
            return
        self.health.record_failed_frame()
        if isinstance(exc, BadReplyError):
            self.outage.up()  # the server answered, badly: it is up
        self.record_error(exc, logging.ERROR, f"frame={frame.seq} origin={frame.origin}")
        self.pause_after_failures()

    def pause_after_failures(self) -> None:
        """Frames that keep failing (a removed version, a folder of broken files) slow the loop down to
        one try every 5 s at most, whatever camera.fps says: failing fast helps nobody."""
        beyond = self.health.failed_in_a_row - FAILED_FRAMES_DEGRADED + 1
        if beyond >= 1:
            self.wait(backoff_s(beyond, 0.05, 5.0))

    def wait(self, seconds: float) -> None:
        """A deliberate pause: ends at once on stop or a reload request, and keeps systemd's watchdog fed."""
        deadline = time.monotonic() + seconds
        while True:
            self.heartbeat.progress()
            left = deadline - time.monotonic()
            if left <= 0 or self.reloads.wait(min(left, self.heartbeat.slice_s()), self.stop):
                return

    def reload_config(self) -> None:
        """Read the config file again: apply a valid change now, or keep the old config whole."""
        from agent.reload import apply_reload  # reload.py drives this class, so it imports this module

        apply_reload(self)

    def wait_for_model(self) -> ServedModel | None:
        """Resolve the pinned model, waiting out transient failures (server still booting, unreachable)."""
        while not self.stop.is_set():
            if self.reloads.take():
                self.reload_config()  # a server that never comes up may be a wrong server.url: let it be fixed
            try:
                model = call_unless_stopped(lambda: fetch_served_model(self.serving, self.config.model), self.stop)
            except Stopped:
                return None
            except TransientServerError as exc:
                self.outage.down(exc)
                self.reporter.publish()
                self.wait(self.outage.pause_s())
                continue
            self.outage.up()
            self.health.version = model.version
            return model
        return None

    def fail_start(self, exc: AgentError) -> int:
        logger.error("cannot start: %s", exc)
        if isinstance(exc, SourceError):
            self.health.camera_ok = False
        self.health.record_error(exc.kind, str(exc))
        self.reporter.publish()
        return EXIT_UNAVAILABLE

    def record_error(self, exc: AgentError, level: int, context: str = "") -> None:
        self.health.record_error(exc.kind, str(exc))
        if self.repeats.first(str(exc)):
            logger.log(level, "%s error %s%s", exc.kind, f"{context} " if context else "", exc)
        self.reporter.maybe_publish()

    def shutdown(self) -> None:
        """Deliver what can be delivered, publish the final state and ``offline``, close everything."""
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        if self.stop.is_set():
            logger.info("stopping signal=%s", getattr(self.stop, "reason", "") or "request")
        self.health.status = Status.STOPPING
        if self.finished:
            self.wait_for_acks()  # a finite run ends only when every result is acknowledged
            deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        # Only now: systemd starts TimeoutStopSec at STOPPING=1, and waiting for a broker may take long.
        self.heartbeat.stopping()
        self.health.status = Status.STOPPED
        self.reporter.publish()
        if self.source is not None:
            self.source.close()
        self.serving.close()
        delivered = self.publisher.stop(timeout=max(0.5, deadline - time.monotonic()))
        kept = len(self.publisher.outbox) if self.publisher.outbox is not None else 0
        if kept:
            logger.warning("exiting before the broker acknowledged everything: %d results kept in the outbox "
                           "for the next run", kept)
        elif not delivered:
            logger.warning("exiting before the broker acknowledged the final state and availability (unreachable)")
        logger.info("stopped %s", self.health.summary())

    def wait_for_acks(self) -> None:
        """Block until the broker has every result, feeding the watchdog (the loop is alive, waiting)."""
        next_log = time.monotonic() + 30.0
        while not self.publisher.wait_delivered(timeout=self.heartbeat.slice_s(), stop=self.stop):
            if self.stop.is_set():
                return
            self.heartbeat.progress()
            if time.monotonic() >= next_log:
                next_log += 30.0
                logger.warning("waiting for the broker to acknowledge results count=%d", self.publisher.pending())


def open_outbox(config: Config) -> Outbox | None:
    """The durable outbox in state_dir; None with QoS 0, where nothing acknowledges a result."""
    if config.mqtt.qos == 0:
        return None
    outbox = Outbox(config.state_dir, config.mqtt.outbox.max_messages)
    if len(outbox):
        logger.info("outbox holds results from an earlier run count=%d path=%s; they go first", len(outbox),
                    outbox.path)
    return outbox


def make_serving_client(config: Config, stop: threading.Event) -> ServingClient:
    server = config.server
    headers = dict(server.headers)
    if server.token_file:
        with open(server.token_file, encoding="utf-8") as token:
            headers["Authorization"] = f"Bearer {token.read().strip()}"
    retry = RetryPolicy(server.retry.attempts, server.retry.initial_s, server.retry.max_s)
    return ServingClient(Endpoint(server.url, server.model, server.version, server.label),
                         signature=server.signature, timeout_s=server.timeout_s, retry=retry, headers=headers,
                         ca_certs=server.ca_certs, stop=stop)


def install_signals(stop: StopSignal, reloads: ReloadSignal) -> StopSignal:
    """SIGTERM and SIGINT set ``stop`` (a second SIGINT still interrupts a hung shutdown); SIGHUP asks for a reload."""

    def handle(signum: int, _frame: object) -> None:
        # Nothing here may take a lock (no logging, no threading.Event): see StopSignal.
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reloads.set())
    return stop

