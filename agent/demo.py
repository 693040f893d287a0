"""``catdog-agent demo``: the whole pipeline on this machine, on local defaults.

Sample photos act as the camera, the TF Serving stand-in runs on a free port, a private mosquitto
on another, and the real agent (``catdog-agent run``) in a child process; results are printed as
they arrive over MQTT. Everything is torn down at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

from agent.devbroker import LocalBroker

SAMPLE_NAMES = ("chelsea.png", "dog.jpg", "person.jpg")
BUILTIN_WARNING = """\
!!  The stand-in serves the BUILT-IN tutorial CNN with random (seeded) weights.
!!  Its cat/dog answers are MEANINGLESS: they only prove the pipeline works.
!!  For real answers serve the ONNX model:  CATDOG_ONNX_MODEL=/path/to/cat_dog_effnet_lite0.onnx
!!  (needs: .venv/bin/pip install onnxruntime)"""


def run_demo(onnx: str | None = None, loop: bool = False, fps: float = 2.0) -> int:
    """Start stand-in, broker and agent; print results; return the agent's exit code."""
    onnx = onnx or _onnx_from_env()
    workdir = Path(tempfile.mkdtemp(prefix="catdog-demo-"))
    server: subprocess.Popen | None = None
    try:
        frames = copy_samples(workdir / "frames")
        server, url = start_devserver(onnx, workdir)
        say(f"TF Serving stand-in: {url} serving cat_dog_classifier versions 1 and 2 "
            f"({'ONNX model ' + onnx if onnx else 'built-in model'}); the agent pins version 2")
        if not onnx:
            say(BUILTIN_WARNING)
        with LocalBroker() as broker:
            say(f"mosquitto: 127.0.0.1:{broker.port}")
            config = write_config(workdir, frames, url, broker.port, loop, fps)
            return run_agent_and_watch(config, broker.port, workdir)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def say(text: str) -> None:
    print(text, flush=True)


def _onnx_from_env() -> str | None:
    path = os.environ.get("CATDOG_ONNX_MODEL")
    if path and Path(path).is_file() and importlib.util.find_spec("onnxruntime"):
        return path
    return None


def copy_samples(folder: Path) -> Path:
    folder.mkdir(parents=True)
    samples = resources.files("agent") / "samples"
    for index, name in enumerate(SAMPLE_NAMES, start=1):
        (folder / f"{index:02d}-{name}").write_bytes((samples / name).read_bytes())
    return folder


def start_devserver(onnx: str | None, workdir: Path) -> tuple[subprocess.Popen, str]:
    kind = ["--onnx", onnx] if onnx else ["--builtin"]
    process = subprocess.Popen([sys.executable, "-m", "agent.devserver", *kind, "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"listening on (http://\S+)", line)
    if not found:
        process.kill()
        raise RuntimeError(f"the TF Serving stand-in did not start (it said: {line.strip()!r})")
    return process, found.group(1)


def write_config(workdir: Path, frames: Path, url: str, mqtt_port: int, loop: bool, fps: float) -> Path:
    config = workdir / "demo.yaml"
    config.write_text(f"""\
device:
  id: demo-pi
camera:
  source: {frames}
  fps: {fps}
  loop: {'true' if loop else 'false'}
server:
  url: {url}
  model: cat_dog_classifier
  version: 2
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
  topic_prefix: catdog
state_dir: {workdir / 'state'}
""")
    return config


def run_agent_and_watch(config: Path, mqtt_port: int, workdir: Path) -> int:
    from agent.watch import Watcher

    results = []
    offline = threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        if topic.endswith("/result"):
            results.append(payload)
        elif topic.endswith("/availability") and payload == b"offline" and results:
            offline.set()

    watcher = Watcher("127.0.0.1", mqtt_port, "catdog", "demo-pi", out=sys.stdout, on_message=on_message).start()
    watcher.subscribed.wait(5)
    log_path = workdir / "agent.log"
    say(f"agent: catdog-agent run --config {config}   (Ctrl-C stops it)\n")
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], stderr=log)
        try:
            code = agent.wait()
        except KeyboardInterrupt:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=10)
    offline.wait(5)
    watcher.stop()
    say(f"\ndemo finished: {len(results)} results over MQTT, agent exit code {code}")
    if code != 0:
        say("agent log:\n" + log_path.read_text(errors="replace"))
    return code
