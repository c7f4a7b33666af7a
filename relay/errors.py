"""Every error stagecast reports to a client, each with its HTTP status (RFC 9457 at the edge)."""

from __future__ import annotations


class StagecastError(Exception):
    status = 500
    title = "Internal error"
    type_slug = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(StagecastError):
    status, title, type_slug = 400, "Bad request", "bad-request"


class BadSdp(BadRequest):
    title, type_slug = "Malformed SDP", "bad-sdp"


class Unauthorized(StagecastError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="stagecast"'})


class Forbidden(StagecastError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class NotFound(StagecastError):
    status, title, type_slug = 404, "Not found", "not-found"


class Conflict(StagecastError):
    status, title, type_slug = 409, "Conflict", "conflict"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(detail, headers=headers)


class PreconditionFailed(StagecastError):
    status, title, type_slug = 412, "Precondition failed", "precondition-failed"


class PayloadTooLarge(StagecastError):
    status, title, type_slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(StagecastError):
    status, title, type_slug = 415, "Unsupported media type", "unsupported-media-type"


class Unprocessable(StagecastError):
    status, title, type_slug = 422, "Unprocessable content", "unprocessable"


class PreconditionRequired(StagecastError):
    status, title, type_slug = 428, "Precondition required", "precondition-required"


class TooManyRequests(StagecastError):
    status, title, type_slug = 429, "Too many requests", "rate-limited"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(StagecastError):
    status, title, type_slug = 503, "Service unavailable", "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
