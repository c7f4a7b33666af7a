class Reorder:
    max_wait: float
    def __init__(self, video: bool, codec: str, max_wait: float, max_packets: int) -> None: ...
    def push(
        self,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        data: bytes,
        now: float,
        /,
    ) -> tuple[list[tuple[int, list[bytes], list[bytes], list[float]]], bool] | None: ...
    @property
    def next_sequence(self) -> int | None: ...
    @property
    def frames_skipped(self) -> int: ...
    @property
    def pending(self) -> int: ...
