"""Signed webhooks for room events, delivered off the media path with retries and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx  # imported where used: a node without webhooks never loads it

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Stagecast-Signature"
EVENT_HEADER = "X-Stagecast-Event"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>``; receivers recompute and compare."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float = 300.0) -> bool:
    """Receiver-side check (also used by the tests): signature and freshness."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), header)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: str
    type: str
    created_at: float
    data: dict[str, Any]

    def body(self) -> bytes:
        payload = {"id": self.id, "type": self.type, "created_at": self.created_at}
        payload["data"] = self.data
        return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def backoff(attempt: int, base: float, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for retry ``attempt`` (1-based)."""
    return float(min(cap, base * 2 ** (attempt - 1)) * (0.5 + secrets.randbelow(1000) / 2000))


class WebhookDispatcher:
    """``emit`` never blocks: events go to a bounded queue that a background task drains."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: str,
        *,
        timeout: float = 5.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        queue_size: int = 1000,
        concurrency: int = 8,
    ) -> None:
        self.urls = tuple(urls)
        self._secret = secret
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._queue: asyncio.Queue[WebhookEvent] = asyncio.Queue(queue_size)
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.attempts = 0

    def counters(self) -> dict[str, tuple[str, float]]:
        return {
            "stagecast_webhooks_delivered": ("Webhook deliveries that succeeded", self.delivered),
            "stagecast_webhooks_failed": ("Webhook deliveries given up", self.failed),
            "stagecast_webhooks_dropped": ("Webhook events dropped (queue full)", self.dropped),
        }

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        if not self.urls:
            return
        event = WebhookEvent(secrets.token_hex(8), event_type, time.time(), data)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("webhook queue full: dropped %s", event_type)

    def start(self) -> None:
        if self.urls and self._task is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self._timeout)
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            for url in self.urls:
                await self._slots.acquire()
                task = asyncio.create_task(self._deliver(url, event))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
            self._queue.task_done()

    async def _deliver(self, url: str, event: WebhookEvent) -> None:
        import httpx

        assert self._client is not None
        body = event.body()
        try:
            for attempt in range(1, self._max_attempts + 1):
                self.attempts += 1
                headers = {
                    "Content-Type": "application/json",
                    EVENT_HEADER: event.type,
                    SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
                }
                try:
                    resp = await self._client.post(url, content=body, headers=headers)
                    if resp.status_code < 300:
                        self.delivered += 1
                        return
                    retry = resp.status_code >= 500 or resp.status_code in (408, 429)
                    reason = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    retry, reason = True, type(exc).__name__
                if not retry or attempt == self._max_attempts:
                    break
                await asyncio.sleep(backoff(attempt, self._backoff_base))
            self.failed += 1
            log.warning("webhook %s to %s given up: %s", event.type, url, reason)
        finally:
            self._slots.release()

    async def stop(self, drain: float = 2.0) -> None:
        """Give queued and in-flight deliveries ``drain`` seconds, then cancel the rest."""
        deadline = time.monotonic() + drain
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain)
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=max(0.0, deadline - time.monotonic()))
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
