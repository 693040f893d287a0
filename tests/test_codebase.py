"""Rules the codebase keeps: lint clean, small modules, README in step with the schema, daemon free of dev code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from agent.configdoc import render_reference

MAX_MODULE_LINES = 400


def test_readme_configuration_reference_matches_the_schema():
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert table == render_reference(), "README is stale: python -m agent.configdoc and paste between the markers"


def test_every_exit_code_is_documented():
    readme = (REPO / "README.md").read_text()
    for code in ("| 0 |", "| 1 |", "| 69 |", "| 78 |"):
        assert code in readme


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment")
    proc = subprocess.run([str(ruff), "check", "agent", "tests", "bench"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "agent").rglob("*.py")))
def test_modules_stay_small(module):
    assert len((REPO / module).read_text().splitlines()) <= MAX_MODULE_LINES


def test_the_daemon_never_imports_the_stand_ins():
    code = ("import sys, agent.cli, agent.daemon, agent.checks, agent.predictcmd; "
            "print(sorted(m for m in sys.modules if m.startswith('agent.dev') or m in ('onnxruntime', 'cv2')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_shell_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (CI installs it)")
    proc = subprocess.run(["shellcheck", "install.sh", ".ci/run"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_mypy_is_clean():
    mypy = Path(sys.executable).parent / "mypy"
    if not mypy.exists():
        pytest.skip("mypy is not installed in this environment")
    proc = subprocess.run([str(mypy), "agent"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
