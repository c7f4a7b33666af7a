from array import array
from collections.abc import Callable
from typing import Any

from pylibsrtp import Session

class RtcpReader:
    def __init__(self, unprotect_rtcp: int, ctx: int, session: Session) -> None: ...
    def read(self, data: bytes, /) -> tuple[tuple[bytes, ...], bytes] | None: ...
    def bind(
        self,
        state: Any,
        params: array[float],
        taken: Callable[[bytes, float, int, int], None],
        slow: Callable[[tuple[bytes, ...], bytes], None],
        tick: Callable[[int, int, int, float], None],
        /,
    ) -> None: ...
    def take(self, data: bytes, /) -> bool: ...
    def flush(self) -> None: ...
    @property
    def lane_feedbacks(self) -> int: ...

def split(data: bytes, /) -> tuple[tuple[bytes, ...], bytes]: ...
