"""libopus called directly (ctypes) for the mixer's audio: the very library PyAV has loaded.

Through PyAV every 20 ms Opus frame costs an ``av.Packet`` or an ``av.AudioFrame`` built from
numpy, a codec context's send/receive round trip and frame objects on the way back: about 60 us
of a ~150 us mono encode and ~10 us of each ~40 us decode on this machine (BENCHMARKS.md, "Code
figures"), 50 times a second per anchor and per encoded mix. ``opus_decode_float`` and
``opus_encode_float`` take and fill plain buffers, so a frame is one foreign call each way.

The encoder is set as libavcodec's ``libopus`` wrapper sets it for the mixer (complexity 10,
unconstrained VBR, the restricted low-delay mode) and a one-stream multistream encoder is a
plain encoder, so packets are the same bytes as the PyAV path's (a unit test checks it).
Where the library cannot be found (no ``/proc/self/maps``, another PyAV build), ``load``
returns None and ``codecs`` keeps PyAV.
"""

from __future__ import annotations

import ctypes

import av.codec  # noqa: F401  (loads libavcodec, and libopus with it, into the process)
import numpy as np
import numpy.typing as npt

from .swscale import find_loaded

APPLICATION_RESTRICTED_LOWDELAY = 2051
SET_BITRATE = 4002
SET_VBR = 4006
SET_COMPLEXITY = 4010
SET_VBR_CONSTRAINT = 4020
MAX_FRAME = 5760  # 120 ms at 48 kHz: the longest Opus packet
MAX_PACKET = 4000  # bytes; libopus's own recommended bound for one packet


class Libopus:
    """The loaded libopus's entry points (``load()`` makes one per process)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        err = ctypes.POINTER(ctypes.c_int)
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, err]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decode_float.restype = ctypes.c_int
        lib.opus_decode_float.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, err]
        lib.opus_encoder_destroy.restype = None
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encode_float.restype = ctypes.c_int32
        lib.opus_encode_float.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int32,
        ]
        lib.opus_encoder_ctl.restype = ctypes.c_int  # variadic: every request here takes an int
        self.lib = lib


_loaded: list[Libopus | None] = []


def load() -> Libopus | None:
    """The process's libopus (the one PyAV links), or None where it cannot be reached."""
    if not _loaded:
        path = find_loaded("opus")
        try:
            _loaded.append(Libopus(path) if path else None)
        except (OSError, AttributeError):
            _loaded.append(None)
    return _loaded[0]


class Decoder:
    """Opus packets (any channel count) -> float32 mono at ``rate``: libopus downmixes a
    stereo packet itself when the decoder is mono, as libavcodec's wrapper asks it to."""

    def __init__(self, opus: Libopus, rate: int) -> None:
        self._lib = opus.lib
        err = ctypes.c_int()
        ptr = self._lib.opus_decoder_create(rate, 1, ctypes.byref(err))
        if not ptr or err.value:
            raise OSError(f"opus_decoder_create failed: {err.value}")
        self._dec: int | None = ptr

    def decode(self, data: bytes) -> npt.NDArray[np.float32] | None:
        """The packet's samples (a new array), or None where libopus refuses the packet."""
        out = np.empty(MAX_FRAME, np.float32)
        n = self._lib.opus_decode_float(self._dec, data, len(data), out.ctypes.data, MAX_FRAME, 0)
        return out[:n] if n >= 0 else None

    def close(self) -> None:
        if self._dec:
            self._lib.opus_decoder_destroy(self._dec)
            self._dec = None

    def __del__(self) -> None:
        self.close()


class Encoder:
    """float32 mono blocks of a whole Opus frame -> one packet each."""

    def __init__(self, opus: Libopus, rate: int, bitrate: int, *, complexity: int = 10) -> None:
        self._lib = lib = opus.lib
        err = ctypes.c_int()
        ptr = lib.opus_encoder_create(rate, 1, APPLICATION_RESTRICTED_LOWDELAY, ctypes.byref(err))
        if not ptr or err.value:
            raise OSError(f"opus_encoder_create failed: {err.value}")
        self._enc: int | None = ptr
        for request, value in (
            (SET_BITRATE, bitrate),
            (SET_COMPLEXITY, complexity),
            (SET_VBR, 1),
            (SET_VBR_CONSTRAINT, 0),
        ):
            if lib.opus_encoder_ctl(ctypes.c_void_p(ptr), request, ctypes.c_int32(value)):
                self.close()
                raise OSError(f"opus_encoder_ctl({request}) failed")
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: npt.NDArray[np.float32]) -> bytes:
        """One packet of ``pcm`` (float32, contiguous, a valid Opus frame length)."""
        n = self._lib.opus_encode_float(self._enc, pcm.ctypes.data, pcm.size, self._out, MAX_PACKET)
        if n < 0:
            raise OSError(f"opus_encode_float failed: {n}")
        return ctypes.string_at(self._out, n)

    def close(self) -> None:
        if self._enc:
            self._lib.opus_encoder_destroy(self._enc)
            self._enc = None

    def __del__(self) -> None:
        self.close()
