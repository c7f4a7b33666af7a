"""The one native part: the fan-out's per-viewer send loop (relay/_srtp_writer.c).

Optional: without a C compiler the build goes on and relay falls back to the same loop in
Python (relay/aiortc_adapter.py), which costs ~0.001 core more per viewer.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay._srtp_writer",
            ["relay/_srtp_writer.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
