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
from agent.control import Control, make_publisher
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
from agent.model import ServedModel, body_encoder, fetch_served_model
from agent.mqtt import Publisher
from agent.outbox import OutboxError
from agent.pacing import Pacer, ReloadSignal, Stopped, StopSignal, Worker, backoff_s
from agent.readahead import READS_WAIT_S, Ahead, ReadAhead, reads_over
from agent.result import Result
from agent.scene import scene_gate
from agent.sdnotify import Notifier
from agent.serving import ServingClient
from agent.sources import opened_source
from agent.sources.base import FrameSource
from agent.stages import make_serving_client, open_outbox
from agent.supervision import Heartbeat, Outage, StateReporter

logger = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.0  # SIGTERM -> exit well inside systemd's and the contract's 5 s


def run(config: Config, stop: threading.Event | None = None) -> int:
    """Run the agent until the source ends or ``stop`` is set (SIGTERM/SIGINT set it). Returns the exit code."""
    reloads = ReloadSignal()  # SIGHUP sets it, when run() owns the signals (no ``stop`` given)
    stop = stop or install_signals(StopSignal(), reloads)
    control = Control.load(config)  # what the central side assigned last time (pin, fps, pause) applies
    config = control.config
    health = Health(config.device.id, config.server.model, config.server.label)
    serving = make_serving_client(config, stop)
    try:
        publisher = make_publisher(config)
        publisher.outbox = open_outbox(config)
        publisher.start()
    except (PublishError, OSError) as exc:
        logger.error("mqtt setup failed: %s", exc)
        return EXIT_CONFIG
    except OutboxError as exc:  # a state_dir the agent may not write: 78; a full disk: 69, systemd tries again
        logger.error("%s", exc)
        return EXIT_CONFIG if exc.lasting else EXIT_UNAVAILABLE
    notifier = Notifier()
    half_period = notifier.watchdog_interval
    if half_period is not None and config.server.timeout_s > half_period:
        logger.warning("server.timeout_s=%g is longer than half the watchdog period (%g s): a server that hangs "
                       "could get the agent killed; lower server.timeout_s or raise WatchdogSec",
                       config.server.timeout_s, half_period)
    agent = Agent(config, stop, reloads, health, serving, publisher, Heartbeat(notifier, health), control)
    try:
        return agent.run()
    finally:
        agent.shutdown()


class Agent:
    """One run of the pipeline; owns the stages it opens and closes them in ``shutdown``."""

    def __init__(self, config: Config, stop: threading.Event, reloads: ReloadSignal, health: Health,
                 serving: ServingClient, publisher: Publisher, heartbeat: Heartbeat, control: Control):
        self.config, self.stop, self.reloads, self.health, self.heartbeat = config, stop, reloads, health, heartbeat
        self.serving, self.publisher = serving, publisher
        self.source: FrameSource | None = None
        self.model: ServedModel | None = None
        self.encoder = body_encoder(config.server, config.model)
        self.worker = Worker()  # runs reads and requests, so that SIGTERM never waits on one
        self.reader = ReadAhead(stop)  # file sources: the next frame is read during this one's request
        self.ahead: Ahead | None = None  # what was read ahead for the frame in hand
        self.pacer = Pacer(config.camera.fps)
        self.gate = scene_gate(config.camera.skip_unchanged)  # camera.skip_unchanged: is a frame worth a request?
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
        self.control = control  # commands from the central side, applied between frames
        control.attach(self)

    def run(self) -> int:
        self.reporter.publish()
        try:
            # The source first: a missing camera exits 69 even while the server is down; a camera warms up.
            self.source = opened_source(self.config.camera, self.stop)
            self.model = self.wait_for_model()
            if self.model is None:
                return EXIT_OK  # stopped while waiting for the server
        except Stopped:
            return EXIT_OK
        except CameraStalled as exc:  # a SIGHUP while waiting for the server could not reopen the camera
            return self.camera_stalled(exc)
        except (ServerError, SourceUnavailable) as exc:  # transient server errors are waited out above
            return self.fail_start(exc)
        logger.info("running device=%s source=%s model=%s %s", self.config.device.id, self.source.description,
                    self.config.server.model, self.model.describe())
        self.health.status = Status.RUNNING
        self.reporter.publish()
        try:
            self.loop()
        except CameraStalled as exc:
            return self.camera_stalled(exc)
        return EXIT_OK

    def camera_stalled(self, exc: CameraStalled) -> int:
        self.record_error(exc, logging.ERROR)
        logger.error("exiting so that systemd restarts the agent: only a new process recovers a stuck camera")
        return EXIT_FAILURE

    def loop(self) -> None:
        """frame -> pixels -> request -> reply -> classification -> result -> MQTT, paced to camera.fps.

        A reload (SIGHUP) is applied between two frames; it may replace the source, so each turn reads it anew.
        """
        retry_frame: Frame | None = None
        while not self.stop.is_set():
            if self.reloads.take():
                self.reload_config()
            self.control.handle_waiting()
            if self.health.paused:
                self.wait(1.0)  # a pause command holds the loop; commands and signals still end the wait
                continue
            source = self.source
            assert source is not None
            try:
                # In a helper thread: a read that blocks (a named pipe with no writer, a dead device)
                # must not hold SIGTERM. A file read that hangs feeds no watchdog, so it trips it; a
                # camera read is bounded by camera.timeout_s, and a camera stuck for good ends the run.
                frame = retry_frame or self.read_frame(source)
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
        if not self.gate.should_classify(frame.rgb):
            self.skip_unchanged(frame)
            return None
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
        self.gate.classified()  # later frames are compared with this one (never with a frame that failed)
        self.publisher.publish_result(result.payload())
        self.control.classified(frame.rgb, result)
        self.health.record_result()
        self.heartbeat.ready()
        self.reporter.maybe_publish()
        return None

    def skip_unchanged(self, frame: Frame) -> None:
        """The scene looks as it did in the last classified frame: no request, counted, not a failure."""
        self.health.skipped += 1
        logger.debug("unchanged frame=%d origin=%s changed=%.3f: not sent", frame.seq, frame.origin,
                     self.gate.change or 0.0)
        self.reporter.maybe_publish()  # results are rare now: state still goes out every mqtt.state_interval_s

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
            model = self.worker.call(self.fetch_model, self.stop)
        except (AgentError, Stopped) as exc:
            logger.warning("model refresh failed, keeping version %s: %s", self.model.version, exc)
            return self.model
        if model.version != self.model.version:
            logger.info("model version changed pin=%s from=%s to=%s", self.serving.endpoint.pin,
                        self.model.version, model.version)
        self.model, self.health.version = model, model.version
        return model

    def fetch_model(self) -> ServedModel:
        """Ask the server which version answers the pin, and what its signature takes."""
        return fetch_served_model(self.serving, self.config.model, self.config.server.encoding)

    def read_frame(self, source: FrameSource) -> Frame | None:
        """The next frame, or None at the end of a finite source; raises SourceError (decode errors too)."""
        self.ahead = self.reader.take(source)  # read during the last request, if it was
        frame = self.ahead.frame if self.ahead else self.worker.call(source.read, self.stop)
        if frame is None:
            return None
        self.health.frames += 1
        self.last_frame += 1
        # The device-wide number, not the source's; a frame read ahead counts its latency from now, as if read now.
        frame = dataclasses.replace(frame, seq=self.last_frame,
                                    captured_at=time.time() if self.ahead else frame.captured_at)
        if not self.health.camera_ok:
            logger.info("source back source=%s", source.description)
        self.health.camera_ok, self.camera_failures = True, 0
        if ReadAhead.worth_it(source, frame) and not self.pacer.interval and self.model is not None:  # unpaced files
            model, encoder, signature = self.model, self.encoder, self.serving.signature
            self.reader.start(source, None if self.config.camera.skip_unchanged else (model, encoder, signature),
                              lambda ahead: model.request_body(ahead.rgb, encoder, signature))
        return frame

    def classify_frame(self, frame: Frame, model: ServedModel) -> Result:
        made_ahead = self.ahead.body_for((model, self.encoder, self.serving.signature)) if self.ahead else None
        body = made_ahead or model.request_body(frame.rgb, self.encoder, self.serving.signature)
        reply = self.worker.call(partial(self.serving.predict, body), self.stop)
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
        if self.config.server.label is not None:
            self.next_refresh = time.monotonic()  # the label may have moved: ask again before the next frame
        self.control.failed(exc)  # a commanded version failing again and again is rolled back
        self.pause_after_failures()

    def pause_after_failures(self) -> None:
        """Frames that keep failing (a removed version, a folder of broken files) slow the loop down to
        one try every 5 s at most, whatever camera.fps says: failing fast helps nobody."""
        if (beyond := self.health.failed_in_a_row - FAILED_FRAMES_DEGRADED + 1) >= 1:
            self.wait(backoff_s(beyond, 0.05, 5.0))

    def wait(self, seconds: float) -> None:
        """A deliberate pause: ends at once on stop or a reload request, and keeps systemd's watchdog fed."""
        deadline = time.monotonic() + seconds
        while True:
            self.heartbeat.progress()
            left = deadline - time.monotonic()
            commands = self.publisher.inbox if self.model is not None and self.source is not None else None
            if left <= 0 or self.reloads.wait(min(left, self.heartbeat.slice_s()), self.stop, commands):
                if left <= 0 or self.stop.is_set() or self.reloads.is_set():
                    return
                self.control.handle_waiting()  # a command woke us: apply it, then wait out the rest

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
                model = self.worker.call(self.fetch_model, self.stop)
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
        if self.source is not None and reads_over(self.reader, self.worker, READS_WAIT_S):
            self.source.close()
        self.worker.close()
        self.reader.close()
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

