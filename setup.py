"""The native parts, where the CPU goes per packet or per pixel:

* ``relay/rtc/_srtp_writer.c``: the fan-out's per-viewer send loop (Python fallback:
  ``relay/rtc/srtp_writer.py``, which costs more CPU per viewer: BENCHMARKS.md);
* ``relay/rtc/_rtp_reader.c``: an anchor's SRTP packet decrypted and parsed in one call
  (fallback: ``relay/rtc/rtp_reader.py``'s pylibsrtp unprotect + aiortc's RtpPacket.parse);
* ``relay/rtc/_rtcp_reader.c``: a viewer's SRTCP feedback decrypted and split in one call
  (fallback: pylibsrtp's unprotect_rtcp + ``relay/media/cc_feedback.py``'s split_feedback);
* ``relay/rtc/_udp_batch.c``: recvmmsg/sendmmsg for the node's shared UDP port (fallback:
  ``relay/rtc/udp_batch.py``'s recvfrom/sendto loops);
* ``relay/media/_reassembly.c``: an anchor's packets put in order and released as frames
  (fallback: ``relay/media/reassembly.py``'s ``PyReorder``);
* ``relay/media/_twcc.c``: a viewer's transport-cc feedback parsed and matched against what was
  sent (fallback: the Python loop in ``relay/media/estimator.py``);
* ``gateway/mixer/_halve.c``: the mixer's exact 2:1 downscale (fallback: libswscale);
* ``gateway/mixer/_x264.c``: the mixer's H264 renditions through libx264 itself, a quantiser
  per frame (needs the system's libx264-dev; fallback: PyAV's libx264 with its own ABR).

All optional: without a C compiler the build goes on and the fallbacks run.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay.rtc._srtp_writer",
            ["relay/rtc/_srtp_writer.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "relay.rtc._rtp_reader",
            ["relay/rtc/_rtp_reader.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "relay.rtc._rtcp_reader",
            ["relay/rtc/_rtcp_reader.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "relay.rtc._udp_batch",
            ["relay/rtc/_udp_batch.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "relay.media._reassembly",
            ["relay/media/_reassembly.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "relay.media._twcc",
            ["relay/media/_twcc.c"],
            # no fused multiply-adds: TwccState's doubles must be the Python reference's
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "gateway.mixer._halve",
            ["gateway/mixer/_halve.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "gateway.mixer._x264",
            ["gateway/mixer/_x264.c"],
            libraries=["x264"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
