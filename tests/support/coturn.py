"""A real coturn (Debian ``coturn``) on a free loopback port with ``use-auth-secret``: it checks the
TURN REST credentials the gateway hands out (started and stopped here)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.launcher import free_port

TURNSERVER = shutil.which("turnserver")
REALM = "stagecast.test"


def require_coturn() -> str:
    if TURNSERVER is None:
        pytest.skip("coturn is not installed (scripts/bootstrap installs it as root)")
    return TURNSERVER


@dataclass(frozen=True)
class Coturn:
    port: int
    secret: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _stun_binding_answered(port: int) -> bool:
    """A STUN Binding request (RFC 5389) answered: the server is up."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"w4turnready!"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data = s.recv(2048)
        except OSError:
            return False
    return data[:2] == b"\x01\x01"


@contextmanager
def run_coturn(secret: str, timeout: float = 10.0) -> Iterator[Coturn]:
    """coturn on 127.0.0.1 relaying from 127.0.0.1. ``--allow-loopback-peers``: the gateway is
    on this machine (a production server denies loopback and private peers, see
    deploy/README.md)."""
    exe = require_coturn()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="coturn-") as tmp:
        work = Path(tmp)
        server = Coturn(port, secret, work / "turn.log")
        argv = [
            exe,
            "-n",  # no configuration file: everything is here
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            "--min-port=49152",
            "--max-port=65535",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            f"--realm={REALM}",
            "--fingerprint",
            "--allow-loopback-peers",
            "--no-multicast-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-tcp-relay",
            f"--pidfile={work / 'turn.pid'}",
            f"--userdb={work / 'turn.db'}",
            f"--log-file={server.log}",
            "--simple-log",
            "--verbose",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while not _stun_binding_answered(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"coturn did not start:\n{server.log_text()[-2000:]}")
                time.sleep(0.05)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
