"""CDN bridge: the program pushed over RTMP(S) and written as LL-HLS, by ffmpeg (issue 6)."""

from typing import Any

from .api import bridge_router, hls_router
from .service import BridgeService
from .state import BridgeState

__all__ = ["Bridge", "BridgeService", "BridgeState", "bridge_router", "hls_router"]


def __getattr__(name: str) -> Any:
    if name == "Bridge":  # the machinery, loaded when first asked for (gateway/bridge/state.py)
        from .bridge import Bridge

        return Bridge
    raise AttributeError(name)
