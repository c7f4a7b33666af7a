from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, run_server


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with run_server() as srv:
        yield srv
