"""Property-based run of the whole OpenAPI schema against a real gateway process (and an edge
relay process): no 500s, and every answer is one the document describes (status code, content
type, body schema: errors are application/problem+json Problems)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from gateway.launcher import free_port, free_udp_port, gateway_process, stop_process, wait_healthy

pytestmark = pytest.mark.slow

KEY = "operator-key-for-fuzzing-0123456789"
SECRET = "schemathesis-secret-" + "s" * 32
ENV = {
    "STAGECAST_API__OPERATOR_KEY": KEY,
    "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
    "STAGECAST_LOG_LEVEL": "warning",
    # past the signalling rate limit, so that WHIP/WHEP POSTs reach their handlers
    "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
    "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
}


def schemathesis(base: str, cwd: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            base + "/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
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
        cwd=cwd,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200  # still serving


@pytest.mark.timeout(240)
def test_no_server_errors_and_every_answer_documented(tmp_path: Path) -> None:
    with tempfile.TemporaryFile() as errors:
        with gateway_process(ENV, stderr=errors) as (base, _):
            schemathesis(base, tmp_path)
        errors.seek(0)
        assert b"Traceback" not in errors.read()


@pytest.mark.timeout(240)
def test_edge_answers_as_its_document_says(tmp_path: Path) -> None:
    with tempfile.TemporaryFile() as errors, gateway_process(ENV) as (origin, _):
        port = free_port()
        edge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "relay",
                "--upstream",
                origin,
                "--port",
                str(port),
                "--udp-port",
                str(free_udp_port()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, **ENV, "STAGECAST_WORKERS": "1"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base)
            schemathesis(base, tmp_path)
        finally:
            stop_process(edge)
        errors.seek(0)
        assert b"Traceback" not in errors.read()
