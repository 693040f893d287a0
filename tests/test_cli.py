"""The command line as a user meets it: exit codes, error lines, check, predict, demo."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, SAMPLES, agent_command, agent_config

MINIMAL = """\
device:
  id: porch-pi
camera:
  source: /var/lib/catdog-agent/frames
  fps: 1
  loop: false
server:
  url: http://models.lan:8501
  model: cat_dog_classifier
  version: 2
mqtt:
  host: broker.lan
  port: 1883
  topic_prefix: catdog
"""


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(agent_command(*args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(("  port: 1883", "  prot: 1883"), "mqtt.prot: unknown key (did you mean 'port'?) (line 13)",
                     id="typo-with-suggestion"),
        pytest.param(("  version: 2", "  version: 2\n  label: stable"),
                     "server: set either version or label, not both", id="version-and-label"),
        pytest.param(("  fps: 1", "  fps: fast"), "camera.fps: expected a number, got 'fast'", id="fps-type"),
        pytest.param(("  fps: 1", "  fps: -1"), "camera.fps:", id="fps-negative"),
        pytest.param(("  port: 1883", "  port: 70000"), "mqtt.port:", id="port-range"),
        pytest.param(("  id: porch-pi", "  id: porch pi"), "device.id:", id="device-id-chars"),
        pytest.param(("  url: http://models.lan:8501", "  url: models.lan:8501"), "server.url:", id="url-scheme"),
        pytest.param(("  topic_prefix: catdog", "  topic_prefix: cat/#"), "mqtt.topic_prefix:", id="wildcard"),
        pytest.param(("  host: broker.lan", "  host: broker.lan\n  password_file: missing.txt\n  username: u"),
                     "mqtt.password_file: file not found", id="missing-file"),
        pytest.param(("device:\n  id: porch-pi\n", ""), "device: required section is missing", id="no-device"),
        pytest.param(("  port: 1883", "  port: 1883\n  port: 1884"), "duplicate key 'port'", id="duplicate-key"),
    ],
)
def test_bad_config_exits_78_with_one_error_line_per_problem_and_no_traceback(tmp_path, change, expected):
    config = tmp_path / "agent.yaml"
    config.write_text(MINIMAL.replace(*change))

    proc = cli("run", "--config", str(config))

    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith(f"error: {config}: ") for line in lines), lines
    assert any(expected in line for line in lines), lines


def test_every_problem_of_a_bad_config_is_reported_at_once(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(MINIMAL.replace("  fps: 1", "  fps: x").replace("  prot", "  prot")
                      .replace("  port: 1883", "  port: 0").replace("  id: porch-pi", "  id: ''"))

    proc = cli("run", "--config", str(config))

    assert proc.returncode == 78
    assert {"camera.fps:", "mqtt.port:", "device.id:"} <= {
        word for line in proc.stderr.splitlines() for word in line.split() if word.endswith(":")}


def test_minimal_design_config_is_valid_as_written(tmp_path):
    from agent.configload import load_config

    config = tmp_path / "agent.yaml"
    config.write_text(MINIMAL)
    loaded = load_config(config)
    assert loaded.server.version == 2 and loaded.mqtt.topic_prefix == "catdog"


def test_missing_config_file_exits_78(tmp_path):
    proc = cli("run", "--config", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 78 and "absent.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_check_prints_a_tick_per_part_when_everything_works(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = cli("check", "--config", str(config))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["✓ config", "✓ server", "✓ model", "✓ broker", "✓ source",
                                                      "✓ predict"]
    assert "AVAILABLE" in lines[1] and "conv2d_input DT_FLOAT [-1,150,150,3]" in lines[2]
    assert "version 2" in lines[5]


def test_check_fails_with_reasons_when_version_broker_and_source_are_wrong(tmp_path, devserver):
    from agent.devbroker import free_port

    config = agent_config(tmp_path, source=tmp_path / "no-such-folder", server_url=devserver.url,
                          mqtt_port=free_port(), server={"version": 9})

    proc = cli("check", "--config", str(config))

    assert proc.returncode == 1
    out = proc.stdout
    assert "✗ server:" in out and "available versions: 2, 1" in out
    assert "✗ broker:" in out and "✗ source:" in out and "no-such-folder" in out
    assert "Traceback" not in proc.stderr


def test_check_with_an_invalid_config_exits_78(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(MINIMAL.replace("  fps: 1", "  fps: x"))
    proc = cli("check", "--config", str(config))
    assert proc.returncode == 78 and "✗ config" in proc.stdout and "camera.fps" in proc.stderr


def test_predict_prints_one_line_per_image_without_a_broker(tmp_path, devserver):
    config = agent_config(tmp_path, source=SAMPLES, server_url=devserver.url, mqtt_port=1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")

    proc = cli("predict", "--config", str(config), str(SAMPLES / "chelsea.png"), str(SAMPLES / "dog.jpg"),
               str(broken))

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{SAMPLES / 'chelsea.png'}: ") and "version 2" in lines[0]
    assert "broken.png: error:" in lines[2] and "cannot decode" in lines[2]
    assert proc.returncode == 1, "an image that failed makes the exit non-zero"


def test_predict_with_the_real_model_names_cat_and_dog(tmp_path, onnx_devserver):
    config = agent_config(tmp_path, source=SAMPLES, server_url=onnx_devserver.url, mqtt_port=1)

    proc = cli("predict", "--config", str(config), str(SAMPLES / "chelsea.png"), str(SAMPLES / "dog.jpg"))

    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert ": cat " in first and ": dog " in second


def test_demo_runs_the_whole_pipeline_and_says_the_builtin_model_is_meaningless(monkeypatch):
    monkeypatch.delenv("CATDOG_ONNX_MODEL", raising=False)
    proc = subprocess.run([sys.executable, "-m", "agent", "demo", "--fps", "20"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MEANINGLESS" in proc.stdout
    assert proc.stdout.count(" frame ") == 3
    assert "demo finished: 3 results over MQTT, agent exit code 0" in proc.stdout


def test_demo_with_the_real_model(onnx_model):
    proc = subprocess.run([sys.executable, "-m", "agent", "demo", "--fps", "20", "--onnx", str(onnx_model)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MEANINGLESS" not in proc.stdout
    frames = [line for line in proc.stdout.splitlines() if " frame " in line]
    assert " cat " in frames[0] and " dog " in frames[1]


def test_readme_quick_start_has_exactly_the_two_commands():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert textwrap.dedent(block).strip().splitlines() == [
        "./install.sh --dev && .venv/bin/catdog-agent demo",
        "./install.sh --dev && .venv/bin/pytest",
    ]
    assert "./install.sh --dev && .venv/bin/pytest" in (REPO / ".ci" / "run").read_text()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "catdog-agent"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("catdog-agent ")
