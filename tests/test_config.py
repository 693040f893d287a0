"""Configuration loading: the documented files load, and every bad file says what, where and on which line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from agent.config import Config, MqttConfig, SkipUnchangedConfig, TlsConfig
from agent.configload import load_config, parse_config, reference_rows
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SECTIONS = {
    "device": "device:\n  id: porch-pi\n",
    "camera": "camera:\n  source: frames\n",
    "server": "server:\n  url: http://models.lan:8501\n  model: cat_dog_classifier\n",
    "mqtt": "mqtt:\n  host: broker.lan\n",
}


def doc(first: str, *, omit: tuple[str, ...] = ()) -> str:
    """`first` (so its line numbers are its own), then every required section it does not give itself."""
    given = {line.split(":")[0] for line in first.splitlines() if line[:1].isalpha()}
    return first + "".join(text for name, text in SECTIONS.items() if name not in given and name not in omit)


@pytest.fixture(autouse=True)
def no_systemd_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A folder holding the config file and the secrets it may name."""
    (tmp_path / "secret.txt").write_text("s3cret\n")
    (tmp_path / "client.key").write_text("key\n")
    (tmp_path / "somedir").mkdir()
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")  # a secret saved in the wrong encoding
    (tmp_path / "bom.txt").write_bytes("\ufefftoken\n".encode())  # what some Windows editors save
    return tmp_path


def write(folder: Path, text: str, name: str = "agent.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value.problems


# --- files that load ----------------------------------------------------------------------------------

def test_minimal_file_from_design_loads_with_documented_defaults() -> None:
    config = load_config(REPO / "config" / "minimal.yaml")
    assert config.device.id == "porch-pi"
    assert (config.camera.source, config.camera.fps, config.camera.loop) == ("/var/lib/catdog-agent/frames", 1.0, False)
    assert (config.camera.width, config.camera.height, config.camera.swap_rb) == (None, None, False)
    assert (config.server.url, config.server.model, config.server.version, config.server.label) == (
        "http://models.lan:8501", "cat_dog_classifier", 2, None)
    assert (config.server.signature, config.server.timeout_s, config.server.headers) == ("serving_default", 10.0, ())
    assert (config.server.retry.attempts, config.server.retry.initial_s, config.server.retry.max_s) == (4, 0.5, 8.0)
    assert (config.model.resize, config.model.interpolation, config.model.scale) == ("stretch", "bilinear", "unit")
    assert (config.model.labels, config.model.threshold, config.model.size) == (("cat", "dog"), 0.5, None)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic_prefix, config.mqtt.qos) == (
        "broker.lan", 1883, "catdog", 1)
    assert (config.mqtt.keepalive, config.mqtt.tls, config.client_id) == (60, None, "catdog-porch-pi")
    assert (config.state_dir, config.log_level) == ("/var/lib/catdog-agent", "info")
    assert config.path == str(REPO / "config" / "minimal.yaml")


def test_folder_example_loads_and_shows_every_key() -> None:
    path = REPO / "config" / "folder.yaml"
    config = load_config(path)
    assert (config.camera.fps, config.server.label, config.server.version) == (0.0, "stable", None)
    text = path.read_text()
    missing = [row[0] for row in reference_rows() if f"{row[0].rsplit('.', 1)[-1]}:" not in text]
    assert missing == []


def test_config_path_is_absolute_even_when_loaded_by_a_relative_name(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config_dir, doc(""))
    monkeypatch.chdir(config_dir)
    assert load_config("agent.yaml").path == str(config_dir / "agent.yaml")


def test_integer_is_accepted_for_a_float_key(config_dir: Path) -> None:
    config = load_config(write(config_dir, doc("camera:\n  source: f\n  fps: 2\n")))
    assert config.camera.fps == 2.0 and isinstance(config.camera.fps, float)


def test_headers_mapping_becomes_pairs_in_file_order(config_dir: Path) -> None:
    text = doc("server:\n  url: http://m:8501\n  model: m\n"
               "  headers:\n    X-Site: shed\n    Accept: application/json\n")
    assert load_config(write(config_dir, text)).server.headers == (("X-Site", "shed"), ("Accept", "application/json"))


def test_trailing_slash_of_server_url_is_dropped(config_dir: Path) -> None:
    text = doc("server:\n  url: https://models.lan:8501/serving/\n  model: m\n")
    assert load_config(write(config_dir, text)).server.url == "https://models.lan:8501/serving"


def test_empty_tls_section_turns_tls_on_with_defaults(config_dir: Path) -> None:
    config = load_config(write(config_dir, doc("mqtt:\n  host: b\n  tls:\n")))
    assert config.mqtt.tls == TlsConfig()


def test_skip_unchanged_is_off_unless_present_and_an_empty_section_takes_the_defaults(config_dir: Path) -> None:
    assert load_config(write(config_dir, doc(""))).camera.skip_unchanged is None
    config = load_config(write(config_dir, doc("camera:\n  source: f\n  skip_unchanged:\n")))
    assert config.camera.skip_unchanged == SkipUnchangedConfig(threshold=0.02, max_interval_s=60.0)
    text = doc("camera:\n  source: f\n  skip_unchanged:\n    threshold: 0.1\n    max_interval_s: 5\n")
    assert load_config(write(config_dir, text)).camera.skip_unchanged == SkipUnchangedConfig(0.1, 5.0)


def test_section_with_every_key_commented_out_takes_the_defaults(config_dir: Path) -> None:
    config = load_config(write(config_dir, doc("model:\n  # labels: [a, b]\n")))
    assert config.model.labels == ("cat", "dog")


def test_yaml_anchors_and_merge_keys_are_allowed(config_dir: Path) -> None:
    text = doc("server:\n  url: http://m:8501\n  model: m\n  retry: &fast {attempts: 2, initial_s: 0.1}\n"
               "mqtt:\n  host: b\n  <<: {port: 1884}\n")
    config = load_config(write(config_dir, text))
    assert (config.server.retry.attempts, config.mqtt.port) == (2, 1884)


# --- one bad key at a time -----------------------------------------------------------------------------

BAD_CONFIGS = [
    pytest.param(doc("mqtt:\n  host: b\n  prot: 1883\n"),
                 "mqtt.prot: unknown key (did you mean 'port'?) (line 3)", id="unknown-key-with-hint"),
    pytest.param(doc("mqtt:\n  host: b\n  zzz: 1\n"), "mqtt.zzz: unknown key (line 3)", id="unknown-key-no-hint"),
    pytest.param(doc("camera:\n  source: f\n  threshold: 0.7\n"),
                 "camera.threshold: unknown key (did you mean 'camera.skip_unchanged.threshold' or 'model.threshold'?) "
                 "(line 3)", id="key-in-wrong-section"),
    pytest.param(doc("modle:\n  labels: [a, b]\n"), "modle: unknown key (did you mean 'model'?) (line 1)",
                 id="misspelt-section"),
    pytest.param(doc("mqtt:\n  host: b\n  port: '1883'\n"), "mqtt.port: expected an integer, got '1883' (line 3)",
                 id="string-is-not-an-integer"),
    pytest.param(doc("mqtt:\n  host: b\n  qos: true\n"), "mqtt.qos: expected an integer, got true (line 3)",
                 id="bool-is-not-an-integer"),
    pytest.param(doc("camera:\n  source: f\n  fps: yes\n"), "camera.fps: expected a number, got true (line 3)",
                 id="bool-is-not-a-number"),
    pytest.param(doc("camera:\n  source: f\n  fps:\n"), "camera.fps: expected a number, got null (line 3)",
                 id="null-is-not-a-number"),
    pytest.param(doc("model:\n  threshold: .nan\n"), "model.threshold: expected a finite number, got nan (line 2)",
                 id="nan-is-not-a-number"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  version: 2.5\n"),
                 "server.version: expected an integer, got 2.5 (line 4)", id="float-is-not-an-integer"),
    pytest.param(doc("device:\n  id: no\n"), "device.id: expected a string, got false (put it in quotes) (line 2)",
                 id="yaml-no-is-false"),
    pytest.param(doc("camera:\n  source: f\n  loop: 'no'\n"), "camera.loop: expected true or false, got 'no' (line 3)",
                 id="quoted-no-is-not-a-bool"),
    pytest.param(doc("model:\n  labels: cat\n"), "model.labels: expected a list of strings, got 'cat' (line 2)",
                 id="list-expected"),
    pytest.param(doc("model:\n  labels:\n    - cat\n    - 7\n"),
                 "model.labels[1]: expected a string, got 7 (put it in quotes) (line 4)", id="list-item-type"),
    pytest.param(doc("model:\n  size: [150]\n"), "model.size: expected a list of 2 integers, got [150] (line 2)",
                 id="size-needs-two-items"),
    pytest.param(doc("model:\n  size: [0, 150]\n"),
                 "model.size: must be [height, width] of positive integers (got [0, 150]) (line 2)",
                 id="size-positive"),
    pytest.param(doc("camera: /dev/video0\n"), "camera: expected a mapping, got '/dev/video0' (line 1)",
                 id="section-not-a-mapping"),
    pytest.param(doc("mqtt:\n  host: b\n  tls: true\n"), "mqtt.tls: expected a mapping, got true (line 3)",
                 id="optional-section-not-a-mapping"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  headers: [a]\n"),
                 "server.headers: expected a mapping of names to strings, got [\"a\"] (line 4)",
                 id="headers-not-a-mapping"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  headers:\n    X-Retries: 3\n"),
                 "server.headers.X-Retries: expected a string, got 3 (put it in quotes) (line 5)",
                 id="header-value-not-a-string"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  headers:\n    X Bad: v\n"),
                 "server.headers.X Bad: is not a valid HTTP header name (line 5)", id="header-name"),
    pytest.param(doc("device: {}\n"), "device.id: required key is missing (line 1)", id="missing-required-key"),
    pytest.param(doc("", omit=("mqtt",)), "mqtt: required section is missing", id="missing-required-section"),
    pytest.param(doc("model:\n  resize: fit\n"),
                 "model.resize: must be one of stretch, letterbox, crop (got 'fit') (line 2)", id="choices"),
    pytest.param(doc("log_level: loud\n"),
                 "log_level: must be one of debug, info, warning, error (got 'loud') (line 1)", id="top-level-choices"),
    pytest.param(doc("device:\n  id: porch pi\n"),
                 "device.id: use 1 to 64 letters, digits, '-' or '_' (got 'porch pi') (line 2)", id="device-id-chars"),
    pytest.param(doc(f"device:\n  id: {'x' * 65}\n"), f"device.id: use 1 to 64 letters, digits, '-' or '_' "
                 f"(got '{'x' * 65}') (line 2)", id="device-id-length"),
    pytest.param(doc("camera:\n  source: ''\n"), "camera.source: must not be empty (line 2)", id="empty-source"),
    pytest.param(doc("camera:\n  source: picamera2:front\n"),
                 "camera.source: use picamera2 or picamera2:N with N a camera number (got 'picamera2:front') (line 2)",
                 id="picamera2-index"),
    pytest.param(doc("camera:\n  source: f\n  fps: -1\n"),
                 "camera.fps: must be 0 (unpaced) or 0.001 to 1000 (got -1) (line 3)", id="fps-negative"),
    pytest.param(doc("camera:\n  source: f\n  width: 640\n"),
                 "camera: set width and height together (only width is set) (line 3)", id="width-without-height"),
    pytest.param(doc("camera:\n  source: f\n  width: 0\n  height: 480\n"),
                 "camera.width: must be a positive number of pixels (got 0) (line 3)", id="width-positive"),
    pytest.param(doc("server:\n  url: models.lan:8501\n  model: m\n"),
                 "server.url: must start with http:// or https:// (got 'models.lan:8501') (line 2)", id="url-scheme"),
    pytest.param(doc("server:\n  url: http://\n  model: m\n"), "server.url: has no host name (got 'http://') (line 2)",
                 id="url-host"),
    pytest.param(doc("server:\n  url: http://m:8501?x=1\n  model: m\n"),
                 "server.url: must not have a query or fragment (got 'http://m:8501?x=1') (line 2)", id="url-query"),
    pytest.param(doc("server:\n  url: http://m:99999\n  model: m\n"),
                 "server.url: not a valid URL: Port out of range 0-65535 (got 'http://m:99999') (line 2)",
                 id="url-port"),
    pytest.param(doc("server:\n  url: http://m\n  model: cats/dogs\n"),
                 "server.model: must be a model name without '/' or ':' (got 'cats/dogs') (line 3)", id="model-name"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  version: -1\n"),
                 "server.version: must be 0 or more (got -1) (line 4)", id="version-negative"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  label: a/b\n"),
                 "server.label: must be a non-empty label without '/' or ':' (got 'a/b') (line 4)", id="label-grammar"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  label: '2'\n"),
                 "server.label: must not be all digits; pin a number with server.version (got '2') (line 4)",
                 id="label-digits"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  version: 2\n  label: stable\n"),
                 "server: set either version or label, not both (line 5)", id="version-and-label"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  timeout_s: 0\n"),
                 "server.timeout_s: must be more than 0 and at most 86400 seconds (got 0) (line 4)", id="timeout"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  json_decimals: 3\n"),
                 "server.json_decimals: must be 4 to 9 (got 3) (line 4)", id="json-decimals"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  jpeg_quality: 0\n"),
                 "server.jpeg_quality: must be 1 to 100 (got 0) (line 4)", id="jpeg-quality"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  retry:\n    attempts: 0\n"),
                 "server.retry.attempts: must be 1 or more (got 0) (line 5)", id="retry-attempts"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  retry:\n    initial_s: 0\n"),
                 "server.retry.initial_s: must be more than 0 and at most 86400 seconds (got 0) (line 5)",
                 id="retry-initial"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  retry:\n    initial_s: 2\n    max_s: 1\n"),
                 "server.retry.max_s: must be at least initial_s, which is 2 (got 1) (line 6)", id="retry-max"),
    pytest.param(doc("model:\n  labels: [cat]\n"), "model.labels: needs at least 2 labels (got 1) (line 2)",
                 id="labels-count"),
    pytest.param(doc("model:\n  labels: [cat, cat]\n"),
                 "model.labels: labels must be unique ('cat' is given twice) (line 2)", id="labels-unique"),
    pytest.param(doc("model:\n  labels: [cat, '']\n"), "model.labels: labels must not be empty (line 2)",
                 id="labels-empty"),
    pytest.param(doc("model:\n  threshold: 1\n"),
                 "model.threshold: must be between 0 and 1, both excluded (got 1) (line 2)", id="threshold"),
    pytest.param(doc("mqtt:\n  host: mqtt://broker.lan\n"),
                 "mqtt.host: give a host name or address, not a URL (got 'mqtt://broker.lan') (line 2)", id="host-url"),
    pytest.param(doc("mqtt:\n  host: b\n  port: 0\n"), "mqtt.port: must be 1 to 65535 (got 0) (line 3)",
                 id="port-range"),
    pytest.param(doc("mqtt:\n  host: b\n  qos: 3\n"), "mqtt.qos: must be 0, 1 or 2 (got 3) (line 3)", id="qos"),
    pytest.param(doc("mqtt:\n  host: b\n  keepalive: 2\n"),
                 "mqtt.keepalive: must be 5 to 65535 seconds (got 2) (line 3)", id="keepalive"),
    pytest.param(doc("mqtt:\n  host: b\n  keepalive: 70000\n"),
                 "mqtt.keepalive: must be 5 to 65535 seconds (got 70000) (line 3)", id="keepalive-over-16-bits"),
    pytest.param(doc("camera:\n  source: f\n  fps: 1.0e-12\n"),
                 "camera.fps: must be 0 (unpaced) or 0.001 to 1000 (got 1e-12) (line 3)", id="fps-tiny"),
    pytest.param(doc("server:\n  url: http://s\n  model: m\n  timeout_s: 1.0e+12\n"),
                 "server.timeout_s: must be more than 0 and at most 86400 seconds (got 1e+12) (line 4)",
                 id="timeout-absurd"),
    pytest.param(doc("mqtt:\n  host: b\n  topic_prefix: ''\n"),
                 "mqtt.topic_prefix: must not be empty (got '') (line 3)", id="prefix-empty"),
    pytest.param(doc("mqtt:\n  host: b\n  topic_prefix: home/+\n"),
                 "mqtt.topic_prefix: must not contain the MQTT wildcards '+' or '#' (got 'home/+') (line 3)",
                 id="prefix-wildcard"),
    pytest.param(doc("mqtt:\n  host: b\n  topic_prefix: /catdog\n"),
                 "mqtt.topic_prefix: must not start or end with '/' (got '/catdog') (line 3)", id="prefix-slash"),
    pytest.param(doc("mqtt:\n  host: b\n  topic_prefix: home//catdog\n"),
                 "mqtt.topic_prefix: must not have empty levels ('//') (got 'home//catdog') (line 3)",
                 id="prefix-empty-level"),
    pytest.param(doc("mqtt:\n  host: b\n  state_interval_s: 0\n"),
                 "mqtt.state_interval_s: must be more than 0 and at most 86400 seconds (got 0) (line 3)",
                 id="state-interval"),
    pytest.param(doc("mqtt:\n  host: b\n  password_file: secret.txt\n"),
                 "mqtt.password_file: needs mqtt.username as well (line 3)", id="password-without-username"),
    pytest.param(doc("mqtt:\n  host: b\n  tls:\n    keyfile: client.key\n"),
                 "mqtt.tls.keyfile: needs mqtt.tls.certfile as well (line 4)", id="key-without-cert"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  token_file: nope.txt\n"),
                 "server.token_file: file not found: {dir}/nope.txt (line 4)", id="missing-token-file"),
    pytest.param(doc("mqtt:\n  host: b\n  tls:\n    ca_certs: /nonexistent/ca.pem\n"),
                 "mqtt.tls.ca_certs: file not found: /nonexistent/ca.pem (line 4)", id="missing-tls-file"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  token_file: somedir\n"),
                 "server.token_file: expected a file, found a directory: {dir}/somedir (line 4)", id="file-is-a-dir"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  token_file: latin1.txt\n"),
                 "server.token_file: {dir}/latin1.txt is not UTF-8 text (byte 3) (line 4)", id="token-not-utf8"),
    pytest.param(doc("mqtt:\n  host: b\n  username: u\n  password_file: latin1.txt\n"),
                 "mqtt.password_file: {dir}/latin1.txt is not UTF-8 text (byte 3) (line 4)", id="password-not-utf8"),
    pytest.param(doc("server:\n  url: http://m\n  model: m\n  token_file: bom.txt\n"),
                 "server.token_file: {dir}/bom.txt: a bearer token is one line of printable ASCII (no BOM, no other "
                 "characters) (line 4)", id="token-with-bom"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_is_reported_alone_with_key_path_and_line(config_dir: Path, text: str, expected: str) -> None:
    path = write(config_dir, text)
    assert problems_of(path) == [f"{path}: {expected.format(dir=config_dir)}"]


def test_every_problem_in_a_file_is_reported_in_line_order(config_dir: Path) -> None:
    text = ("device:\n  id: porch pi\n"
            "camera:\n  source: f\n  fps: -2\n"
            "server:\n  url: http://m\n  model: m\n  version: 1\n  label: stable\n"
            "mqtt:\n  host: b\n  port: '1883'\n  prot: 1\n"
            "model:\n  resize: fit\n")
    path = write(config_dir, text)
    assert problems_of(path) == [
        f"{path}: device.id: use 1 to 64 letters, digits, '-' or '_' (got 'porch pi') (line 2)",
        f"{path}: camera.fps: must be 0 (unpaced) or 0.001 to 1000 (got -2) (line 5)",
        f"{path}: server: set either version or label, not both (line 10)",
        f"{path}: mqtt.port: expected an integer, got '1883' (line 13)",
        f"{path}: mqtt.prot: unknown key (did you mean 'port'?) (line 14)",
        f"{path}: model.resize: must be one of stretch, letterbox, crop (got 'fit') (line 16)",
    ]


def test_missing_sections_come_first_without_a_line(config_dir: Path) -> None:
    path = write(config_dir, "device:\n  id: x\nmqtt:\n  host: b\n  qos: 9\n")
    assert problems_of(path) == [
        f"{path}: camera: required section is missing",
        f"{path}: server: required section is missing",
        f"{path}: mqtt.qos: must be 0, 1 or 2 (got 9) (line 5)",
    ]


def test_type_error_does_not_echo_as_a_rule_error(config_dir: Path) -> None:
    """A bad width used to fall back to None and also report "only height is set"."""
    path = write(config_dir, doc("camera:\n  source: f\n  width: '640'\n  height: 480\n"))
    assert problems_of(path) == [f"{path}: camera.width: expected an integer, got '640' (line 3)"]


def test_rules_still_run_when_a_required_key_of_the_section_is_bad(config_dir: Path) -> None:
    path = write(config_dir, doc("camera:\n  source: picamera2:x\n  fps: -1\n"))
    assert [problem.split(": ")[1] for problem in problems_of(path)] == ["camera.source", "camera.fps"]


# --- whole-file problems -----------------------------------------------------------------------------

def test_duplicate_key_names_both_lines(config_dir: Path) -> None:
    path = write(config_dir, doc("mqtt:\n  host: b\n  port: 1883\n  port: 1884\n"))
    assert problems_of(path) == [f"{path}: mqtt.port: duplicate key 'port' (first at line 3) (line 4)"]


def test_duplicate_section_is_reported_with_other_problems(config_dir: Path) -> None:
    path = write(config_dir, doc("model:\n  threshold: 2\nmodel:\n  threshold: 0.7\n  resize: fit\n"))
    assert problems_of(path) == [
        f"{path}: model: duplicate key 'model' (first at line 1) (line 3)",
        f"{path}: model.resize: must be one of stretch, letterbox, crop (got 'fit') (line 5)",
    ]


def test_yaml_syntax_error_is_one_line_with_its_line_number(config_dir: Path) -> None:
    path = write(config_dir, "device:\n  id: x\ncamera:\n  source: f\n fps: 1\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: (file): not valid YAML: ") and problem.endswith("(line 5)")
    assert "\n" not in problem


def test_unclosed_list_is_a_yaml_syntax_error(config_dir: Path) -> None:
    path = write(config_dir, doc("model:\n  labels: [cat, dog\n"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: (file): not valid YAML: ") and "(line " in problem


@pytest.mark.parametrize("text", ["", "\n", "# everything commented out\n", "---\n"], ids=["empty", "newline",
                                                                                           "comment", "marker"])
def test_empty_file_is_one_clear_error(config_dir: Path, text: str) -> None:
    path = write(config_dir, text)
    assert problems_of(path) == [
        f"{path}: (file): the file is empty; it needs at least the sections device, camera, server and mqtt"]


def test_top_level_that_is_not_a_mapping_is_an_error(config_dir: Path) -> None:
    path = write(config_dir, "- device\n- camera\n")
    assert problems_of(path) == [f"{path}: (file): expected a mapping of sections (device, camera, server and mqtt) "
                                 f"at the top level, got [\"device\", \"camera\"]"]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"{path}: (file): cannot read the file: No such file or directory"]


def test_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"device:\n  id: caf\xe9\n")
    assert problems_of(path) == [f"{path}: (file): not UTF-8 text (byte 0xe9) (line 2)"]


def valid_data() -> dict[str, Any]:
    return {"device": {"id": "x"}, "camera": {"source": "f"}, "server": {"url": "http://m", "model": "m"},
            "mqtt": {"host": "b"}}


def test_parse_config_without_lines_reports_without_line_numbers(tmp_path: Path) -> None:
    data = {**valid_data(), "mqtt": {"host": "b", "qos": 5}}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, source="inline", base_dir=tmp_path)
    assert raised.value.problems == ["inline: mqtt.qos: must be 0, 1 or 2 (got 5)"]


def test_parse_config_uses_given_lines_and_base_dir(tmp_path: Path) -> None:
    data = valid_data()
    config = parse_config(data, source="inline", base_dir=tmp_path, lines={("camera", "source"): 4})
    assert config.camera.source == str(tmp_path / "f")
    data["mqtt"] = {"host": "b", "port": 0}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, source="inline", base_dir=tmp_path, lines={("mqtt", "port"): 9})
    assert raised.value.problems == ["inline: mqtt.port: must be 1 to 65535 (got 0) (line 9)"]


# --- paths and systemd directories -------------------------------------------------------------------

@pytest.mark.parametrize("source", ["picamera2", "picamera2:1", "csi://0", "/dev/video0", "v4l2:///dev/video0",
                                    "/dev/v4l/by-id/usb-cam-video-index0", "rtsp://cam.lan/stream",
                                    "http://cam.lan/mjpg", "/srv/frames"])
def test_device_and_url_sources_are_kept_as_written(config_dir: Path, source: str) -> None:
    config = load_config(write(config_dir, doc(f"camera:\n  source: {source}\n")))
    assert config.camera.source == source


@pytest.mark.parametrize(("source", "resolved"), [("frames", "frames"), ("./clips/a.mp4", "clips/a.mp4"),
                                                  ("../photos", "../photos")])
def test_relative_source_is_taken_from_the_config_folder_and_need_not_exist(
        config_dir: Path, source: str, resolved: str) -> None:
    folder = config_dir / "etc"
    folder.mkdir()
    config = load_config(write(folder, doc(f"camera:\n  source: {source}\n")))
    assert config.camera.source == os.path.normpath(folder / resolved)


def test_relative_secret_files_are_taken_from_the_config_folder(config_dir: Path) -> None:
    text = doc("mqtt:\n  host: b\n  username: u\n  password_file: secret.txt\n  tls:\n"
               "    certfile: ./client.key\n    keyfile: client.key\n")
    mqtt: MqttConfig = load_config(write(config_dir, text)).mqtt
    assert mqtt.password_file == str(config_dir / "secret.txt")
    assert mqtt.tls is not None and mqtt.tls.certfile == mqtt.tls.keyfile == str(config_dir / "client.key")


def test_credentials_directory_wins_for_relative_secret_files(
        config_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path_factory.mktemp("credentials")
    (credentials / "secret.txt").write_text("from systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    text = doc("server:\n  url: http://m\n  model: m\n  token_file: secret.txt\n  ca_certs: client.key\n")
    server = load_config(write(config_dir, text)).server
    assert server.token_file == str(credentials / "secret.txt")
    assert server.ca_certs == str(config_dir / "client.key")  # not a credential: the config folder's file


def test_credentials_directory_does_not_apply_to_absolute_paths(
        config_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path_factory.mktemp("credentials")
    (credentials / "secret.txt").write_text("from systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    text = doc(f"server:\n  url: http://m\n  model: m\n  token_file: {config_dir / 'secret.txt'}\n")
    assert load_config(write(config_dir, text)).server.token_file == str(config_dir / "secret.txt")


def test_state_directory_from_systemd_is_the_default_state_dir(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/catdog-agent:/var/lib/other")
    assert load_config(write(config_dir, doc(""))).state_dir == "/var/lib/catdog-agent"
    monkeypatch.setenv("STATE_DIRECTORY", "/run/state-a")
    assert load_config(write(config_dir, doc(""))).state_dir == "/run/state-a"


def test_explicit_state_dir_wins_over_state_directory(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/run/state-a")
    assert load_config(write(config_dir, doc("state_dir: /data/catdog\n"))).state_dir == "/data/catdog"
    assert load_config(write(config_dir, doc("state_dir: state\n"))).state_dir == str(config_dir / "state")


# --- the README's reference table ------------------------------------------------------------------

def _schema_paths(cls: type[Any], prefix: str = "") -> list[str]:
    paths = []
    hints = get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if spec.metadata.get("internal"):
            continue
        paths.append(prefix + spec.name)
        hint = hints[spec.name]
        if get_origin(hint) is Union:
            hint = next(arg for arg in get_args(hint) if arg is not type(None))
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            paths.extend(_schema_paths(hint, f"{prefix}{spec.name}."))
    return paths


def test_reference_rows_cover_every_field_except_internal_ones() -> None:
    rows = reference_rows()
    assert [row[0] for row in rows] == _schema_paths(Config)
    assert "path" not in [row[0] for row in rows]
    assert all(doc_text for _path, _type, _default, doc_text in rows)


def test_reference_rows_give_type_and_default_as_a_reader_writes_them() -> None:
    rows = {row[0]: row[1:3] for row in reference_rows()}
    assert rows["device.id"] == ("string", "required")
    assert rows["mqtt.port"] == ("integer", "1883")
    assert rows["camera.fps"] == ("number", "1")
    assert rows["model.labels"] == ("list of strings", "[cat, dog]")
    assert rows["model.size"] == ("list of 2 integers", "none")
    assert rows["server.headers"] == ("mapping of names to strings", "{}")
    assert rows["mqtt.tls"] == ("section", "none")
    assert rows["camera.loop"] == ("boolean", "false")


@pytest.mark.parametrize(("name", "kind"), [
    ("pi-camera.yaml", "picamera2"), ("jetson-csi.yaml", "csi"), ("usb-webcam.yaml", "v4l2"),
    ("rtsp-camera.yaml", "stream"), ("folder.yaml", "folder"), ("minimal.yaml", "folder"),
])
def test_every_example_config_loads_and_names_its_kind_of_source(name: str, kind: str) -> None:
    from agent.sources import source_kind

    assert source_kind(load_config(REPO / "config" / name).camera.source) == kind


def test_the_examples_cover_every_file_in_config() -> None:
    assert sorted(p.name for p in (REPO / "config").glob("*.yaml")) == sorted(
        ["pi-camera.yaml", "jetson-csi.yaml", "usb-webcam.yaml", "rtsp-camera.yaml", "folder.yaml", "minimal.yaml"])


@pytest.mark.parametrize(("camera", "problem"), [
    ("  capture_fps: 0\n", "camera.capture_fps: must be 0.1 to 240 frames per second (got 0)"),
    ("  timeout_s: 30\n", "camera.timeout_s: must be 0.5 to 14 seconds (got 30)"),
    ("  capture_fps: 0.2\n  timeout_s: 5\n", "camera.capture_fps: 0.2 fps is too slow for camera.timeout_s 5"),
    ("  flip: upside-down\n", "camera.flip"),
    ("  reconnect:\n    initial_s: 5\n    max_s: 1\n", "camera.reconnect.max_s: must be at least initial_s (5)"),
    ("  skip_unchanged:\n    threshold: 0\n",
     "camera.skip_unchanged.threshold: must be more than 0 and at most 1, a share of the picture (got 0) (line 4)"),
    ("  skip_unchanged:\n    threshold: 2\n", "camera.skip_unchanged.threshold: must be more than 0 and at most 1"),
    ("  skip_unchanged:\n    max_interval_s: 0\n",
     "camera.skip_unchanged.max_interval_s: must be more than 0 and at most 86400 seconds (got 0) (line 4)"),
    ("  skip_unchanged:\n    max_interval_s: 100000\n", "camera.skip_unchanged.max_interval_s: must be more than 0"),
    ("  skip_unchanged: true\n", "camera.skip_unchanged: expected a mapping, got true (line 3)"),
])
def test_camera_timing_keys_are_checked(config_dir: Path, camera: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(config_dir, doc("camera:\n  source: f\n" + camera)))
    assert any(problem in line for line in raised.value.problems), raised.value.problems
