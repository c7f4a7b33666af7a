"""Credentials never reach a log line: tokens in query strings (``?access_token=`` of WHIP/WHEP,
``?token=`` of HLS), Bearer values, passwords in URLs and RTMP stream keys are redacted, in the
access log of the real ``stagecast serve`` process and in every other line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.launcher import free_port
from gateway.logs import REDACTED, RedactCredentials, configure_logging, redact
from tests.server import SECRET

ROOT = Path(__file__).resolve().parent.parent


def test_redact_keeps_the_line_and_drops_the_secret() -> None:
    cases = {
        "GET /whep/r?access_token=eyJhbGc.eyJzdWIi.sig HTTP/1.1": "eyJhbGc",
        "/hls/r/index.m3u8?_HLS_msn=3&token=abc.def.ghi&_HLS_part=1": "abc.def.ghi",
        "/x?key=operator-key-123&y=1": "operator-key-123",
        "Authorization: Bearer abc.def-ghi_jkl": "abc.def-ghi_jkl",
        "webhook to https://user:hunter2@hooks.example.net/x given up": "hunter2",
        "Output #0, flv, to 'rtmp://cdn.example.net:1935/live/sk_live_42':": "sk_live_42",
        "rtmps://live.example.com/app/streamkey?x=1 refused": "streamkey",
    }
    for line, secret in cases.items():
        out = redact(line)
        assert secret not in out and REDACTED in out, out
    # what is not a credential stays
    assert redact("/whep/r?rendition=360p&anchor=abc") == "/whep/r?rendition=360p&anchor=abc"
    assert "_HLS_msn=3" in redact("/hls/r/index.m3u8?_HLS_msn=3&token=t")
    # a record's arguments are redacted before any handler formats them
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/whip/r?access_token=s3cr3t", "1.1", 201),
        None,
    )
    assert RedactCredentials().filter(record)
    assert "s3cr3t" not in record.getMessage() and "/whip/r?access_token=" in record.getMessage()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_redacted_too(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An exception's message may carry the URL it failed on (httpx puts it there)."""
    configure_logging("info", fmt)
    try:
        try:
            raise RuntimeError("Client error '401' for url 'http://o/whep/r?access_token=s3cr3t'")
        except RuntimeError:
            logging.getLogger("stagecast.test").exception("pull failed")
        err = capsys.readouterr().err
        assert "pull failed" in err and "RuntimeError" in err
        assert "s3cr3t" not in err and REDACTED in err
    finally:
        logging.getLogger().handlers.clear()


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
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
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
    assert (
        "operator-key-for-the-log-test" not in text.split("operator key:", 1)[1].split("\n", 1)[1]
    )
