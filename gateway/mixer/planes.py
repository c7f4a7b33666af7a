"""numpy views of a yuv420p frame's planes, shared by the compositor and the swscale probe."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Plane = npt.NDArray[np.uint8]


def plane_views(frame: Any) -> tuple[Plane, Plane, Plane]:
    """Writable numpy views of a yuv420p frame's Y, U and V planes (row padding cut off)."""
    out = []
    for p in frame.planes[:3]:
        rows = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)
        out.append(rows[:, : p.width])
    return out[0], out[1], out[2]
