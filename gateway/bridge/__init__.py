"""CDN bridge: the program pushed over RTMP(S) and written as LL-HLS, by ffmpeg (issue 6)."""

from .api import bridge_router, hls_router
from .bridge import Bridge, BridgeState
from .service import BridgeService

__all__ = ["Bridge", "BridgeService", "BridgeState", "bridge_router", "hls_router"]
