"""Logging setup: plain text for a terminal, JSON lines (with room/session ids) for collectors;
credentials redacted from every line."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from typing import Any

CONTEXT_FIELDS = ("room", "session", "subject", "event")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactCredentials())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request it makes at INFO (a worker's forwarded WHEP POST, its /readyz
    # polls, pulls, webhooks): noise at best, a URL with a token at worst
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


REDACTED = "REDACTED"
_SECRET_PARAMS = "access_token|token|key|api_key|apikey|secret|password|sig|signature"
_PATTERNS = (
    # ?access_token=... (WHIP/WHEP), ?token=... (HLS), ?key=..., in any URL or request line
    (re.compile(rf"(?i)([?&](?:{_SECRET_PARAMS})=)[^&\s\"'#]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"), rf"\g<1>{REDACTED}"),
    # user:password@ in a URL (webhooks, RTMP targets)
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:)[^/\s@'\"]+@"), rf"\g<1>{REDACTED}@"),
    # an RTMP target's stream key: the path after the application
    (re.compile(r"(?i)(\brtmps?://[^/\s'\"]+/[^/\s'\"?]+/)[^\s'\"]+"), rf"\g<1>{REDACTED}"),
)


def _redacted(value: Any) -> Any:
    """A log argument as it will print, redacted; numbers stay numbers (for %d)."""
    if value is None or isinstance(value, (int, float)):
        return value
    return redact(value if isinstance(value, str) else str(value))


def redact(text: str) -> str:
    """``text`` without the credentials a log line may carry."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactCredentials(logging.Filter):
    """Redacts a record's message and arguments before any handler formats it (uvicorn's access
    log puts the request target, query string and all, in its arguments; httpx puts a URL
    object there): every argument that is not a number is formatted and redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redacted(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _redacted(v) for k, v in args.items()}
        if record.exc_info and not record.exc_text:
            # formatters reuse exc_text: an exception's message may carry the URL it failed on
            record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info))
        return True


_TRACEBACKS = logging.Formatter()


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging setup (its loggers do not propagate to ours) with credentials
    redacted from its lines: the access log writes each request target, query string and all."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactCredentials}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return config
