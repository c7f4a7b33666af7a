from collections.abc import Callable
from typing import Any, Literal, overload

@overload
def recv(fd: int, limit: int) -> list[tuple[bytes, tuple[str, int]]]: ...
@overload
def recv(fd: int, limit: int, stamped: Literal[False]) -> list[tuple[bytes, tuple[str, int]]]: ...
@overload
def recv(
    fd: int, limit: int, stamped: Literal[True]
) -> list[tuple[bytes, tuple[str, int], float]]: ...
@overload
def recv(
    fd: int,
    limit: int,
    stamped: Literal[True],
    lanes: dict[tuple[str, int], Callable[[bytes], bool]],
) -> tuple[list[tuple[bytes, tuple[str, int], float]], int]: ...
def send(fd: int, items: list[tuple[Any, tuple[str, int]]]) -> tuple[int, int]: ...
