"""camera.skip_unchanged, measured: requests to the server for a static and a changing scene.

Run: .venv/bin/python bench/skip_unchanged.py [--seconds 60] [--fps 10] [--switch-s 3]

Writes two videos of ``--seconds`` at ``--fps`` (640x480, MJPG, fresh sensor noise in every frame, as a
real camera gives): a static scene (the cat photo) and one that alternates cat and dog every
``--switch-s`` seconds. Four ``catdog-agent run`` processes play them at once, in real time
(``camera.fps`` = the video's rate, so ``max_interval_s`` acts as on a device), with and without
``camera.skip_unchanged`` (its defaults: threshold 0.02, max_interval_s 60), against a private mosquitto
and the TF Serving stand-in with a zero-cost model. Every request gives one result, so requests are
counted as the results on MQTT; a scene change is missed when no frame of its segment is classified.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "agent" / "samples"
MODEL, PREFIX = "cat_dog_classifier", "skipbench"
SIZE = (640, 480)
TARGET_FEWER = 0.90  # the static scene must cost at least 90 % fewer requests


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB").resize(SIZE, Image.BILINEAR))


def write_video(path: Path, names: list[str], fps: float, seed: int) -> Path:
    """One frame per name, each the photo plus Gaussian noise (sigma 3 levels), as MJPG."""
    import cv2

    rng = np.random.default_rng(seed)
    photos = {name: photo(name)[:, :, ::-1] for name in set(names)}  # VideoWriter takes BGR
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG to {path}")
    try:
        for name in names:
            noisy = photos[name] + rng.normal(0.0, 3.0, photos[name].shape)
            writer.write(np.ascontiguousarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    finally:
        writer.release()
    return path


class Results:
    """Frame numbers of each device's results, as they arrive on the broker."""

    def __init__(self, port: int):
        self.frames: dict[str, list[int]] = {}
        self.states: dict[str, dict] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("could not subscribe to the broker")

    def _message(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        _, device, kind = message.topic.split("/", 2)
        if kind == "result":
            self.frames.setdefault(device, []).append(json.loads(message.payload)["frame"])
        elif kind == "state" and message.payload:
            self.states[device] = json.loads(message.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def agent_config(work: Path, device: str, video: Path, url: str, port: int, fps: float, skip: bool) -> Path:
    camera: dict = {"source": str(video), "fps": fps}
    if skip:
        camera["skip_unchanged"] = {}  # its defaults, as a user who turns it on gets them
    config = {
        "device": {"id": device},
        "camera": camera,
        "server": {"url": url, "model": MODEL, "version": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX},
        "state_dir": str(work / f"state-{device}"),
        "log_level": "warning",
    }
    path = work / f"{device}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(args: argparse.Namespace) -> dict:
    from agent.devbroker import LocalBroker
    from agent.devmodels import make_model_base
    from agent.devserver import DevServer

    frames = round(args.seconds * args.fps)
    per_segment = max(1, round(args.switch_s * args.fps))
    alternating = [("chelsea.png", "dog.jpg")[(i // per_segment) % 2] for i in range(frames)]
    work = Path(tempfile.mkdtemp(prefix="catdog-skipbench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        videos = {"static": write_video(work / "static.avi", ["chelsea.png"] * frames, args.fps, 1),
                  "alternating": write_video(work / "alternating.avi", alternating, args.fps, 2)}
        make_model_base(work / "models", MODEL, (1,), builtin={"model": "mean_brightness"})
        server = stack.enter_context(DevServer(work / "models").start())
        broker = stack.enter_context(LocalBroker().start())
        results = Results(broker.port)
        stack.callback(results.close)
        processes = {}
        for scene, video in videos.items():
            for skip in (False, True):
                device = f"{scene}-{'skip' if skip else 'all'}"
                config = agent_config(work, device, video, server.url, broker.port, args.fps, skip)
                processes[device] = subprocess.Popen(
                    [str(Path(sys.executable).parent / "catdog-agent"), "run", "--config", str(config)],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for device, process in processes.items():
            try:
                code = process.wait(timeout=args.seconds * 3 + 60)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGTERM)
                code = process.wait(30)
            if code != 0:
                raise RuntimeError(f"{device} exited {code}: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.5)  # the last retained state after the run's end
        report = {"seconds": args.seconds, "fps": args.fps, "switch_s": args.switch_s, "frames": frames}
        for scene in videos:
            every, skipped = (sorted(results.frames.get(f"{scene}-{kind}", [])) for kind in ("all", "skip"))
            segments = sorted({(frame - 1) // per_segment for frame in skipped})
            report[scene] = {
                "requests_all": len(every), "requests_skip": len(skipped),
                "fewer": 1 - len(skipped) / max(1, len(every)),
                "frames_read": results.states.get(f"{scene}-skip", {}).get("frames"),
                "segments": -(-frames // per_segment) if scene == "alternating" else 1,
                "segments_classified": len(segments),
                "first_frames_classified": sum(1 for s in segments if s * per_segment + 1 in skipped),
            }
    return report


def print_table(report: dict) -> bool:
    print(f"\n{report['seconds']:g} s at {report['fps']:g} fps ({report['frames']} frames of 640x480) per scene, "
          f"real time; the alternating scene switches cat/dog every {report['switch_s']:g} s")
    print(f"{'scene':<13}{'requests, every frame':>23}{'with skip_unchanged':>21}{'fewer':>8}"
          f"  {'scene changes classified'}")
    for scene in ("static", "alternating"):
        row = report[scene]
        changes = (f"{row['segments_classified']}/{row['segments']} "
                   f"({row['first_frames_classified']} on their first frame)")
        print(f"{scene:<13}{row['requests_all']:>23}{row['requests_skip']:>21}{row['fewer'] * 100:>7.1f}%"
              f"  {changes}")
        if row["frames_read"] != report["frames"]:  # segments are told apart by frame number
            print(f"  (the agent read {row['frames_read']} frames of {report['frames']}: the segment count is off)")
    static, moving = report["static"], report["alternating"]
    checks = {
        f"static scene: >= 90 % fewer requests ({static['fewer'] * 100:.1f} %)": static["fewer"] >= TARGET_FEWER,
        f"alternating scene: no missed change ({moving['segments_classified']}/{moving['segments']})":
            moving["segments_classified"] == moving["segments"],
    }
    print()
    for text, passed in checks.items():
        print(f"{'ok  ' if passed else 'MISS'} {text}")
    return all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each scene")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second of the videos and the agents")
    parser.add_argument("--switch-s", type=float, default=3.0, help="seconds between cat/dog switches")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    report = measure(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if print_table(report) else 1


if __name__ == "__main__":
    sys.exit(main())
