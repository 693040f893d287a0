"""A throw-away local mosquitto on a free loopback port, for the demo and the tests (never the daemon)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO_HINT = "mosquitto is not installed: run ./install.sh --dev (or: sudo apt-get install mosquitto)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class LocalBroker:
    """mosquitto bound to 127.0.0.1:<port>; ``restart()`` keeps the port (for outage tests)."""

    def __init__(self, port: int | None = None, persistence: bool = False, users: dict[str, str] | None = None):
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError(MOSQUITTO_HINT)
        self.binary = binary
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="catdog-mosquitto-"))
        self.conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}",
                 f"persistence {'true' if persistence else 'false'}",
                 f"persistence_location {self.workdir}/", "log_dest stderr", "log_type error",
                 "log_type warning",
                 # Started as root, mosquitto would switch to user "mosquitto", who cannot read our temp dir.
                 f"user {pwd.getpwuid(os.geteuid()).pw_name}"]
        if users:
            lines.append(f"password_file {self._write_passwords(users)}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def _write_passwords(self, users: dict[str, str]) -> Path:
        path = self.workdir / "passwords"
        path.touch(mode=0o600)
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for user, password in users.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
        return path

    def start(self, timeout: float = 10.0) -> LocalBroker:
        with open(self.workdir / "mosquitto.log", "ab") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                            stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {log.strip()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout} s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
