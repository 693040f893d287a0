"""Shared fixtures: a real mosquitto, the TF Serving stand-in over real HTTP, an MQTT collector, agent runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

# Before numpy loads (agent.devserver imports it): Python 3.9's subprocess uses fork(), whose OpenBLAS
# pre-fork handler joins the BLAS worker threads and can deadlock while a devserver thread runs the
# built-in model (numpy/numpy#17752). One BLAS thread means no workers to join. 3.10+ uses vfork().
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from agent.devbroker import LocalBroker
from agent.devserver import DevServer, make_model_base

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "agent" / "samples"
MODEL = "cat_dog_classifier"
ONNX_ENV = "CATDOG_ONNX_MODEL"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's shell (systemd dirs, journal, proxies) leaks into a test."""
    for name in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                 "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def broker() -> LocalBroker:
    with LocalBroker() as running:
        yield running


@pytest.fixture(scope="session")
def builtin_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_base(tmp_path_factory.mktemp("models"), name=MODEL, versions=(1, 2))


@pytest.fixture
def devserver(builtin_models: Path) -> DevServer:
    """The stand-in serving the built-in model, versions 1 and 2, label stable -> 1, canary -> 2."""
    with DevServer(builtin_models, labels={MODEL: {"stable": 1, "canary": 2}}) as server:
        yield server


@pytest.fixture(scope="session")
def onnx_model() -> Path:
    path = os.environ.get(ONNX_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"{ONNX_ENV} is not set to the ONNX model file")
    return Path(path)


@pytest.fixture
def onnx_devserver(onnx_model: Path, tmp_path: Path) -> DevServer:
    base = make_model_base(tmp_path / "onnx-models", name=MODEL, versions=(1, 2), onnx=onnx_model)
    with DevServer(base, labels={MODEL: {"stable": 1}}) as server:
        yield server


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of the real photos in a known order: cat, dog, cat, dog."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, name in enumerate(["chelsea.png", "dog.jpg", "chelsea.png", "dog.jpg"], start=1):
        shutil.copy(SAMPLES / name, folder / f"{index:02d}-{name}")
    return folder


def device_for(tmp_path: Path) -> str:
    """A device id unique to the test, so retained messages of other tests never show up."""
    return "t-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]


def agent_config(tmp_path: Path, *, source: Path | str, server_url: str, mqtt_port: int, device: str = "",
                 **sections: dict) -> Path:
    """Write a config file: the minimal one plus per-section overrides."""
    device = device or device_for(tmp_path)
    data: dict = {
        "device": {"id": device},
        "camera": {"source": str(source), "fps": 0, "loop": False},
        "server": {"url": server_url, "model": MODEL, "version": 2, "timeout_s": 5,
                   "retry": {"attempts": 3, "initial_s": 0.05, "max_s": 0.2}},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": "catdog"},
        "state_dir": str(tmp_path / "state"),
    }
    for section, values in sections.items():
        if values is None:
            data.pop(section, None)
        elif isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
            for key in [k for k, v in data[section].items() if v is None]:
                del data[section][key]
        else:
            data[section] = values
    path = tmp_path / f"{device}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict:
        return json.loads(self.payload)


@dataclass
class Collector:
    """A real MQTT subscriber that records every message and lets tests await conditions."""

    port: int
    topic: str = "catdog/#"
    messages: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, clean_session=True)
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> Collector:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "collector could not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(message.topic, message.payload, bool(message.retain)))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def results(self) -> list[dict]:
        return [m.json() for m in self.on("result")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


@pytest.fixture
def collector(broker: LocalBroker, tmp_path: Path) -> Collector:
    """Subscribed to this test's device (see device_for) before the agent starts."""
    running = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/#").start()
    yield running
    running.stop()


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_agent(config: Path, *extra: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``catdog-agent run`` as a child process, to completion."""
    return subprocess.run(agent_command("run", "--config", str(config), *extra), capture_output=True, text=True,
                          timeout=timeout)


class AgentProcess:
    """``catdog-agent run`` in the background; its stderr goes to a file (a pipe could fill and block it)."""

    def __init__(self, config: Path, *extra: str):
        self.log_path = config.with_suffix(".stderr.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(agent_command("run", "--config", str(config), *extra),
                                            stdout=subprocess.DEVNULL, stderr=log)

    @property
    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def agent_processes() -> list:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def start_agent(registry: list, config: Path, *extra: str) -> AgentProcess:
    agent = AgentProcess(config, *extra)
    registry.append(agent)
    return agent


def predict_paths(server: DevServer) -> list[str]:
    return [r.path for r in server.recorded() if r.path.endswith(":predict")]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition nothing signals (a capture thread's state); True as soon as it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def first_line_with(text: str, needle: str) -> str | None:
    return next((line for line in text.splitlines() if needle in line), None)
