"""install.sh's device mode, run by real bash into a directory tree (--root) with the system steps stubbed
(--no-system prints the apt-get/systemd-sysusers/pip/systemctl commands instead of running them)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

INSTALL = REPO / "install.sh"
UNIT = "etc/systemd/system/catdog-agent.service"
DROPIN = "etc/systemd/system/catdog-agent.service.d/jetson.conf"
CONF = "etc/catdog-agent/agent.yaml"
STATE = "var/lib/catdog-agent"
LINK = "usr/local/bin/catdog-agent"
SYSUSERS = "etc/sysusers.d/catdog-agent.conf"

# Real strings from these boards: /proc/device-tree/model (NUL-terminated), .../compatible (NUL-separated),
# and the first line of /etc/nv_tegra_release.
BOARDS = {
    "pi4": ("Raspberry Pi 4 Model B Rev 1.4", ["raspberrypi,4-model-b", "brcm,bcm2711"], None),
    "pi5": ("Raspberry Pi 5 Model B Rev 1.0", ["raspberrypi,5-model-b", "brcm,bcm2712"], None),
    "zero2w": ("Raspberry Pi Zero 2 W Rev 1.0", ["raspberrypi,model-zero-2-w", "brcm,bcm2837"], None),
    "orin-nano": ("NVIDIA Jetson Orin Nano Developer Kit",
                  ["nvidia,p3768-0000+p3767-0005", "nvidia,p3767-0005", "nvidia,tegra234"],
                  "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
                  "DATE: Fri Jul 19 23:24:25 UTC 2024"),
    "nano": ("NVIDIA Jetson Nano Developer Kit", ["nvidia,p3450-0000", "nvidia,jetson-nano", "nvidia,tegra210"],
             "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, "
             "DATE: Fri Jun  9 04:25:08 UTC 2023"),
}


def board_tree(root: Path, board: str) -> Path:
    """A directory tree with the /proc and /etc files a board has."""
    model, compatible, release = BOARDS[board]
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    (root / "proc/device-tree/compatible").write_bytes(b"".join(c.encode() + b"\0" for c in compatible))
    if release:
        (root / "etc").mkdir()
        (root / "etc/nv_tegra_release").write_text(release + "\n")
    return root


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=60)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def device_install(root: Path, *args: str, arch: str = "arm64", check: bool = True) -> subprocess.CompletedProcess:
    return install(root, "--no-system", "--arch", arch, *args, check=check)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry of the tree: type, mode and content hash (or link target)."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        name, info = str(path.relative_to(root)), path.lstat()
        if path.is_symlink():
            entries[name] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[name] = ("dir", oct(info.st_mode))
        else:
            entries[name] = ("file", oct(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o7777)


# Device installs build the venv on the distribution's Python when it is there.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"


def would_run(output: str, command: str) -> list[str]:
    """The stubbed commands starting with ``command`` that install.sh printed."""
    return [line.split("would run: ", 1)[1] for line in output.splitlines()
            if "would run: " in line and line.split("would run: ", 1)[1].startswith(command)]


def apt_packages(output: str) -> set[str]:
    (line,) = would_run(output, "apt-get install")
    return {word for word in line.split()[2:] if not word.startswith("-")}


def expected_example(board: str) -> Path:
    """The example a first install copies to agent.yaml (a board-specific one once it exists in config/)."""
    specific = {"pi": "pi-camera.yaml", "jetson": "jetson-csi.yaml"}.get(board)
    if specific and (REPO / "config" / specific).exists():
        return REPO / "config" / specific
    return REPO / "config" / "minimal.yaml"


@pytest.mark.parametrize(
    ("name", "board", "l4t"),
    [("pi4", "pi", ""), ("pi5", "pi", ""), ("zero2w", "pi", ""), ("orin-nano", "jetson", "36.3.0"),
     ("nano", "jetson", "32.7.4")],
)
def test_detect_names_the_board_from_real_device_tree_and_l4t_strings(tmp_path, name, board, l4t):
    proc = install(board_tree(tmp_path, name), "--detect", "--arch", "arm64")
    assert proc.stderr == "", "NUL bytes must not reach bash"
    assert proc.stdout.splitlines() == [f"board={board}", f"model={BOARDS[name][0]}", "arch=arm64", f"l4t={l4t}"]


def test_detect_without_device_tree_is_other_and_reads_the_userland_arch_from_dpkg(tmp_path):
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    lines = install(tmp_path, "--detect").stdout.splitlines()
    assert lines[:2] == ["board=other", "model=Standard PC (Q35 + ICH9, 2009)"]
    if shutil.which("dpkg"):
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
        assert lines[2] == f"arch={arch}"


def test_board_can_be_forced_when_detection_is_wrong(tmp_path):
    lines = install(board_tree(tmp_path, "pi4"), "--detect", "--board", "other", "--arch", "armhf").stdout
    assert lines.splitlines()[0] == "board=other" and "arch=armhf" in lines


def test_a_pi_install_lays_down_unit_config_command_and_user_and_says_what_next(tmp_path):
    root = board_tree(tmp_path, "pi4")
    out = device_install(root).stdout
    assert (root / UNIT).read_bytes() == (REPO / "systemd/catdog-agent.service").read_bytes()
    assert mode(root / UNIT) == "0o644"
    assert not (root / DROPIN).exists(), "the Jetson drop-in is for Jetsons only"
    assert (root / CONF).read_bytes() == expected_example("pi").read_bytes()
    assert mode(root / CONF) == "0o640" and mode(root / "etc/catdog-agent") == "0o750"
    assert mode(root / STATE) == "0o750"
    assert os.readlink(root / LINK) == "/opt/catdog-agent/venv/bin/catdog-agent"
    assert (root / SYSUSERS).read_bytes() == (REPO / "systemd/catdog-agent.sysusers").read_bytes()
    assert sorted(p.name for p in (root / "opt/catdog-agent/examples").iterdir()) == \
        sorted(p.name for p in (REPO / "config").glob("*.yaml"))
    assert would_run(out, "chown root:catdog-agent") == [f"chown root:catdog-agent {root}/etc/catdog-agent",
                                                         f"chown root:catdog-agent {root}/{CONF}"]
    assert would_run(out, "systemd-sysusers") == ["systemd-sysusers /etc/sysusers.d/catdog-agent.conf"]
    assert would_run(out, f"{PYTHON} -m venv") == [f"{PYTHON} -m venv --system-site-packages /opt/catdog-agent/venv"]
    (pip,) = would_run(out, "/opt/catdog-agent/venv/bin/python -m pip install --disable")
    assert shlex.split(pip)[-3:] == ["--constraint", "/opt/catdog-agent/constraints.txt", str(REPO)], "no extra"
    assert would_run(out, "systemctl") == ["systemctl daemon-reload", "systemctl enable catdog-agent.service"]
    assert "catdog-agent check --config /etc/catdog-agent/agent.yaml" in out
    assert "systemctl start catdog-agent" in out


@pytest.mark.parametrize(
    ("name", "arch", "packages"),
    [
        ("pi4", "arm64", {"python3-venv", "python3-picamera2", "python3-numpy", "python3-opencv"}),
        ("zero2w", "armhf", {"python3-venv", "python3-picamera2", "python3-numpy", "python3-opencv", "libopenblas0"}),
        # Under --no-system cv2 cannot be probed, so JetPack's OpenCV package is listed.
        ("orin-nano", "arm64", {"python3-venv", "python3-numpy", "libopencv-python"}),
        (None, "amd64", {"python3-venv"}),
    ],
    ids=["pi-64bit", "pi-32bit", "jetson", "x86"],
)
def test_apt_packages_fit_the_board_and_userland(tmp_path, name, arch, packages):
    root = board_tree(tmp_path, name) if name else tmp_path
    assert apt_packages(device_install(root, arch=arch).stdout) == packages


def test_pi_and_jetson_pin_numpy_1_and_refuse_pip_opencv_while_x86_gets_the_opencv_extra(tmp_path):
    for name in ("pi5", "orin-nano"):
        root = board_tree(tmp_path / name, name)
        device_install(root)
        pins = (root / "opt/catdog-agent/constraints.txt").read_text().splitlines()
        assert "numpy<2" in pins and "opencv-python-headless<0" in pins and "opencv-python<0" in pins
    other = tmp_path / "x86"
    other.mkdir()
    out = device_install(other, arch="amd64").stdout
    assert [line for line in (other / "opt/catdog-agent/constraints.txt").read_text().splitlines()
            if not line.startswith("#")] == []
    assert would_run(out, f"{PYTHON} -m venv") == [f"{PYTHON} -m venv /opt/catdog-agent/venv"]
    (pip,) = would_run(out, "/opt/catdog-agent/venv/bin/python -m pip install --disable")
    assert shlex.split(pip)[-1] == f"{REPO}[opencv]"


def test_a_jetson_install_adds_the_argus_drop_in_and_the_render_group(tmp_path):
    root = board_tree(tmp_path, "orin-nano")
    out = device_install(root).stdout
    assert (root / DROPIN).read_bytes() == (REPO / "systemd/jetson.conf").read_bytes()
    assert (root / CONF).read_bytes() == expected_example("jetson").read_bytes()
    assert would_run(out, "groupadd") == ["groupadd --system render"]
    assert would_run(out, "usermod") == ["usermod -a -G render catdog-agent"]


def test_jetpack_4_is_refused_before_anything_is_written(tmp_path):
    root = board_tree(tmp_path, "nano")
    before = snapshot(root)
    proc = device_install(root, check=False)
    assert proc.returncode != 0
    assert "L4T 32.7.4 (JetPack 4) is not supported" in proc.stderr and "Python 3.6" in proc.stderr
    assert snapshot(root) == before


def test_a_second_run_changes_nothing(tmp_path):
    for name in ("pi4", "orin-nano"):
        root = board_tree(tmp_path / name, name)
        device_install(root)
        first = snapshot(root)
        again = device_install(root).stdout
        assert snapshot(root) == first
        assert not re.search(r"^install: (installed|made|removed) ", again, re.M), again


def test_an_upgrade_replaces_the_unit_and_keeps_the_edited_config_and_state(tmp_path):
    root = board_tree(tmp_path, "pi4")
    device_install(root)
    (root / CONF).write_text("device: {id: porch}\n")
    (root / STATE / "outbox.db").write_bytes(b"queued results")
    (root / UNIT).write_text("[Service]\nExecStart=/old\n")
    out = device_install(root).stdout
    assert (root / CONF).read_text() == "device: {id: porch}\n"
    assert (root / STATE / "outbox.db").read_bytes() == b"queued results"
    assert (root / UNIT).read_bytes() == (REPO / "systemd/catdog-agent.service").read_bytes()
    assert "kept /etc/catdog-agent/agent.yaml" in out


def test_a_board_that_is_no_longer_a_jetson_loses_the_drop_in(tmp_path):
    root = board_tree(tmp_path, "orin-nano")
    device_install(root)
    device_install(root, "--board", "other")
    assert not (root / DROPIN).exists()


def test_uninstall_removes_the_service_and_the_venv_but_keeps_config_state_and_local_overrides(tmp_path):
    root = board_tree(tmp_path, "orin-nano")
    device_install(root)
    (root / STATE / "outbox.db").write_bytes(b"x")
    override = root / "etc/systemd/system/catdog-agent.service.d/override.conf"
    override.write_text("[Service]\nEnvironment=X=1\n")
    out = device_install(root, "--uninstall").stdout
    for gone in (UNIT, DROPIN, LINK, SYSUSERS, "opt/catdog-agent"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert (root / CONF).exists() and (root / STATE / "outbox.db").exists() and override.exists()
    assert would_run(out, "systemctl disable") == ["systemctl disable --now catdog-agent.service"]
    assert would_run(out, "userdel") == []


def test_purge_also_removes_config_state_overrides_and_the_user(tmp_path):
    root = board_tree(tmp_path, "pi4")
    device_install(root)
    (root / "etc/systemd/system/catdog-agent.service.d").mkdir()
    (root / "etc/systemd/system/catdog-agent.service.d/override.conf").write_text("[Service]\n")
    out = device_install(root, "--uninstall", "--purge").stdout
    for gone in ("etc/catdog-agent", STATE, "etc/systemd/system/catdog-agent.service.d", UNIT, "opt/catdog-agent"):
        assert not (root / gone).exists(), gone
    assert would_run(out, "userdel") == ["userdel catdog-agent"]


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    root = board_tree(tmp_path, "orin-nano")
    before = snapshot(root)
    out = device_install(root, "--dry-run").stdout
    assert snapshot(root) == before
    for action in (f"install -D -m 0644 {REPO}/systemd/catdog-agent.service {root}/{UNIT}",
                   f"install -D -m 0644 {REPO}/systemd/jetson.conf {root}/{DROPIN}",
                   f"install -D -m 0640 {expected_example('jetson')} {root}/{CONF}",
                   f"install -d -m 0750 {root}/{STATE}",
                   f"ln -sfn /opt/catdog-agent/venv/bin/catdog-agent {root}/{LINK}",
                   "apt-get install", "systemd-sysusers", f"{PYTHON} -m venv", "systemctl enable"):
        assert would_run(out, action), action
    assert "constraint: numpy<2" in out
    device_install(root)
    installed = snapshot(root)
    device_install(root, "--uninstall", "--purge", "--dry-run")
    assert snapshot(root) == installed


def test_root_without_no_system_is_refused_so_a_test_can_never_touch_this_machine(tmp_path):
    proc = install(tmp_path, check=False)
    assert proc.returncode != 0 and "--root needs --no-system" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failing_step_inside_an_and_list_still_stops_the_install(tmp_path):
    """bash ignores `set -e` inside `step && changed=1`: a failed pip must not be reported as installed."""
    script = f"""
set -euo pipefail
source {REPO / 'install.sh'}
DRY_RUN=0 NO_SYSTEM=0
step() {{ sys_do false; echo "step went on after a failure"; }}
step && echo "reported as changed"
echo "install finished"
"""
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "failed: false" in proc.stderr
    assert "went on" not in proc.stdout and "install finished" not in proc.stdout
