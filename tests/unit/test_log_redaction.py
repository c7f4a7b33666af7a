"""Credentials never reach a log line: tokens in query strings (``?access_token=`` of WHIP/WHEP,
``?token=`` of HLS), Bearer values, passwords in URLs and RTMP stream keys are redacted (the
access log of a real ``stagecast serve``: tests/live/test_log_redaction.py)."""

from __future__ import annotations

import logging

import httpx
import pytest

from relay.server.logs import REDACTED, RedactCredentials, configure_logging, redact


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


def test_url_objects_in_arguments_are_redacted_and_httpx_is_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """httpx logs each request with an ``httpx.URL`` argument, not a str: a multi-worker front
    forwarding ``POST /whep/r?access_token=...`` printed the token (review finding 2)."""
    configure_logging("info", "text")
    try:
        url = httpx.URL("http://127.0.0.1:9/whep/r?access_token=s3cr3t")
        logging.getLogger("stagecast.test").info("HTTP Request: %s %s %d", "POST", url, 201)
        logging.getLogger("httpx").info("HTTP Request: %s %s", "POST", url)
        err = capsys.readouterr().err
        assert "s3cr3t" not in err and REDACTED in err and " 201" in err
        assert "httpx" not in err  # below WARNING: not written at all
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger("httpx").setLevel(logging.NOTSET)
