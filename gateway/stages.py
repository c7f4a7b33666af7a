"""Rooms (stages) of this node and the stream each one is putting out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from relay.hub import FanoutHub


@dataclass(eq=False)
class Stage:
    """A room: its program hub exists while an anchor is live."""

    room: str
    hub: FanoutHub | None = None
    anchor_id: str | None = None
    created_at: float = field(default_factory=time.monotonic)


class StageTable:
    """Room name -> Stage, owned by the app; the lookup the viewer side uses."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}

    def get(self, room: str) -> Stage | None:
        return self._stages.get(room)

    def ensure(self, room: str) -> Stage:
        stage = self._stages.get(room)
        if stage is None:
            stage = self._stages[room] = Stage(room)
        return stage

    def discard_if_idle(self, room: str) -> None:
        stage = self._stages.get(room)
        if stage is not None and stage.hub is None and stage.anchor_id is None:
            del self._stages[room]

    def live_hub(self, room: str) -> FanoutHub | None:
        stage = self._stages.get(room)
        return stage.hub if stage is not None else None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._stages.values()))

    def __len__(self) -> int:
        return len(self._stages)
