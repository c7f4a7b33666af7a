"""Property-based run of the whole OpenAPI schema against a real gateway process: no 500s."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server import free_port

KEY = "operator-key-for-fuzzing-0123456789"


@pytest.mark.timeout(240)
def test_no_server_errors_anywhere(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "STAGECAST_API__OPERATOR_KEY": KEY, "STAGECAST_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                base + "/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "10",
                "--seed",
                "7",
                "--generation-database",
                "none",
                "--request-timeout",
                "10",
                "-H",
                f"X-API-Key: {KEY}",
            ],
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "passed" in run.stdout
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200  # still serving
    finally:
        server.terminate()
        server.wait(15)
    assert b"Traceback" not in (server.stderr.read() if server.stderr else b"")
