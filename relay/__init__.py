"""Encoded-media layer of stagecast: frames, fan-out hub, viewer (WHEP) side, cluster plumbing.

Importing it defers PyAV for aiortc and dnspython for aioice (relay/rtc/deferred_imports.py): a
node that only forwards encoded media never loads FFmpeg's libraries. It must happen here,
before any module's ``from aiortc import ...`` (third-party imports come first in a module)."""

from relay.rtc.deferred_imports import install as _defer_imports

_defer_imports()
