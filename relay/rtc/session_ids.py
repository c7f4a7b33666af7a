"""Identifiers a WebRTC session gets when it is created: its URL id and its first ETag.

They live beside the sessions (here, not in relay/http) so that the session services need no web
framework; the HTTP layer only puts them in headers.
"""

from __future__ import annotations

import secrets


def new_session_id() -> str:
    """Unguessable resource id (128 bits) for a session URL."""
    return secrets.token_urlsafe(16)


def new_etag() -> str:
    return f'"{secrets.token_hex(8)}"'
