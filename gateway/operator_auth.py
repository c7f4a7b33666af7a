"""Operator authentication for the ``/v1`` API: one key, compared in constant time (the
dependency lives in relay/http/keys.py, where an edge uses it for its own ops views)."""

from __future__ import annotations

from relay.http.keys import KeyAuth as OperatorAuth

__all__ = ["OperatorAuth"]
