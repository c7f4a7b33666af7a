"""The front's worker processes: started with the node, given their secrets on a pipe (which
also ends them when the front goes: they read EOF), polled for their load, restarted when
they exit, stopped with the node (terminate -> timeout -> kill -> reap)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from relay.workers.policy import (
    FRONT,
    ROOMS_PATH,
    WORKER_KEY_HEADER,
    Assigner,
    WorkerPorts,
    worker_ports,
)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
POLL_INTERVAL = 0.5
RESTART_BACKOFF = (0.25, 8.0)  # first delay, cap; doubles while a worker keeps dying young
STABLE_AFTER = 30.0  # a worker up this long starts its next restart's backoff afresh


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What the front needs to run its workers. ``command(index, http_port, ports)``: the argv
    of worker ``index`` (1..count-1) serving HTTP on loopback ``http_port`` and media on
    ``ports``; ``handshake``: the JSON the worker reads from stdin at start (secrets it shares
    with the front, never on a command line)."""

    count: int
    command: Callable[[int, int, WorkerPorts], Sequence[str]]
    handshake: dict[str, object]
    udp_port: int
    tcp_port: int
    operator_key: str
    front_serves: bool = True


@dataclass(eq=False)
class Worker:
    index: int
    ports: WorkerPorts
    http_port: int = 0
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_BACKOFF[0]
    task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def loopback_listener() -> socket.socket:
    """A worker's HTTP socket, bound and listening before the worker starts and handed to it
    (``http_fd``): a port picked, closed and named on a command line could be bound first by
    any local process, which would then get the front's forwarded requests (the worker key,
    viewers' tokens)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(eq=False)
class WorkerSupervisor:
    plan: WorkerPlan
    assigner: Assigner
    front_figures: Callable[[], tuple[int, float]]  # the front's own (viewers, loop busy)
    # a WHEP POST's answer waits for the worker's ICE/DTLS setup and, the first time, its pull
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30.0))
    workers: dict[int, Worker] = field(default_factory=dict)
    _stopping: bool = False
    _poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        p = self.plan
        for i in range(1, p.count):
            w = Worker(i, worker_ports(i, p.udp_port, p.tcp_port))
            self.workers[i] = w
            w.task = asyncio.create_task(self._keep(w), name=f"worker-{i}")
        self._poller = asyncio.create_task(self._poll(), name="worker-poll")

    async def stop(self) -> None:
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
        await asyncio.gather(*(self._end(w) for w in self.workers.values()))
        tasks = [t for t in (self._poller, *(w.task for w in self.workers.values())) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.http.aclose()

    async def _spawn(self, w: Worker) -> None:
        listener = loopback_listener()
        try:
            w.http_port = int(listener.getsockname()[1])
            argv = list(self.plan.command(w.index, w.http_port, w.ports))
            w.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE,
                preexec_fn=_die_with_parent,
                pass_fds=(listener.fileno(),),
            )
            fd = listener.fileno()
        finally:
            listener.close()  # the worker holds its own copy
        assert w.proc.stdin is not None
        handshake = {**self.plan.handshake, "tcp_port": w.ports.tcp, "http_fd": fd}
        w.proc.stdin.write(json.dumps(handshake).encode() + b"\n")
        await w.proc.stdin.drain()  # stdin stays open: its EOF tells the worker the front is gone
        w.started_at = time.monotonic()
        log.info(
            "worker %d started (pid %d, http %d, udp %d)",
            w.index,
            w.proc.pid,
            w.http_port,
            w.ports.udp,
        )

    async def _keep(self, w: Worker) -> None:
        """Run worker ``w`` until the node stops, restarting it when it exits."""
        while not self._stopping:
            try:
                await self._spawn(w)
            except OSError:
                log.exception("worker %d could not start", w.index)
            else:
                assert w.proc is not None
                code = await w.proc.wait()
                if self._stopping:
                    return
                self.assigner.down(w.index)
                log.warning("worker %d exited with %s; restarting", w.index, code)
                if time.monotonic() - w.started_at > STABLE_AFTER:
                    w.backoff = RESTART_BACKOFF[0]
            w.restarts += 1
            await asyncio.sleep(w.backoff)
            w.backoff = min(w.backoff * 2, RESTART_BACKOFF[1])

    async def _end(self, w: Worker, timeout: float = 5.0) -> None:
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _poll(self) -> None:
        """Every process's load into the assigner: the front's own figures, each worker's
        ``/readyz`` (its viewers, its loop's busy share; 503 or no answer: not ready)."""
        while True:
            try:
                viewers, busy = self.front_figures()
                self.assigner.report(FRONT, ready=True, viewers=viewers, busy=busy)
                await asyncio.gather(*(self._poll_one(w) for w in self.workers.values()))
            except Exception:  # the next poll tries again; assignment goes on meanwhile
                log.exception("polling the workers failed")
            await asyncio.sleep(POLL_INTERVAL)

    async def _poll_one(self, w: Worker) -> None:
        if w.proc is None or w.proc.returncode is not None:
            return
        try:
            resp = await self.http.get(w.base_url + "/readyz", timeout=1.0)
            body = resp.json()
        except (httpx.HTTPError, ValueError):
            # no answer in time: a busy worker keeps its last state (one that exits is marked
            # down by its keeper; one not yet up has never been ready)
            return
        rooms: dict[str, int] | None = None
        try:  # its viewers per room, for the node's per-room limits
            key = {WORKER_KEY_HEADER: str(self.plan.handshake["worker_key"])}
            got = await self.http.get(w.base_url + ROOMS_PATH, headers=key, timeout=1.0)
            if got.status_code == 200:
                rooms = {str(k): int(v) for k, v in got.json().items()}
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            rooms = None  # the last report stands
        self.assigner.report(
            w.index,
            ready=resp.status_code == 200,
            viewers=int(body.get("viewers", 0)),
            busy=float(body.get("busy", 0.0)),
            rooms=rooms,
        )

    def worker(self, index: int) -> Worker | None:
        return self.workers.get(index)

    async def scrape(self) -> dict[int, str]:
        """Every live worker's /metrics text (with the operator key)."""
        # the worker key, not the operator key: nothing a worker sees lets it act as operator
        headers = {"Authorization": f"Bearer {self.plan.handshake['worker_key']}"}

        async def one(w: Worker) -> tuple[int, str | None]:
            try:
                resp = await self.http.get(w.base_url + "/metrics", headers=headers, timeout=5.0)
            except httpx.HTTPError:
                return w.index, None
            return w.index, resp.text if resp.status_code == 200 else None

        got = await asyncio.gather(*(one(w) for w in self.workers.values() if w.pid is not None))
        return {i: text for i, text in got if text is not None}
