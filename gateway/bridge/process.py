"""One ffmpeg run: started with its stdin on a pipe the feed writer thread owns, stderr logged and
kept for the failure reason, stopped with end of input -> timeout -> terminate -> kill -> reap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import deque
from typing import BinaryIO

log = logging.getLogger(__name__)

_CONTEXT = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")
_URL = re.compile(r"\b(rtmps?|srt|https?)://[^\s'\"]+")


def redact_url(url: str) -> str:
    """A target URL with its stream key (last path segment, query, credentials) hidden."""
    m = re.match(r"^([a-z][a-z0-9+.-]*://)(?:[^@/]*@)?([^/?#]*)(/[^?#]*)?", url, re.IGNORECASE)
    if m is None:
        return "****"
    scheme, host, path = m.group(1), m.group(2), m.group(3) or ""
    head, _, last = path.rpartition("/")
    hidden = f"{head}/****" if last else path
    return f"{scheme}{host}{hidden}"


def redact_text(text: str) -> str:
    def hide(m: re.Match[str]) -> str:
        url = m.group(0)
        core = url.rstrip(".,:;)")
        return redact_url(core) + url[len(core) :]

    return _URL.sub(hide, text)


def failure_reason(lines: list[str], returncode: int | None) -> str:
    """A one-line reason from ffmpeg's last stderr lines (stream keys hidden)."""
    cleaned = [redact_text(_CONTEXT.sub("", ln).strip()) for ln in lines]
    cleaned = [ln for ln in cleaned if ln]
    code = "killed" if returncode is not None and returncode < 0 else f"exit {returncode}"
    if not cleaned:
        return f"ffmpeg ended ({code})"
    # ffmpeg repeats the cause on its last lines ("Error opening output files: <cause>")
    picked: list[str] = []
    for ln in reversed(cleaned):
        if ln not in picked:
            picked.append(ln)
        if len(picked) == 2:
            break
    return f"ffmpeg {code}: " + " | ".join(reversed(picked))


class FfmpegProcess:
    """Owns the child process; ``feed_pipe`` is the write end of its stdin."""

    def __init__(self, argv: list[str], name: str, *, stderr_lines: int = 20) -> None:
        self.argv = argv
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.feed_pipe: BinaryIO | None = None
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def start(self) -> None:
        read_fd, write_fd = os.pipe()  # both close-on-exec: no other child inherits the feed
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=read_fd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a terminal's Ctrl-C reaches the gateway, not ffmpeg
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self.feed_pipe = os.fdopen(write_fd, "wb", buffering=0)
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"{self.name}-stderr")
        log.info("%s: ffmpeg pid %s started", self.name, self.proc.pid)

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                return
            line = redact_text(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.stderr_tail.append(line)
                log.info("%s: ffmpeg: %s", self.name, line)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        return code

    def reason(self) -> str:
        return failure_reason(list(self.stderr_tail), self.returncode)

    async def stop(self, timeout: float) -> None:
        """Input is (being) closed by the writer; give ffmpeg ``timeout`` to finish, then
        SIGTERM, then SIGKILL; always reaped."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    log.warning(
                        "%s: ffmpeg did not finish in %.1fs, terminating", self.name, timeout
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 2.0)
                    except TimeoutError:
                        log.warning("%s: ffmpeg ignored SIGTERM, killing", self.name)
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()  # reaped, even when cancelled above
            if self._stderr_task is not None:
                self._stderr_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stderr_task
            if self.feed_pipe is not None:  # never handed to a writer
                with contextlib.suppress(OSError):
                    self.feed_pipe.close()
                self.feed_pipe = None

    def take_feed_pipe(self) -> BinaryIO:
        """Hand the stdin pipe to the writer thread, which alone writes and closes it."""
        pipe = self.feed_pipe
        if pipe is None:
            raise RuntimeError("ffmpeg is not started or its input was already taken")
        self.feed_pipe = None
        return pipe
