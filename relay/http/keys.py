"""Static API keys (the operator key, a metrics scrape token), compared in constant time."""

from __future__ import annotations

import secrets

from fastapi import Header

from relay.errors import Unauthorized


class KeyAuth:
    """FastAPI dependency: accepts ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``;
    ``also``: further keys accepted (e.g. the metrics scrape token)."""

    def __init__(self, key: str, *also: str, what: str = "operator key") -> None:
        keys = (key, *(k for k in also if k))
        if any(len(k) < 16 for k in keys):
            raise ValueError(f"{what}: keys must be at least 16 characters")
        self._keys = tuple(k.encode() for k in keys)
        self._what = what

    def check(self, presented: str | None) -> None:
        given = presented.encode() if presented else b""
        # every key compared (constant time each), so timing does not tell which one is set
        hits = [secrets.compare_digest(given, k) for k in self._keys]
        if not given or not any(hits):
            raise Unauthorized(f"a valid {self._what} is required")

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
