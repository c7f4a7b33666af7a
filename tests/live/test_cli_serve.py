"""The CLI as a process: `stagecast token`, and `serve` over HTTP and HTTPS."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.launcher import free_port, free_udp_port, wait_healthy
from relay.auth.tokens import TokenAuthority


def test_token_command(tmp_path: Path) -> None:
    env = {**os.environ, "STAGECAST_AUTH__TOKEN_SECRET": "k" * 40}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "token",
            "--room",
            "r",
            "--role",
            "audience",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    claims = TokenAuthority("k" * 40).verify(out.stdout.strip(), room="r", role="audience")
    assert claims.subject == "cli"
    env.pop("STAGECAST_AUTH__TOKEN_SECRET")
    fail = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "token", "--room", "r", "--role", "anchor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert fail.returncode == 2 and "token_secret" in fail.stderr


def test_serve_prints_urls_and_serves() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--udp-port",
            str(free_udp_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "API docs" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/whip/demo" in text
        assert f"http://127.0.0.1:{port}/whep/demo" in text
        assert re.search(r"anchor token: \S+\.\S+\.\S+", text)
        wait_healthy(f"http://127.0.0.1:{port}")
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(15) in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown


def test_serve_over_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    """``stagecast cert`` then ``serve`` with it: printed URLs are https, a WHIP publish over TLS
    (certificate verified for 127.0.0.1) gets its 201 and its DELETE."""
    made = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cert", "--name", "127.0.0.1", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert cert.is_file() and key.stat().st_mode & 0o777 == 0o600
    port = free_port()
    env = {**os.environ, "STAGECAST_TLS_CERTFILE": str(cert), "STAGECAST_TLS_KEYFILE": str(key)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--udp-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base = f"https://127.0.0.1:{port}"
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "API docs" not in "".join(lines):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        assert f"{base}/whip/demo" in text and f"{base}/publish?room=demo" in text
        token = re.search(r"anchor token: (\S+)", text)
        assert token
        with httpx.Client(
            base_url=base, verify=ssl.create_default_context(cafile=str(cert)), timeout=5
        ) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "no HTTPS healthz"
                time.sleep(0.2)
            headers = {"Authorization": f"Bearer {token.group(1)}"}
            created = client.post(
                "/whip/demo",
                content=asyncio.run(_offer()),
                headers={**headers, "Content-Type": "application/sdp"},
            )
            assert created.status_code == 201, created.text
            assert client.delete(created.headers["location"], headers=headers).status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
            httpx.get(f"{base}/healthz", timeout=5)
    finally:
        proc.terminate()
        assert proc.wait(15) in (0, -15)


async def _offer() -> str:
    from gateway.synthetic import StampedVideoTrack
    from relay.rtc.peer import close_quietly, rtc_configuration

    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver(StampedVideoTrack(320, 180, 30), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await close_quietly(pc)


def test_serve_refuses_an_unusable_certificate_clearly(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    env = {
        **os.environ,
        "STAGECAST_TLS_CERTFILE": str(tmp_path / "cert.pem"),
        "STAGECAST_TLS_KEYFILE": str(tmp_path / "missing.pem"),
    }
    for command in (["serve"], ["relay", "--upstream", "http://127.0.0.1:9"]):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                *command,
                "--port",
                str(free_port()),
                "--udp-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert done.returncode == 2
        assert "cannot serve HTTPS" in done.stderr and "Traceback" not in done.stderr
