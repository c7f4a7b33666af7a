from typing import Any

from aiortc.rtp import RtpPacket
from pylibsrtp import Session

class RtpReader:
    def __init__(
        self,
        unprotect: int,
        ctx: int,
        session: Session,
        ids: Any,
        packet_cls: type[RtpPacket],
        extensions_cls: type[Any],
    ) -> None: ...
    def read(self, data: bytes, /) -> RtpPacket | None: ...
    def parse(self, data: bytes, /) -> RtpPacket | None: ...

def depayload_h264(payload: bytes, /) -> bytes: ...
def depayload_vp8(payload: bytes, /) -> bytes: ...
