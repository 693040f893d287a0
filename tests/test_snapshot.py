"""``catdog-agent snapshot`` and ``check``'s source line: what a user aims the camera and checks colours with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from conftest import agent_command, agent_config
from helpers_media import BLUE, RED, quadrant_colours, quadrants, save_image
from PIL import Image


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(agent_command(*args), capture_output=True, text=True, timeout=60)


def test_snapshot_saves_the_model_input_enlarged_with_the_size_from_the_server(tmp_path, devserver):
    image = save_image(quadrants(480, 640), tmp_path / "card.png")
    config = agent_config(tmp_path, source=image, server_url=devserver.url, mqtt_port=1)
    out = tmp_path / "seen.png"
    done = cli("snapshot", "--config", str(config), str(out))
    assert done.returncode == 0, done.stderr
    assert "150x150 (from the server's metadata; stretch, bilinear) from a 640x480 frame" in done.stdout
    with Image.open(out) as saved:
        pixels = np.asarray(saved.convert("RGB"))
    assert pixels.shape == (600, 600, 3)  # 150x150 enlarged 4x
    blocks = pixels.reshape(150, 4, 150, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # each model pixel is a solid 4x4 block: nothing smoothed
    colours = quadrant_colours(pixels)
    assert tuple(colours["top_left"]) == RED and tuple(colours["bottom_left"]) == BLUE


def test_snapshot_shows_a_colour_order_mistake_that_swap_rb_fixes(tmp_path):
    image = save_image(quadrants(), tmp_path / "card.png")
    config = agent_config(tmp_path, source=image, server_url="http://127.0.0.1:9", mqtt_port=1,
                          camera={"swap_rb": True}, model={"size": [32, 48]})
    out = tmp_path / "seen.jpg"
    done = cli("snapshot", "--config", str(config), str(out))
    assert done.returncode == 0, done.stderr
    assert "48x32 (model.size;" in done.stdout and "set camera.swap_rb" in done.stdout
    with Image.open(out) as saved:
        assert saved.size == (48 * 12, 32 * 12)
        colours = quadrant_colours(np.asarray(saved.convert("RGB")))
    assert colours["top_left"][2] > 200 and colours["top_left"][0] < 60  # red drawn, blue shown: swapped


def test_snapshot_without_server_or_model_size_uses_150_and_says_so(tmp_path):
    image = save_image(quadrants(), tmp_path / "card.png")
    config = agent_config(tmp_path, source=image, server_url="http://127.0.0.1:9", mqtt_port=1,
                          server={"retry": {"attempts": 1}})
    done = cli("snapshot", "--config", str(config), str(tmp_path / "seen.png"))
    assert done.returncode == 0, done.stderr
    assert "150x150 (server unreachable: default size" in done.stdout
    assert "server metadata unavailable" in done.stderr


def test_snapshot_of_a_missing_camera_exits_69_with_the_reason(tmp_path):
    config = agent_config(tmp_path, source=f"v4l2://{tmp_path}/video5", server_url="http://127.0.0.1:9",
                          mqtt_port=1, model={"size": [150, 150]})
    done = cli("snapshot", "--config", str(config), str(tmp_path / "seen.png"))
    assert done.returncode == 69
    assert "video5: no such video device" in done.stderr
    assert not (tmp_path / "seen.png").exists()


def test_snapshot_to_an_unwritable_place_is_one_error_line(tmp_path):
    image = save_image(quadrants(), tmp_path / "card.png")
    config = agent_config(tmp_path, source=image, server_url="http://127.0.0.1:9", mqtt_port=1,
                          model={"size": [150, 150]})
    done = cli("snapshot", "--config", str(config), str(tmp_path / "no-such-dir" / "seen.png"))
    assert done.returncode == 1
    assert "cannot save the snapshot" in done.stderr and "Traceback" not in done.stderr


def test_check_prints_the_frame_size_and_colour_means_of_the_source(tmp_path, devserver, broker):
    half_red = np.zeros((48, 64, 3), dtype=np.uint8)
    half_red[:24] = RED
    image = save_image(half_red, tmp_path / "card.png")
    config = agent_config(tmp_path, source=Path(image), server_url=devserver.url, mqtt_port=broker.port)
    done = cli("check", "--config", str(config))
    line = next(line for line in done.stdout.splitlines() if line.startswith("✓ source:"))
    assert "first frame 64x48 (card.png)" in line
    assert "mean R/G/B 128/0/0" in line
