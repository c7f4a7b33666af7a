"""Operator authentication for the ``/v1`` API: one key, compared in constant time."""

from __future__ import annotations

import secrets

from fastapi import Header

from relay.errors import Unauthorized


class OperatorAuth:
    """FastAPI dependency: accepts ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""

    def __init__(self, key: str) -> None:
        if len(key) < 16:
            raise ValueError("operator key must be at least 16 characters")
        self._key = key.encode()

    def check(self, presented: str | None) -> None:
        if not presented or not secrets.compare_digest(presented.encode(), self._key):
            raise Unauthorized("a valid operator key is required")

    async def __call__(
        self,
        authorization: str | None = Header(default=None),
        x_api_key: str | None = Header(default=None),
    ) -> None:
        presented = x_api_key
        if presented is None and authorization:
            scheme, _, value = authorization.partition(" ")
            presented = value.strip() if scheme.lower() == "bearer" else None
        self.check(presented)
