"""A throw-away local mosquitto on a free loopback port, for the demo and the tests (never the daemon).

With ``tls=TlsFiles(...)`` it also opens a TLS listener on ``tls_port`` (``port`` stays plain MQTT), optionally
demanding a client certificate signed by ``TlsFiles.cafile`` (mutual TLS).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_HINT = "mosquitto is not installed: run ./install.sh --dev (or: sudo apt-get install mosquitto)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the broker's TLS listener; ``require_certificate``: clients need a cert signed by ``cafile``."""

    cafile: str | Path
    certfile: str | Path
    keyfile: str | Path
    require_certificate: bool = False

    def listener_lines(self, port: int) -> list[str]:
        lines = [f"listener {port} 127.0.0.1"]
        for option in ("cafile", "certfile", "keyfile"):
            path = Path(getattr(self, option)).resolve()  # mosquitto would resolve a relative path from its cwd
            if not path.is_file():
                raise FileNotFoundError(f"TlsFiles.{option}: no such file: {path}")
            lines.append(f"{option} {path}")
        return [*lines, f"require_certificate {'true' if self.require_certificate else 'false'}"]


class LocalBroker:
    """mosquitto bound to 127.0.0.1:<port> (and :<tls_port> with ``tls``); ``restart()`` keeps the ports."""

    def __init__(self, port: int | None = None, persistence: bool = False, users: dict[str, str] | None = None,
                 tls: TlsFiles | None = None, tls_port: int | None = None):
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError(MOSQUITTO_HINT)
        self.binary = binary
        self.port = port or free_port()
        self.tls = tls
        self.tls_port: int | None = None
        tls_lines: list[str] = []
        if tls is not None:
            if tls_port is not None and tls_port == self.port:
                raise ValueError(f"tls_port must differ from port {self.port}")
            self.tls_port = tls_port or free_port()
            while self.tls_port == self.port:  # two free_port() calls may hand out the same number
                self.tls_port = free_port()
            tls_lines = tls.listener_lines(self.tls_port)  # checks the files before anything is created
        self.workdir = Path(tempfile.mkdtemp(prefix="catdog-mosquitto-"))
        self.conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}",
                 f"persistence {'true' if persistence else 'false'}",
                 # Saved after every change, so that even a SIGKILLed broker keeps sessions and queued messages.
                 "autosave_on_changes true", "autosave_interval 1",
                 f"persistence_location {self.workdir}/", "log_dest stderr", "log_type error",
                 "log_type warning",
                 # Started as root, mosquitto would switch to user "mosquitto", who cannot read our temp dir.
                 f"user {pwd.getpwuid(os.geteuid()).pw_name}"]
        if users:
            lines.append(f"password_file {self._write_passwords(users)}")
        self.conf.write_text("\n".join(lines + tls_lines) + "\n")  # listener options follow their `listener`
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
                said = (self.workdir / "mosquitto.log").read_text(errors="replace").strip()
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {said}")
            try:
                for port in self.ports:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        ports = ", ".join(map(str, self.ports))
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1 port(s) {ports} within {timeout} s")

    @property
    def ports(self) -> list[int]:
        return [self.port] if self.tls_port is None else [self.port, self.tls_port]

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
