"""The real ``stagecast serve`` process writes no credential into its logs: uvicorn's access log
wrote ``?access_token=`` (WHIP/WHEP) and ``?token=`` (HLS) in full."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.launcher import free_port, free_udp_port
from tests.support.server import SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_served_process_logs_no_token(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": "operator-key-for-the-log-test",
        "STAGECAST_LOG_LEVEL": "info",
    }
    out = tmp_path / "serve.log"
    with out.open("wb") as sink:
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
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, out.read_text()
                time.sleep(0.1)
            token = "eyJhbGciOiJIUzI1NiJ9.leaky-payload.leaky-signature"
            with httpx.Client(base_url=base, timeout=5) as c:
                c.post(
                    f"/whep/room?access_token={token}",
                    content=b"v=0",
                    headers={"Content-Type": "application/sdp"},
                )
                c.head(f"/whep/room?access_token={token}")
                c.get(f"/hls/room/index.m3u8?token={token}")
                c.get("/v1/rooms?key=operator-key-for-the-log-test")
                c.get("/v1/rooms", headers={"Authorization": f"Bearer {token}"})
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(15)
    text = out.read_text()
    assert "/whep/room?access_token=" in text, text  # the access log ran, and was redacted
    assert "leaky" not in text, text
    # a configured key and secret are the operator's: serve prints neither the key nor a token
    assert "operator-key-for-the-log-test" not in text, text
    assert "anchor token:" not in text and "#token=" not in text, text
