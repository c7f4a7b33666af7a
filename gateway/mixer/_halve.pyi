from collections.abc import Sequence
from typing import Any

def halve(
    src_planes: Sequence[Any],
    src_strides: tuple[int, int, int],
    width: int,
    height: int,
    dst_planes: Sequence[Any],
    dst_strides: tuple[int, int, int],
    x: int,
    y: int,
    /,
) -> None: ...
def kernel(name: str = ..., /) -> str | None: ...
