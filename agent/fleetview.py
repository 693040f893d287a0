"""``catdog-agent watch``: a live table of every device under a prefix, built from what they publish.

:class:`FleetView` folds availability, state and result messages into one :class:`DeviceView` per device;
:func:`render_table` is a pure function of those views, the time and a width (testable without a terminal).
:func:`watch_table` redraws in place on a terminal (ANSI home + clear, at most twice a second and at least once
a second, for the ages) and otherwise prints the whole table every ``interval`` seconds when a message arrived.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from agent.fleetclient import BrokerAddress, BrokerUnavailable, Credentials, FleetSession, describe_version, split_topic

RATE_WINDOW_S = 60.0
LIVE_RATE_MIN_RESULTS, LIVE_RATE_MIN_S = 3, 1.0  # live results enough to estimate a rate from
ERROR_CHARS = 48
MIN_REDRAW_S, MAX_REDRAW_S = 0.5, 1.0
PLAIN_WIDTH = 200  # a pipe or log has no width; COLUMNS overrides
HOME, CLEAR, CLEAR_BELOW, ERASE_LINE = "\x1b[H", "\x1b[2J", "\x1b[J", "\x1b[K"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
COLUMNS = ("DEVICE", "AVAIL", "STATUS", "VERSION", "RESULT", "RES/MIN", "AGE", "LAST ERROR")


@dataclass
class DeviceView:
    """What we know of one device; times are on the caller's clock (``since``: when watching began)."""

    device: str
    since: float
    availability: str | None = None
    state: dict[str, Any] | None = None
    last_result: dict[str, Any] | None = None
    result_times: deque = field(default_factory=deque)
    last_seen: float | None = None
    last_retained: bool = False  # the last message was a retained one: its real age is unknown (at least…)

    def results_per_minute(self, now: float) -> str:
        """Results counted over the last 60 s. Before a minute of watching an estimate, ``~`` (online only): the
        rate of the results seen live once there are a few, else state.fps×60 -- the state may be up to
        mqtt.state_interval_s old, and one published just after the device started says 0."""
        while self.result_times and self.result_times[0] <= now - RATE_WINDOW_S:
            self.result_times.popleft()
        counted = len(self.result_times)
        if now - self.since < RATE_WINDOW_S and self.availability == "online":
            observed = now - self.result_times[0] if self.result_times else 0.0
            if counted >= LIVE_RATE_MIN_RESULTS and observed >= LIVE_RATE_MIN_S:
                return f"~{(counted - 1) / observed * 60:.0f}"
            fps = (self.state or {}).get("fps")
            if isinstance(fps, (int, float)):
                return f"~{fps * 60:.0f}"
        return str(counted)


class FleetView:
    """Thread-safe fold of a prefix's messages; ``generation`` counts the changes (waiters use it)."""

    def __init__(self, prefix: str, clock: Callable[[], float] = time.monotonic):
        self.prefix = prefix.rstrip("/")
        self.clock = clock
        self.since = clock()
        self.devices: dict[str, DeviceView] = {}
        self.generation = 0
        self.changed = threading.Condition()

    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        where = split_topic(self.prefix, topic)
        if where is None or where[1] == "command/result":
            return
        device, kind = where
        with self.changed:
            now = self.clock()
            view = self.devices.setdefault(device, DeviceView(device, self.since))
            if kind == "availability":
                view.availability = payload.decode("utf-8", errors="replace").strip() or None
            elif kind == "state":
                view.state = _json_object(payload)
            else:
                view.last_result = _json_object(payload) or view.last_result
                view.result_times.append(now)
            if view.availability is None and view.state is None and view.last_result is None:
                del self.devices[device]  # its retained messages were deleted
            else:
                view.last_seen, view.last_retained = now, retained
            self.generation += 1
            self.changed.notify_all()

    def wait_change(self, seen: int, timeout: float) -> int:
        """Wait until ``generation`` differs from ``seen`` (or timeout); returns the generation."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != seen, timeout)
            return self.generation

    def render(self, width: int) -> tuple[str, int]:
        """The table now, and the number of devices online."""
        with self.changed:
            now = self.clock()
            online = sum(v.availability == "online" for v in self.devices.values())
            return render_table(self.devices, now, width), online


def render_table(devices: Mapping[str, DeviceView] | Iterable[DeviceView], now: float, width: int) -> str:
    """The fleet table: one header and one row per device (sorted by id), each line at most ``width`` wide."""
    views = sorted(devices.values() if isinstance(devices, Mapping) else devices, key=lambda v: v.device)
    rows = [list(COLUMNS)] + [_row(v, now) for v in views]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if not views:
        lines.append("(no device has published under this prefix yet)")
    return "\n".join(_fit(line, width) for line in lines)


def _row(view: DeviceView, now: float) -> list[str]:
    state = view.state or {}
    status = str(state.get("status", "-"))
    if state.get("paused") is True:
        status += " (paused)"
    result = view.last_result or {}
    score = result.get("score")
    last = (f"{result.get('label', '?')} {score:.3f}" if isinstance(score, (int, float))
            else str(result.get("label", "-")))
    age = "-" if view.last_seen is None else (">" if view.last_retained else "") + _age(now - view.last_seen)
    error = state.get("last_error")
    return [view.device, view.availability or "?", status, describe_version(view.state) if view.state else "-",
            last, view.results_per_minute(now), age, _shorten(error) if error else "-"]


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _shorten(text: Any, limit: int = ERROR_CHARS) -> str:
    flat = " ".join(str(text).split())  # one line, whatever the error held
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _fit(line: str, width: int) -> str:
    width = max(width, 1)
    return line if len(line) <= width else line[:width - 1] + "…"


def _title(broker: BrokerAddress, view: FleetView, session: FleetSession, online: int) -> str:
    link = "" if session.connected.is_set() else "  (broker connection lost, reconnecting)"
    return (f"catdog fleet  {broker} prefix {view.prefix}: {len(view.devices)} device(s), {online} online  "
            f"{time.strftime('%H:%M:%S')}{link}")


def watch_table(broker: BrokerAddress, *, prefix: str = "catdog", device: str = "+",
                credentials: Credentials | None = None, out: TextIO | None = None, interval: float = 5.0,
                tty: bool | None = None, stop: threading.Event | None = None) -> int:
    """Run the table until ``stop`` is set (or Ctrl-C: the caller catches it); 69 if the broker is unreachable."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    stop = stop or threading.Event()
    view = FleetView(prefix)
    session = FleetSession(broker, credentials, on_message=view.on_message, name="watch")
    try:
        session.start()
        session.subscribe([f"{view.prefix}/{device}/{kind}" for kind in ("availability", "state", "result")])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        session.stop()
        return 2
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        session.stop()
        return 69
    try:
        (_tty_loop if tty else _plain_loop)(broker, view, session, out, interval, stop)
    finally:
        session.stop()
    return 0


def _tty_loop(broker: BrokerAddress, view: FleetView, session: FleetSession, out: TextIO, interval: float,
              stop: threading.Event) -> None:
    out.write(HIDE_CURSOR + CLEAR)
    drawn, last_draw = -1, 0.0
    try:
        while not stop.is_set():
            generation = view.wait_change(drawn, MAX_REDRAW_S)  # a change, or a second for the ages
            pause = MIN_REDRAW_S - (time.monotonic() - last_draw)
            if pause > 0 and stop.wait(pause):  # rate limit: a busy fleet redraws twice a second
                break
            size = shutil.get_terminal_size()
            table, online = view.render(size.columns)
            lines = [_fit(_title(broker, view, session, online), size.columns), *table.splitlines()]
            if len(lines) > size.lines - 1:
                hidden = len(lines) - (size.lines - 2)
                lines = lines[:size.lines - 2] + [f"… {hidden} more line(s): enlarge the terminal"]
            out.write(HOME + "".join(line + ERASE_LINE + "\n" for line in lines) + CLEAR_BELOW)
            out.flush()
            drawn, last_draw = generation, time.monotonic()
    finally:
        out.write(SHOW_CURSOR)
        out.flush()


def _plain_loop(broker: BrokerAddress, view: FleetView, session: FleetSession, out: TextIO, interval: float,
                stop: threading.Event) -> None:
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else PLAIN_WIDTH
    printed = -1  # the first table is printed even when empty: the log shows the watch began
    due = time.monotonic() + min(interval, 1.0)  # the retained messages are in well before the first table
    while not stop.wait(max(0.0, due - time.monotonic())):
        due += interval
        generation = view.generation
        if generation == printed:
            continue
        table, online = view.render(width)
        out.write(f"{_title(broker, view, session, online)}\n{table}\n\n")
        out.flush()
        printed = generation


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
