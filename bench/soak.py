"""Soak: the real agent classifies 20,000 frames; its RSS, threads and open fds must stay flat.

Run: .venv/bin/python bench/soak.py [--frames 20000] [--sample-every 500] [--json out.json] [--builtin-model]

Starts a private mosquitto and the TF Serving stand-in (in this process), runs ``python -m agent run``
as a child on a looping folder of the sample photos, unpaced (camera.fps 0), counts its results over
MQTT and samples the child's /proc every N results. Growth is taken from the end of the warm-up (the
first 10 % of frames) to the end; targets: RSS < 5 MB, threads 0, fds 0. Exit status 0 when every check
passes. The stand-in serves a trivial model (mean pixel, same signature as the built-in CNN), so that
the server's cost is mostly parsing the request JSON; --builtin-model serves the built-in CNN instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent import devmodels
from agent.devbroker import LocalBroker
from agent.devserver import DevServer, make_model_base

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "agent" / "samples"
MODEL, DEVICE = "cat_dog_classifier", "soak"
WARMUP = 0.10  # growth is measured from the first sample at or after this share of --frames
TARGETS = {"rss_mb": 5.0, "threads": 0, "fds": 0}  # RSS must grow less than 5 MB; threads and fds not at all
READS = 10  # /proc reads per sample, over half a second
STALL_S = 60.0  # no result for this long: the run has failed


class MeanPixel:
    """A model that costs nothing: p(dog) = the mean pixel; the built-in CNN's signature (150x150x3 -> 1)."""

    kind = "trivial"
    inputs = (devmodels.TensorSpec(devmodels.INPUT_NAME, "DT_FLOAT", (-1, 150, 150, 3), "serving_default_input:0"),)
    outputs = (devmodels.TensorSpec(devmodels.OUTPUT_NAME, "DT_FLOAT", (-1, 1), "StatefulPartitionedCall:0"),)

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = feeds[devmodels.INPUT_NAME]
        return {devmodels.OUTPUT_NAME: images.mean(axis=(1, 2, 3))[:, None].astype(np.float32)}


def model_name(args: argparse.Namespace) -> str:
    return "builtin" if args.builtin_model else "trivial"


def start_server(base: Path, builtin: bool) -> DevServer:
    if builtin:
        return DevServer(base).start()
    with mock.patch.object(devmodels, "load_version", lambda folder: MeanPixel()):  # only while loading
        return DevServer(base).start()


class Results:
    """An MQTT subscriber to the agent's results: their frame numbers, in arrival order."""

    def __init__(self, port: int, topic: str):
        self.frames: list[int] = []
        self.changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="catdog-soak-results", clean_session=True)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.stop()
            raise RuntimeError(f"cannot subscribe to {topic} on port {port}")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.changed:
            self.frames.append(int(json.loads(message.payload)["frame"]))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> int:
        with self.changed:
            self.changed.wait_for(lambda: len(self.frames) >= count, timeout)
            return len(self.frames)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_config(work: Path, server_url: str, mqtt_port: int) -> Path:
    frames = work / "frames"
    frames.mkdir()
    for photo in sorted(SAMPLES.glob("*.jpg")) + sorted(SAMPLES.glob("*.png")):
        shutil.copy(photo, frames / photo.name)
    config = {
        "device": {"id": DEVICE},
        "camera": {"source": str(frames), "fps": 0, "loop": True},
        "server": {"url": server_url, "model": MODEL, "version": 2, "timeout_s": 5},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": "catdog"},
        "state_dir": str(work / "state"),
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC")
           and not k.lower().endswith("_proxy")}
    with open(log, "wb") as stderr:  # a file: a pipe nobody reads could fill and block the agent
        return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def stop_agent(agent: subprocess.Popen) -> int:
    """SIGTERM and the exit code (killed after 10 s); does nothing to an agent that has exited."""
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    return agent.returncode


def open_fds(pid: int) -> set[tuple[str, str]]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            found.add((fd, os.readlink(f"/proc/{pid}/fd/{fd}")))
    return found


def sample(pid: int, state_dir: Path) -> dict[str, float]:
    """READS reads of /proc over half a second. Each frame runs short-lived helper threads and opens files:
    threads and fds count those present in every read (the lasting ones), RSS is the lowest read;
    the ``_max`` values are the highest seen."""
    rss: list[float] = []
    tids: list[set[str]] = []
    fds: list[set[tuple[str, str]]] = []
    for _ in range(READS):
        status = Path(f"/proc/{pid}/status").read_text()
        rss.append(int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024)  # type: ignore
        tids.append(set(os.listdir(f"/proc/{pid}/task")))
        fds.append(open_fds(pid))
        time.sleep(0.5 / READS)
    outbox = state_dir / "outbox.sqlite3"
    wal = outbox.with_name(outbox.name + "-wal")
    return {"rss_mb": min(rss), "rss_mb_max": max(rss),
            "threads": len(set.intersection(*tids)), "threads_max": max(map(len, tids)),
            "fds": len(set.intersection(*fds)), "fds_max": max(map(len, fds)),
            "outbox_kb": outbox.stat().st_size / 1024 if outbox.exists() else 0.0,
            "wal_kb": wal.stat().st_size / 1024 if wal.exists() else 0.0}


def print_row(row: dict[str, float], warm_end: bool) -> None:
    print(f"{row['results']:>8} {row['elapsed_s']:>10.1f} {row['frames_per_s']:>9.1f} {row['rss_mb']:>8.1f} "
          f"{row['rss_mb_max']:>6.1f} {row['threads']:>5}-{row['threads_max']:<2} {row['fds']:>2}-{row['fds_max']:<2} "
          f"{row['outbox_kb']:>10.0f} {row['wal_kb']:>7.0f}{'  <- end of warm-up' if warm_end else ''}", flush=True)


def wait_for_results(results: Results, count: int, agent: subprocess.Popen, log: Path) -> int:
    """Wait until ``count`` results have arrived; raise if the agent exits or no result comes for STALL_S."""
    seen, progress_at = -1, time.monotonic()
    while (received := results.wait_for(count, timeout=1.0)) < count:
        if received != seen:
            seen, progress_at = received, time.monotonic()
        if agent.poll() is not None or time.monotonic() - progress_at > STALL_S:
            what = f"exited with {agent.returncode}" if agent.poll() is not None else f"stalled for {STALL_S:.0f} s"
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"agent {what} after {received} results; its log ends:\n{tail}")
    return received


def soak(args: argparse.Namespace) -> dict[str, Any]:
    marks = list(range(args.sample_every, args.frames + 1, args.sample_every))
    if not marks or marks[-1] != args.frames:
        marks.append(args.frames)
    warm_mark = next(m for m in marks if m >= WARMUP * args.frames)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="catdog-soak-")))
        broker = stack.enter_context(LocalBroker())
        base = make_model_base(work / "models", MODEL, versions=(2,))
        server = stack.enter_context(start_server(base, args.builtin_model))
        results = Results(broker.port, f"catdog/{DEVICE}/result")
        stack.callback(results.stop)
        log = work / "agent.log"
        started = time.monotonic()
        agent = start_agent(write_config(work, server.url, broker.port), log)
        stack.callback(stop_agent, agent)
        print(f"soak: {args.frames} frames, agent pid {agent.pid}, model {model_name(args)}, "
              f"broker port {broker.port}, stand-in {server.url}", flush=True)
        print(f"{'results':>8} {'elapsed s':>10} {'frames/s':>9} {'RSS MB':>8} {'(max)':>6} {'threads':>8} "
              f"{'fds':>5} {'outbox KB':>10} {'wal KB':>7}", flush=True)
        samples: list[dict[str, float]] = []
        last = {"results": 0, "elapsed_s": 0.0}
        for mark in marks:
            count = wait_for_results(results, mark, agent, log)
            now = time.monotonic() - started
            row = {"results": count, "elapsed_s": now, **sample(agent.pid, work / "state")}
            row["frames_per_s"] = (count - last["results"]) / max(now - last["elapsed_s"], 1e-9)
            samples.append(row)
            last = {"results": count, "elapsed_s": now}
            print_row(row, mark == warm_mark)
        exit_code = stop_agent(agent)
        seen = -1
        while len(results.frames) != seen:  # the results published while stopping: until none for a second
            seen = len(results.frames)
            results.wait_for(seen + 1, timeout=1.0)
        with contextlib.closing(sqlite3.connect(work / "state" / "outbox.sqlite3")) as db:
            left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            counter = db.execute("SELECT value FROM counters WHERE name = 'last_frame'").fetchone()
        frames = list(results.frames)
        agent_log = log.read_text(errors="replace")
    return summarize(args, samples, warm_mark, exit_code, frames, left, counter[0] if counter else 0, agent_log)


def summarize(args: argparse.Namespace, samples: list[dict[str, float]], warm_mark: int, exit_code: int,
              frames: list[int], left: int, last_classified: int, agent_log: str) -> dict[str, Any]:
    warm = next(s for s in samples if s["results"] == warm_mark)
    end = samples[-1]
    growth = {key: end[key] - warm[key] for key in TARGETS}
    in_order = all(a < b for a, b in zip(frames, frames[1:]))
    checks = {
        "rss_mb": growth["rss_mb"] < TARGETS["rss_mb"],
        "threads": growth["threads"] <= TARGETS["threads"],
        "fds": growth["fds"] <= TARGETS["fds"],
        "exit_code": exit_code == 0,
        "distinct_in_order": len(set(frames)) == len(frames) and in_order,
        "none_missing": bool(frames) and frames == list(range(frames[0], frames[0] + len(frames))),
        "all_delivered": left == 0 and bool(frames) and frames[-1] == last_classified,
    }
    rate = (end["results"] - warm["results"]) / (end["elapsed_s"] - warm["elapsed_s"])
    errors = [line for line in agent_log.splitlines() if " ERROR " in line or " WARNING " in line]
    return {
        "frames": args.frames, "sample_every": args.sample_every, "model": model_name(args),
        "warmup_results": warm_mark, "samples": samples, "growth": growth, "targets": TARGETS,
        "exit_code": exit_code, "results_received": len(frames), "first_frame": frames[0] if frames else None,
        "last_frame": frames[-1] if frames else None, "last_classified": last_classified, "outbox_left": left,
        "steady_frames_per_s": rate, "elapsed_s": end["elapsed_s"], "agent_warnings": errors[:20],
        "checks": checks, "passed": all(checks.values()),
    }


def report(summary: dict[str, Any]) -> None:
    g, t, ok = summary["growth"], summary["targets"], summary["checks"]

    def verdict(key: str) -> str:
        return "PASS" if ok[key] else "FAIL"

    print(f"\ngrowth from {summary['warmup_results']} results (end of warm-up) to {summary['samples'][-1]['results']}:")
    print(f"  RSS      {g['rss_mb']:+.2f} MB   (target < {t['rss_mb']} MB)  {verdict('rss_mb')}")
    print(f"  threads  {g['threads']:+d}        (target {t['threads']})       {verdict('threads')}")
    print(f"  fds      {g['fds']:+d}        (target {t['fds']})       {verdict('fds')}")
    print(f"agent exit code {summary['exit_code']} (must be 0)  {verdict('exit_code')}")
    print(f"results received {summary['results_received']} (frames {summary['first_frame']}..{summary['last_frame']})"
          f": distinct and in order {verdict('distinct_in_order')}, none missing {verdict('none_missing')}")
    print(f"last frame classified {summary['last_classified']}, outbox left {summary['outbox_left']}: "
          f"all delivered {verdict('all_delivered')}")
    print(f"steady rate {summary['steady_frames_per_s']:.1f} frames/s, {summary['elapsed_s']:.0f} s to "
          f"{summary['frames']} results; agent warnings/errors: {len(summary['agent_warnings'])}")
    for line in summary["agent_warnings"]:
        print(f"  {line}")
    print("PASS" if summary["passed"] else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000, help="results to wait for (20000)")
    parser.add_argument("--sample-every", type=int, default=500, help="sample the agent every N results (500)")
    parser.add_argument("--json", type=Path, help="also write samples and summary to this file")
    parser.add_argument("--builtin-model", action="store_true", help="serve the built-in CNN (~10 ms per frame more)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.sample_every < 1:
        parser.error("--frames and --sample-every must be positive")
    try:
        summary = soak(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    report(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
