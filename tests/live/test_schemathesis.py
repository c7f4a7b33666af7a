"""Property-based run of the whole OpenAPI schema against a real gateway process: no 500s."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from gateway.launcher import gateway_process

pytestmark = pytest.mark.slow

KEY = "operator-key-for-fuzzing-0123456789"


@pytest.mark.timeout(240)
def test_no_server_errors_anywhere(tmp_path: Path) -> None:
    env = {"STAGECAST_API__OPERATOR_KEY": KEY, "STAGECAST_LOG_LEVEL": "warning"}
    with tempfile.TemporaryFile() as errors:
        with gateway_process(env, stderr=errors) as (base, _):
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
                cwd=tmp_path,
            )
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
            assert "passed" in run.stdout
            assert httpx.get(base + "/healthz", timeout=5).status_code == 200  # still serving
        errors.seek(0)
        assert b"Traceback" not in errors.read()
