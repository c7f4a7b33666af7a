"""Operator authentication for the ``/v1`` API: one key, compared in constant time (the
dependency lives in relay/auth/keys.py, where an edge uses it for its own ops views)."""

from __future__ import annotations

from relay.auth.keys import KeyAuth as OperatorAuth

__all__ = ["OperatorAuth"]
