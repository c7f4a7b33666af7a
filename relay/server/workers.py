"""``--workers N`` for a node process: the front's plan (worker argv, ports, shared secrets),
the front middleware installed on its app, and a worker's settings from its handshake."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI
from starlette.middleware import Middleware

from relay.auth.tokens import TokenAuthority
from relay.cluster.node import ClusterNode
from relay.server.settings import NodeSettings
from relay.workers.policy import Assigner, WorkerPorts

if TYPE_CHECKING:  # the front and the supervisor bring httpx (~4.6 MiB with its command line)
    from relay.workers.front import Gate
    from relay.workers.supervisor import WorkerSupervisor

S = TypeVar("S", bound=NodeSettings)


def default_relay_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loopback_url(settings: NodeSettings) -> str:
    """Where a worker reaches its front's HTTP port."""
    host = settings.host
    if host in ("", "0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def worker_argv(
    prefix: Sequence[str], settings: NodeSettings, config: Path | None, node_id: str
) -> Callable[[int, int, WorkerPorts], list[str]]:
    """``prefix``: how to start an edge of the same settings class (``python -m relay`` or
    ``python -m gateway.cli edge``), with ``{config}`` replaced by the config file options."""
    upstream = loopback_url(settings)

    def argv(index: int, http_port: int, ports: WorkerPorts) -> list[str]:
        head: list[str] = []
        for part in prefix:
            if part == "{config}":
                head += ["--config", str(config)] if config else []
            else:
                head.append(part)
        return [
            *head,
            "--worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--udp-port",
            str(ports.udp),
            "--upstream",
            upstream,
            "--redis-url",
            "",  # the cluster sees the front only
            "--node-id",
            f"{node_id}.w{index}",
        ]

    return argv


def install_front(
    app: FastAPI,
    settings: NodeSettings,
    count: int,
    *,
    command: Callable[[int, int, WorkerPorts], Sequence[str]],
    tokens: TokenAuthority,
    token_secret: str,
    operator_key: str,
    figures: Callable[[], tuple[int, float]],
    max_viewers: int | None,
    gate: Gate | None,
    cluster: ClusterNode | None,
    room_limit: Callable[[str], int | None] | None = None,
    room_viewers: Callable[[str], int] | None = None,
) -> WorkerSupervisor:
    """Make ``app`` the front of ``count`` processes (itself and count-1 workers, started and
    stopped with the app). Inside the request guards: they see each client once per node.
    ``gate``: the node's WHEP checks (authorization, routing), run at the front for every POST
    (a worker knows no room policies and serves only what its front sends it)."""
    from relay.workers.front import WorkerFront
    from relay.workers.supervisor import WorkerPlan, WorkerSupervisor

    worker_key = secrets.token_urlsafe(32)
    plan = WorkerPlan(
        count=count,
        command=command,
        handshake={
            "worker_key": worker_key,
            "token_secret": token_secret,
            "operator_key": operator_key,
            "metrics_token": settings.metrics.token,
        },
        udp_port=settings.webrtc.udp_port,
        tcp_port=settings.webrtc.tcp_port,
        operator_key=operator_key,
    )
    limits = settings.limits
    assigner = Assigner(count, max_busy=limits.max_loop_busy or 1.0)
    supervisor = WorkerSupervisor(plan, assigner, figures)
    app.user_middleware.append(
        Middleware(
            WorkerFront,
            supervisor=supervisor,
            tokens=tokens,
            worker_key=worker_key,
            gate=gate,
            max_viewers=max_viewers,
            room_limit=room_limit,
            room_viewers=room_viewers,
            retry_after=settings.sessions.retry_after,
        )
    )
    if cluster is not None:  # the node registers once, with every process's viewers
        cluster.count_also(assigner.worker_viewers)
    return supervisor


def worker_settings(cls: type[S], base: S, handshake: dict[str, Any]) -> S:
    """A worker's settings: its front's (file, environment, argv) with the front's secrets and
    its own ICE-TCP port; plain HTTP on loopback (the front terminates TLS), where the front's
    X-Forwarded-For (the client's address) is believed from loopback only."""
    dump = base.model_dump()
    dump["auth"] = {**dump["auth"], "token_secret": handshake["token_secret"]}
    dump["api"] = {**dump["api"], "operator_key": handshake["operator_key"]}
    dump["metrics"] = {**dump["metrics"], "token": handshake.get("metrics_token", "")}
    dump["webrtc"] = {**dump["webrtc"], "tcp_port": int(handshake.get("tcp_port", 0))}
    dump["tls_certfile"] = dump["tls_keyfile"] = ""
    dump["public_url"] = ""
    dump["trusted_proxies"] = ("127.0.0.1",)  # the front (WorkerSupervisor.http)
    return cls(**dump)


def install_worker_guard(app: FastAPI, handshake: dict[str, Any]) -> None:
    from relay.workers.worker import WorkerGuard

    app.add_middleware(WorkerGuard, worker_key=str(handshake["worker_key"]))


def default_workers_here(count: int, settings: NodeSettings) -> tuple[int, str | None]:
    """The default number of processes (one per core) cut to what this node can run without
    being told: one with TLS or without a fixed port, and no more than the media ports above
    its own that are free now (a node started before this default opened only its own, and a
    neighbour may hold the next). (count, why it was cut, or None)."""
    if count <= 1:
        return 1, None
    if settings.tls_certfile or not settings.port:
        return 1, "one process: TLS or no fixed port (--workers N to choose)"
    udp, tcp = settings.webrtc.udp_port, settings.webrtc.tcp_port
    for i in range(1, count):
        wanted = [(udp + i if udp else 0, socket.SOCK_DGRAM)]
        wanted.append((tcp + i if tcp else 0, socket.SOCK_STREAM))
        for port, kind in wanted:
            if not port:
                continue
            try:
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind(("0.0.0.0", port))
            except OSError:
                return i, f"{i} process(es): port {port} is taken (--workers N to choose)"
    return count, None


def check_workers(count: int, settings: NodeSettings) -> str | None:
    """Why this node cannot run ``count`` processes, or None."""
    if count < 1:
        return "--workers takes 1 or more"
    if count > 1 and settings.tls_certfile:
        return "--workers N > 1 with tls_certfile: terminate TLS in front of the node instead"
    if count > 1 and not settings.port:
        return "--workers N > 1 needs a fixed --port (workers pull from it)"
    return None


def workers_summary(count: int, settings: NodeSettings) -> str:
    udp = settings.webrtc.udp_port
    ports = f"UDP {udp + 1}-{udp + count - 1}" if udp else "a UDP port per session"
    return f"{count} processes (this front + {count - 1} workers on {ports})"
