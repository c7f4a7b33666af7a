"""A bridge's state, apart from the bridge: the API's models name it, and a node loads the
bridge's machinery (ffmpeg process, feed, LL-HLS packager) only when an operator creates one."""

from __future__ import annotations

from typing import Literal

BridgeState = Literal["waiting", "starting", "running", "retrying", "failed", "stopped"]
