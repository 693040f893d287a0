"""The frame path, measured: the tutorial's client against ours, on the same frames, in one run.

Run: .venv/bin/python bench/frame_path.py [--rounds 10] [--batch 10] [--seconds 10] [--json out.json]

Starts a private mosquitto and the TF Serving stand-in (a separate process) serving a zero-cost model
(p = the mean input value, the tutorial CNN's signature) and the same model behind a JPEG-input
signature. Then:

1. Per frame, three client processes take turns on the same 640x480 RGB frames (batches alternate):
   - tutorial: PIL resize((150, 150)), /255.0 (float64), json.dumps({"instances": x.tolist()}),
     requests.post with a new connection each time, r.json();
   - ours, json and b64_jpeg: the agent's own stages -- frame -> fit -> request body -> keep-alive
     POST -> decode -> classify -> Result -> outbox (SQLite) -> MQTT publish (QoS 1, acknowledged).
   Each reports its process CPU time (all threads: paho's and the outbox sender's too), wall time and
   request bytes; at the end, its peak RSS. Frames start decoded in memory for both sides, as a camera
   hands them over.
2. `catdog-agent run` as a child: time from spawn to its first result on MQTT (median of 3), then
   sustained results per second with camera.fps 0 on a looping folder of 640x480 JPEGs (decoding
   included), with its CPU use and peak RSS.

The stand-in's own time (parsing a 0.5 MB JSON body) is in the wall times, not in the client CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "agent" / "samples"
MODEL, JPEG_MODEL, DEVICE, PREFIX = "cat_dog_classifier", "cat_dog_jpeg", "bench", "bench"
FRAME_SIZE = (640, 480)
SIDES = ("tutorial", "json", "b64_jpeg")
TARGETS = {"cpu_json": 1 / 20, "bytes_json": 0.4, "bytes_b64_jpeg": 0.03, "fps": 30.0, "rss_mb": 120.0,
           "first_result_s": 1.5}


# --- the client processes ---------------------------------------------------------------------------


def load_frames(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[key] for key in sorted(data.files)]


class Tutorial:
    """The well-known tutorial's client, line for line (with the probability read correctly)."""

    def __init__(self, url: str):
        import requests

        self.requests = requests
        self.url = f"{url}/v1/models/{MODEL}/versions/1:predict"

    def frame(self, rgb: np.ndarray, seq: int) -> int:
        image = np.array(Image.fromarray(rgb).resize((150, 150))) / 255.0
        data = json.dumps({"signature_name": "serving_default", "instances": image[np.newaxis].tolist()})
        response = self.requests.post(self.url, data=data, headers={"content-type": "application/json"})
        predictions = response.json()["predictions"]
        _label = "dog" if predictions[0][0] >= 0.5 else "cat"
        return len(data)

    def close(self) -> None:
        pass


class Ours:
    """The agent's stages, wired as daemon.Agent wires them, on one configured device."""

    def __init__(self, config_path: Path):
        from agent.configload import load_config
        from agent.model import body_encoder, fetch_served_model
        from agent.mqtt import Publisher, Topics
        from agent.stages import make_serving_client, open_outbox

        self.config = config = load_config(str(config_path))
        self.serving = make_serving_client(config, threading.Event())
        self.model = fetch_served_model(self.serving, config.model, config.server.encoding)
        self.encoder = body_encoder(config.server, config.model)
        self.publisher = Publisher(config.mqtt, Topics.for_device(config.mqtt.topic_prefix, config.device.id),
                                   config.client_id, outbox=open_outbox(config)).start()

    def frame(self, rgb: np.ndarray, seq: int) -> int:
        from agent.frames import Frame
        from agent.result import Result

        frame = Frame(rgb, seq, time.time(), "bench")
        body = self.model.request_body(frame.rgb, self.encoder, self.serving.signature)
        reply = self.serving.predict(body)
        classification = self.model.classification(reply, self.config.model.labels, self.config.model.threshold)
        result = Result(DEVICE, MODEL, self.model.version, frame.seq, frame.captured_at, classification,
                        (time.time() - frame.captured_at) * 1000.0, frame.origin)
        self.publisher.publish_result(result.payload())
        return len(body)

    def settle(self) -> None:
        """Every result acknowledged: the sender thread's work belongs to the batch it came from."""
        if not self.publisher.wait_delivered(timeout=30.0):
            raise RuntimeError("the broker did not acknowledge the results within 30 s")

    def close(self) -> None:
        self.publisher.stop(timeout=5.0)
        self.serving.close()


def worker(side: str, frames_path: Path, url: str, config_path: Path) -> int:
    """Serve ``run K`` requests on stdin: K frames, answered with one JSON line of measurements."""
    frames = load_frames(frames_path)
    client: Any = Tutorial(url) if side == "tutorial" else Ours(config_path)
    seq = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        count = int(line.split()[1])
        walls, sizes = [], []
        cpu_start = time.process_time()
        for _ in range(count):
            rgb = frames[seq % len(frames)]
            seq += 1
            started = time.perf_counter()
            sizes.append(client.frame(rgb, seq))
            walls.append((time.perf_counter() - started) * 1000.0)
        if isinstance(client, Ours):
            client.settle()
        cpu_ms = (time.process_time() - cpu_start) * 1000.0
        print(json.dumps({"cpu_ms": cpu_ms, "walls": walls, "sizes": sizes}), flush=True)
    client.close()
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}), flush=True)
    return 0


# --- the driver ------------------------------------------------------------------------------------


class Side:
    """One client process, driven over its stdin/stdout."""

    def __init__(self, name: str, frames: Path, url: str, config: Path):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--frames-file", str(frames), "--url", url,
             "--config", str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.cpu_ms: list[float] = []
        self.walls: list[float] = []
        self.sizes: list[int] = []
        self.frames = 0
        self.maxrss_mb = 0.0
        self.answer()

    def answer(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} client exited with {self.process.wait()}")
        return json.loads(line)

    def run(self, count: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"run {count}\n")
        self.process.stdin.flush()
        batch = self.answer()
        self.cpu_ms.append(batch["cpu_ms"])
        self.walls += batch["walls"]
        self.sizes += batch["sizes"]
        self.frames += count

    def finish(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.maxrss_mb = self.answer()["maxrss_mb"]
        self.process.wait(timeout=30)

    @property
    def cpu_per_frame(self) -> float:
        return sum(self.cpu_ms) / self.frames


def make_frames(folder: Path) -> Path:
    """640x480 RGB frames of the sample photos (and mirrored copies), as .npy and as a JPEG folder."""
    folder.mkdir(parents=True)
    arrays = {}
    for index, photo in enumerate(sorted(SAMPLES.glob("*.[jp][pn]g"))):
        image = Image.open(photo).convert("RGB").resize(FRAME_SIZE, Image.BILINEAR)
        for mirrored in (False, True):
            shot = image.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else image
            name = f"{index}{'m' if mirrored else ''}"
            arrays[name] = np.asarray(shot)
            shot.save(folder / f"{name}.jpg", quality=90)
    path = folder.parent / "frames.npz"
    np.savez(path, **arrays)
    return path


def start_devserver(base: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "agent.devserver", "--model-base", str(base)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"the stand-in did not start: {line!r}")
    return process, line.split("listening on ")[1].split()[0]


def agent_config(path: Path, *, url: str, port: int, source: Path, state_dir: Path, encoding: str,
                 device: str = DEVICE, loop: bool = False) -> Path:
    model = JPEG_MODEL if encoding == "b64_jpeg" else MODEL
    config = {
        "device": {"id": device},
        "camera": {"source": str(source), "fps": 0, "loop": loop},
        "server": {"url": url, "model": model, "version": 1, "encoding": encoding},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX},
        "model": {"size": [150, 150]},
        "state_dir": str(state_dir),
        "log_level": "warning",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ResultCounter:
    """Counts result messages of one device on the broker, with the arrival time of the first."""

    def __init__(self, port: int, device: str):
        self.count = 0
        self.first_at: float | None = None
        self.arrived = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/{device}/result", qos=0)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("could not subscribe to the broker")

    def _message(self, *_: Any) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.count += 1
        self.arrived.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_agent(config: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "catdog-agent"), "run", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_agent(process: subprocess.Popen) -> tuple[float, float]:
    """SIGTERM, reap; (CPU seconds, peak RSS MB) of the child."""
    process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def first_result_s(work: Path, url: str, port: int, folder: Path, runs: int = 3) -> list[float]:
    times = []
    for run in range(runs):
        device = f"start{run}"
        config = agent_config(work / f"start{run}.yaml", url=url, port=port, source=folder,
                              state_dir=work / f"state-start{run}", encoding="json", device=device, loop=True)
        counter = ResultCounter(port, device)
        started = time.perf_counter()
        process = run_agent(config)
        try:
            if not counter.arrived.wait(30):
                raise RuntimeError("no first result within 30 s")
            assert counter.first_at is not None
            times.append(counter.first_at - started)
        finally:
            stop_agent(process)
            counter.close()
    return times


def sustained(work: Path, url: str, port: int, folder: Path, encoding: str, seconds: float) -> dict:
    device = f"sustained-{encoding.replace('_', '-')}"
    config = agent_config(work / f"{device}.yaml", url=url, port=port, source=folder,
                          state_dir=work / f"state-{device}", encoding=encoding, device=device, loop=True)
    counter = ResultCounter(port, device)
    process = run_agent(config)
    try:
        if not counter.arrived.wait(30):
            raise RuntimeError(f"no result within 30 s: {process.stderr.read() if process.poll() else ''}")
        time.sleep(2.0)  # warm-up: caches, connections, the outbox's first pages
        count_0, time_0 = counter.count, time.perf_counter()
        time.sleep(seconds)
        fps = (counter.count - count_0) / (time.perf_counter() - time_0)
        elapsed = time.perf_counter() - (counter.first_at or time_0)
    finally:
        cpu_s, rss_mb = stop_agent(process)
        counter.close()
    return {"fps": fps, "cpu_share": cpu_s / max(elapsed, 1e-9), "rss_mb": rss_mb}


def measure(args: argparse.Namespace) -> dict:
    from agent.devbroker import LocalBroker
    from agent.devserver import make_model_base

    work = Path(tempfile.mkdtemp(prefix="catdog-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        base = work / "models"
        make_model_base(base, MODEL, (1,), builtin={"model": "mean_brightness"})
        make_model_base(base, JPEG_MODEL, (1,), builtin={"model": "mean_brightness"},
                        jpeg_input={"input": "image_bytes", "size": [150, 150], "scale": "unit"})
        devserver, url = start_devserver(base)
        stack.callback(devserver.wait, 10)
        stack.callback(devserver.terminate)
        broker = stack.enter_context(LocalBroker().start())
        folder = work / "frames"
        frames = make_frames(folder)

        sides = {}
        for name in SIDES:
            config = agent_config(work / f"{name}.yaml", url=url, port=broker.port, source=folder,
                                  state_dir=work / f"state-{name}", encoding=name if name != "tutorial" else "json",
                                  device=f"{DEVICE}-{name.replace('_', '-')}")  # one MQTT client id each
            sides[name] = Side(name, frames, url, config)
        for _ in range(args.rounds):
            for side in sides.values():
                side.run(args.batch)
        for side in sides.values():
            side.finish()

        report: dict[str, Any] = {"frames_per_side": args.rounds * args.batch, "frame_size": list(FRAME_SIZE)}
        for name, side in sides.items():
            report[name] = {"cpu_ms": side.cpu_per_frame, "wall_ms": statistics.median(side.walls),
                            "bytes": statistics.median(side.sizes), "peak_rss_mb": side.maxrss_mb}
        report["first_result_s"] = first_result_s(work, url, broker.port, folder)
        report["sustained"] = {encoding: sustained(work, url, broker.port, folder, encoding, args.seconds)
                               for encoding in ("json", "b64_jpeg")}
    return report


def print_table(report: dict) -> bool:
    tutorial = report["tutorial"]
    print(f"\nper frame, {report['frame_size'][0]}x{report['frame_size'][1]} RGB -> 150x150 model, "
          f"{report['frames_per_side']} frames per side, alternated in batches")
    print(f"{'':<22}{'tutorial':>12}{'ours json':>12}{'ratio':>8}{'ours b64_jpeg':>15}{'ratio':>8}")
    rows = (("client CPU ms", "cpu_ms", "{:.2f}"), ("wall ms (median)", "wall_ms", "{:.2f}"),
            ("request bytes", "bytes", "{:,.0f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"))
    for title, key, fmt in rows:
        cells = [fmt.format(tutorial[key])]
        for name in ("json", "b64_jpeg"):
            cells += [fmt.format(report[name][key]), f"{report[name][key] / tutorial[key]:.3f}"]
        print(f"{title:<22}{cells[0]:>12}{cells[1]:>12}{cells[2]:>8}{cells[3]:>15}{cells[4]:>8}")
    starts = report["first_result_s"]
    print(f"\ncatdog-agent run, start to first result: median {statistics.median(starts):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in starts)})")
    for encoding, run in report["sustained"].items():
        print(f"catdog-agent run, camera.fps 0, looping folder of JPEGs, {encoding}: {run['fps']:.1f} results/s, "
              f"{run['cpu_share'] * 100:.0f} % of a core, peak RSS {run['rss_mb']:.0f} MB")
    checks = {
        f"client CPU json <= 1/20 of the tutorial's ({report['json']['cpu_ms'] / tutorial['cpu_ms']:.3f})":
            report["json"]["cpu_ms"] <= TARGETS["cpu_json"] * tutorial["cpu_ms"],
        f"request bytes json <= 0.4x ({report['json']['bytes'] / tutorial['bytes']:.3f})":
            report["json"]["bytes"] <= TARGETS["bytes_json"] * tutorial["bytes"],
        f"request bytes b64_jpeg <= 0.03x ({report['b64_jpeg']['bytes'] / tutorial['bytes']:.4f})":
            report["b64_jpeg"]["bytes"] <= TARGETS["bytes_b64_jpeg"] * tutorial["bytes"],
        f"sustained json >= 30 results/s ({report['sustained']['json']['fps']:.1f})":
            report["sustained"]["json"]["fps"] >= TARGETS["fps"],
        f"peak RSS of the agent <= 120 MB ({max(r['rss_mb'] for r in report['sustained'].values()):.0f})":
            all(r["rss_mb"] <= TARGETS["rss_mb"] for r in report["sustained"].values()),
        f"start to first result <= 1.5 s ({statistics.median(starts):.2f})":
            statistics.median(starts) <= TARGETS["first_result_s"],
    }
    print()
    for text, passed in checks.items():
        print(f"{'ok  ' if passed else 'MISS'} {text}")
    return all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="batches per side (alternated)")
    parser.add_argument("--batch", type=int, default=10, help="frames per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each sustained-rate run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--frames-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.frames_file, args.url, args.config)
    report = measure(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if print_table(report) else 1


if __name__ == "__main__":
    sys.exit(main())
