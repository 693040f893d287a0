"""The systemd unit, its Jetson drop-in and the sysusers file, checked by systemd's own tools.

``systemd-analyze verify`` exits 0 on unknown keys and on values it drops (an inline comment turns
``PrivateTmp=yes  # x`` into a warning and no private /tmp), so any output is a failure here. The unit
is verified where install.sh puts it: install.sh --root builds the tree, the tree gets a copy of this
machine's unit directory (for sysinit.target and friends) and an executable at ExecStart's path,
because verify --root checks that the command exists inside the tree.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, agent_command, agent_config, device_for

from agent.daemon import EXIT_CONFIG, SHUTDOWN_BUDGET_S

UNIT_NAME = "catdog-agent.service"
UNIT_FILE = REPO / "systemd" / UNIT_NAME
SYSUSERS_FILE = REPO / "systemd" / "catdog-agent.sysusers"
INSTALLED_UNIT = Path("etc/systemd/system") / UNIT_NAME
INSTALLED_DROPIN = Path("etc/systemd/system/catdog-agent.service.d/jetson.conf")
# The exposure figures reached (systemd 252's scale: 0 = locked down, 10 = fully exposed). Lower them
# when you harden further; a change that raises them has to say why.
EXPOSURE = {"pi": 1.5, "jetson": 1.8}

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian package systemd)")


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order."""
    section, found = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def values(key: str, text: str | None = None) -> list[str]:
    return [v for _, k, v in directives(text if text is not None else UNIT_FILE.read_text()) if k == key]


def system_unit_dir() -> Path:
    for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(candidate, "sysinit.target").exists():
            return Path(candidate)
    pytest.skip("no systemd unit directory with sysinit.target on this machine")


def installed_tree(root: Path, board: str, executable: bool = True) -> Path:
    """install.sh --root for ``board`` (system steps stubbed), plus what verify needs from a real system."""
    root.mkdir(exist_ok=True)
    subprocess.run(["bash", str(REPO / "install.sh"), "--root", str(root), "--no-system", "--board", board,
                    "--arch", "arm64"], check=True, capture_output=True, timeout=60)
    shutil.copytree(system_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    if executable:
        for directive in ("ExecStart", "ExecReload"):
            command = root / values(directive)[0].split()[0].lstrip("/")
            command.parent.mkdir(parents=True, exist_ok=True)
            command.write_text("#!/bin/sh\n")
            command.chmod(0o755)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=30)


def verify(root: Path) -> str:
    proc = analyze("verify", "--man=no", f"--root={root}", UNIT_NAME)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f"\n(exit {proc.returncode})")


def security(root: Path) -> str:
    proc = analyze("security", "--offline=yes", f"--root={root}", "--no-pager", UNIT_NAME)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def exposure(report: str) -> float:
    match = re.search(r"Overall exposure level for catdog-agent\.service: (\d+\.\d)", report)
    assert match, report
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("board", ["pi", "jetson"])
def test_systemd_analyze_verify_prints_nothing_for_the_installed_unit_and_drop_in(tmp_path, board):
    root = installed_tree(tmp_path, board)
    assert (root / INSTALLED_DROPIN).exists() == (board == "jetson")
    assert verify(root) == ""


@needs_analyze
@pytest.mark.parametrize(
    ("damage", "expected"),
    [("inline-comment", "Failed to parse boolean value"), ("drop-in-typo", "Unknown key"),
     ("no-executable", "is not executable")],
)
def test_the_verify_harness_reports_what_systemd_would_silently_ignore(tmp_path, damage, expected):
    root = installed_tree(tmp_path, "jetson", executable=damage != "no-executable")
    if damage == "inline-comment":
        unit = root / INSTALLED_UNIT
        unit.write_text(unit.read_text().replace("PrivateTmp=yes", "PrivateTmp=yes  # not a comment"))
    elif damage == "drop-in-typo":
        dropin = root / INSTALLED_DROPIN
        dropin.write_text(dropin.read_text() + "PrivateTmpp=no\n")
    assert expected in verify(root)


@needs_analyze
@pytest.mark.parametrize("board", ["pi", "jetson"])
def test_security_exposure_stays_at_or_below_the_figure_reached(tmp_path, board):
    report = security(installed_tree(tmp_path, board, executable=False))
    assert exposure(report) <= EXPOSURE[board], report


@needs_analyze
def test_the_jetson_drop_in_opens_tmp_and_devices_and_nothing_else(tmp_path):
    def failed(report: str) -> set[str]:
        return {line.split()[1] for line in report.splitlines() if line.startswith("✗")}

    pi_report = security(installed_tree(tmp_path / "pi", "pi", executable=False))
    jetson_report = security(installed_tree(tmp_path / "jetson", "jetson", executable=False))
    pi, jetson = failed(pi_report), failed(jetson_report)
    assert jetson - pi == {"PrivateTmp=", "MemoryDenyWriteExecute="}
    assert "PrivateTmp=" not in pi and "MemoryDenyWriteExecute=" not in pi
    assert "char-video4linux:rw" in pi_report and "Service has no device ACL" in jetson_report


def test_unit_has_no_inline_comments_and_no_setting_twice_by_accident():
    for section, key, value in directives(UNIT_FILE.read_text() + (REPO / "systemd/jetson.conf").read_text()):
        assert "#" not in value and ";" not in value, f"[{section}] {key}={value}: comments go on their own line"
    repeatable = {"DeviceAllow", "SystemCallFilter"}
    keys = [(s, k) for s, k, _ in directives(UNIT_FILE.read_text()) if k not in repeatable]
    assert len(keys) == len(set(keys))


def test_unit_is_a_watched_notify_service_that_restarts_but_not_on_a_config_error():
    unit = UNIT_FILE.read_text()
    assert values("Type") == ["notify"] and values("NotifyAccess") == ["main"]
    assert values("WatchdogSec") == ["30s"]
    assert values("Restart") == ["on-failure"] and values("RestartSec") == ["5s"]
    assert values("RestartPreventExitStatus") == [str(EXIT_CONFIG)]
    assert values("StartLimitIntervalSec") == ["0"], "an unattended device never gives up restarting"
    assert float(values("TimeoutStopSec")[0].rstrip("s")) > SHUTDOWN_BUDGET_S
    assert ("Unit", "Wants", "network-online.target") in directives(unit)
    assert set(values("After")[0].split()) >= {"network-online.target", "time-sync.target"}


def test_unit_keeps_camera_devices_reachable_under_its_hardening():
    assert values("DevicePolicy") == ["closed"]
    assert values("DeviceAllow") == ["char-video4linux rw", "char-media rw", "char-dma_heap rw"]
    assert not values("PrivateDevices") and not values("DynamicUser") and not values("PrivateUsers")
    assert values("SupplementaryGroups") == ["video"]
    assert set(values("RestrictAddressFamilies")[0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert values("CapabilityBoundingSet") == [""] and values("ProtectSystem") == ["strict"]
    assert values("UMask") == ["0027"]


def test_unit_runs_the_command_install_sh_installs_as_the_user_sysusers_creates(tmp_path):
    root = installed_tree(tmp_path, "pi", executable=False)
    command, *args = values("ExecStart")[0].split()
    assert "/" + str((root / "usr/local/bin/catdog-agent").readlink()).lstrip("/") == command
    assert args == ["run", "--config", "/etc/catdog-agent/agent.yaml"]
    user_lines = [line.split() for line in SYSUSERS_FILE.read_text().splitlines() if line[:2] in ("u ", "m ")]
    assert user_lines[0][:2] == ["u", values("User")[0]] and values("Group") == values("User")
    assert user_lines[1] == ["m", values("User")[0], "video"]
    assert values("ConfigurationDirectory") == values("StateDirectory") == ["catdog-agent"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_file_creates_the_system_user_in_group_video_once(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("video:x:44:pi\n")
    run = ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS_FILE)]
    subprocess.run(run, check=True, capture_output=True, timeout=30)
    (entry,) = [line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("catdog-agent:")]
    name, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/catdog-agent" and shell.endswith("nologin")
    assert "video:x:44:catdog-agent,pi" in (tmp_path / "etc/group").read_text().splitlines()
    files = {p.name: p.read_bytes() for p in (tmp_path / "etc").iterdir()}
    subprocess.run(run, check=True, capture_output=True, timeout=30)
    assert {p.name: p.read_bytes() for p in (tmp_path / "etc").iterdir()} == files


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_systemctl_enable_on_the_installed_tree_wires_the_unit_into_multi_user_target(tmp_path):
    root = installed_tree(tmp_path, "pi", executable=False)
    subprocess.run(["systemctl", f"--root={root}", "enable", UNIT_NAME], check=True, capture_output=True, timeout=30)
    link = root / "etc/systemd/system/multi-user.target.wants" / UNIT_NAME
    assert link.is_symlink() and str(link.readlink()) == "/" + str(INSTALLED_UNIT)


# The unit's SystemCallFilter=, SystemCallErrorNumber=EPERM and MemoryDenyWriteExecute=yes rebuilt with
# libseccomp the way systemd loads them (an allow-list filter, then a W^X filter; the kernel applies the
# strictest answer), so the agent can run under them without a service manager. Needs the system
# Python's seccomp module (Debian: python3-seccomp).
SANDBOX = """
import errno, json, os, sys
import seccomp
allowed, deny_wx = json.load(open(sys.argv[1]))
if deny_wx:  # loaded first: the allow-list forbids seccomp() itself
    wx, x, shm_exec = 0x2 | 0x4, 0x4, 0o100000
    no_wx = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name, index, mask in (("mmap", 2, wx), ("mprotect", 2, x), ("pkey_mprotect", 2, x), ("shmat", 2, shm_exec)):
        no_wx.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(index, seccomp.MASKED_EQ, mask, mask))
    no_wx.load()
allow_list = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in allowed:
    try:
        allow_list.add_rule(seccomp.ALLOW, name)
    except Exception:
        pass  # not a system call on this architecture
allow_list.load()
os.execv(sys.argv[2], sys.argv[2:])
"""
PROBE = """
import mmap, os
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx-allowed")
except OSError:
    print("wx-denied")
try:
    os.setpriority(os.PRIO_PROCESS, 0, 1)
    print("setpriority-allowed")
except OSError:
    print("setpriority-denied")
"""


def syscall_names(group: str) -> set[str]:
    out = analyze("syscall-filter", group).stdout.splitlines()[1:]
    names: set[str] = set()
    for entry in (line.strip() for line in out):
        if entry and not entry.startswith("#"):
            names |= syscall_names(entry) if entry.startswith("@") else {entry}
    return names


def unit_sandbox(tmp_path: Path) -> list[str]:
    """The command prefix that runs a program under the unit's system-call rules."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    probe = subprocess.run([system_python or "python3", "-c", "import seccomp"], capture_output=True)
    if system_python is None or probe.returncode != 0:
        pytest.skip("the system Python has no seccomp module (Debian: apt-get install python3-seccomp)")
    assert values("SystemCallErrorNumber") == ["EPERM"], "without it a filtered call kills the agent"
    allow, *denies = values("SystemCallFilter")
    allowed = set().union(*(syscall_names(g) for g in allow.split()))
    for deny in denies:
        allowed -= set().union(*(syscall_names(g) for g in deny.lstrip("~").split()))
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([sorted(allowed), values("MemoryDenyWriteExecute") == ["yes"]]))
    return [system_python, "-c", SANDBOX, str(rules)]


@needs_analyze
def test_the_agent_runs_the_whole_pipeline_under_the_units_system_call_filter_and_w_xor_x(
        tmp_path, photos, devserver, broker, collector):
    sandbox = unit_sandbox(tmp_path)
    probe = subprocess.run([*sandbox, sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30)
    assert probe.stdout.split() == ["wx-denied", "setpriority-denied"], probe.stderr
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = subprocess.run([*sandbox, *agent_command("run", "--config", str(config))], capture_output=True,
                          text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert collector.wait_for(lambda: len(collector.results()) == 4), proc.stderr
    assert {r["device"] for r in collector.results()} == {device_for(tmp_path)}
