from collections.abc import Sequence

from _typeshed import ReadableBuffer

BUILD: int
QP_LOW: int
QP_HIGH: int

class Encoder:
    def __init__(self, width: int, height: int, fps: int, gop: int, level: int = 31) -> None: ...
    def encode(
        self,
        planes: Sequence[ReadableBuffer],
        strides: tuple[int, int, int],
        qp: int,
        keyframe: bool,
    ) -> tuple[bytes, bool]: ...
