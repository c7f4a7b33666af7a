import socket

from pylibsrtp import Session

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

def ulpfec_parity(packets: list[bytes], mask: int, bits: int, seq_base: int, /) -> bytes: ...
