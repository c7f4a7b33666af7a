"""Recording a room's program to fragmented MP4 on disk (no re-encoding)."""

from .api import recording_router
from .service import RecordingService

__all__ = ["RecordingService", "recording_router"]
