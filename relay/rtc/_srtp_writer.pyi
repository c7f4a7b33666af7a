import socket

from pylibsrtp import Session

from relay.media.estimator import SendLog

class SrtpWriter:
    gso_refused: bool
    def __init__(
        self,
        sock: socket.socket,
        addr: tuple[str, int] | tuple[str, int, int, int],
        protect: int,
        ctx: int,
        session: Session,
    ) -> None: ...
    def send(
        self,
        templates: tuple[bytes, ...],
        runs: tuple[tuple[int, int], ...],
        seq: int,
        ts: int,
        ssrc: int,
        gso: bool,
        twcc_offset: int = 0,
        twcc_seq: int = 0,
        /,
    ) -> int: ...
    def record_into(self, log: SendLog, /) -> None: ...
    def send_recorded(
        self,
        templates: tuple[bytes, ...],
        runs: tuple[tuple[int, int], ...],
        seq: int,
        ts: int,
        ssrc: int,
        gso: bool,
        twcc_offset: int,
        now: float,
        size: int,
        /,
    ) -> int: ...

def ulpfec_parity(packets: list[bytes], mask: int, bits: int, seq_base: int, /) -> bytes: ...
