"""Running a node process: the checks before it starts, the uvicorn run, and the edge's command
line (``python -m relay``; ``stagecast edge`` runs the same with the origin's full settings)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from relay.server.logs import configure_logging, redact, uvicorn_log_config
from relay.server.settings import ClusterSettings, NodeSettings, ephemeral_secret, load_settings_as

S = TypeVar("S", bound=NodeSettings)


def tls_problem(settings: NodeSettings) -> str | None:
    """Why the configured certificate and key cannot serve HTTPS (checked before anything
    starts, instead of a traceback from the server's startup), or None."""
    if not settings.tls_certfile:
        return None
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_certfile, settings.tls_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        return f"cannot serve HTTPS with {settings.tls_certfile} / {settings.tls_keyfile}: {exc}"
    return None


def warn_python_send_loop(settings: NodeSettings) -> None:
    """Say so when viewers will get the Python send loop for want of the built C one (~0.0012
    core more per viewer): pip installed stagecast without a C compiler."""
    from relay.rtc.srtp_writer import NATIVE

    if settings.media.native_send and not NATIVE:
        print(
            "viewers get the Python send loop: relay/rtc/_srtp_writer.c was not built (install a C"
            " compiler and reinstall stagecast) or does not match pylibsrtp's libsrtp",
            file=sys.stderr,
        )


def forwarded_headers(settings: NodeSettings) -> dict[str, Any]:
    """uvicorn's options for X-Forwarded-For / X-Forwarded-Proto: believed from
    ``settings.trusted_proxies`` only. uvicorn's own default believes them from loopback (and
    reads FORWARDED_ALLOW_IPS from the environment): any local process could then name any
    client address."""
    trusted = list(settings.trusted_proxies)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted}


def run(app: object, settings: NodeSettings, *, http_fd: int | None = None) -> None:
    """Serve ``app`` with uvicorn; ``http_fd``: an inherited listening socket (a worker's, made
    by its front) instead of binding settings.host/port."""
    import gc
    import socket

    from uvicorn.config import Config  # not ``uvicorn.Server``: that is uvicorn.main (see below)

    from relay.http.slow_clients import SlowClientLimits, guarded_http_protocol
    from relay.server.http_server import HttpServer
    from relay.server.listen import listening_sockets
    from relay.server.ws_protocol import lazy_ws_protocol

    # Everything built so far lives as long as the process: out of the cyclic collector's way,
    # a full collection (which stalls every stream on this loop) scans only the sessions'
    # objects: ~73k tracked objects at 100 viewers, 34-82 ms per full collection while viewers
    # join (BENCHMARKS.md), against 117k more from startup without the freeze.
    gc.collect()
    gc.freeze()
    lim = settings.limits
    config = Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        **forwarded_headers(settings),
        http=guarded_http_protocol(  # deadlines for slow clients, slow connections per address
            SlowClientLimits(
                header_timeout=lim.header_timeout,
                body_timeout=lim.body_timeout,
                max_per_address=lim.max_slow_connections_per_address,
                send_timeout=lim.send_timeout,
            )
        ),
        ws=lazy_ws_protocol(),  # type: ignore[arg-type]  # websockets loads at the first upgrade
        ssl_certfile=settings.tls_certfile or None,
        ssl_keyfile=settings.tls_keyfile or None,
        log_config=uvicorn_log_config(),  # credentials redacted from the access log
    )
    server = HttpServer(config)
    if http_fd is not None:
        server.run(sockets=[socket.socket(fileno=http_fd)])
        return
    try:  # bound here, not by uvicorn: no libuv thread pool for one lookup (relay/server/listen.py)
        sockets = listening_sockets(settings.host, settings.port)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    server.run(sockets=sockets)


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", default=None, help="origin or parent edge base URL")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--redis-url", dest="redis_url", default=None, help="cluster registry")
    parser.add_argument("--node-id", dest="node_id", default=None)
    parser.add_argument("--udp-port", dest="udp_port", type=int, default=None, help=UDP_HELP)
    parser.add_argument(
        "--workers", type=int, default=None, help=WORKERS_HELP % "1; 0: one per core"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


WORKERS_HELP = (
    "processes serving viewers behind this node's one HTTP port: the front (this process) and"
    " N-1 local worker edges on UDP ports udp_port+1..udp_port+N-1 (default: %s)"
)
UDP_HELP = "the node's one WebRTC UDP port (default: webrtc.udp_port, 8443; 0: a port per session)"


def udp_summary(settings: NodeSettings) -> str:
    port, tcp = settings.webrtc.udp_port, settings.webrtc.tcp_port
    if not port:
        return "a UDP port per session"
    return f"UDP port {port}, every session (ICE-lite)" + (f"; ICE-TCP port {tcp}" if tcp else "")


def load_edge_settings(
    cls: type[S],
    config: Path | None,
    args: argparse.Namespace,
    handshake: dict[str, Any] | None = None,
) -> S:
    """``cls`` from the file and environment, with the edge role and the command line's
    ``--upstream``, ``--redis-url``, ``--node-id``, ``--host`` and ``--port`` on top."""
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    base = load_settings_as(cls, config)
    udp_port = getattr(args, "udp_port", None)
    if udp_port is not None:
        overrides["webrtc"] = {**base.webrtc.model_dump(), "udp_port": udp_port}
    cluster = base.cluster.model_dump()
    cluster["role"] = "edge"
    for key in ("upstream", "redis_url", "node_id"):
        value = getattr(args, key, None)
        if value is not None:
            cluster[key] = value
    loaded = load_settings_as(cls, config, cluster=ClusterSettings(**cluster), **overrides)
    if handshake is not None:
        from relay.server.workers import worker_settings

        return worker_settings(cls, loaded, handshake)
    return loaded


RELAY_WORKER = (sys.executable, "-m", "relay", "{config}")


def run_edge(
    settings: NodeSettings,
    *,
    workers: int | None = None,
    handshake: dict[str, Any] | None = None,
    config: Path | None = None,
    worker_command: Sequence[str] = RELAY_WORKER,
) -> int:
    """Check, build and run an edge; the exit status. ``workers``: processes behind its HTTP
    port (None: ``settings.workers``, else the cores); ``handshake``: this process is a worker
    of a front (``--worker``), with the front's secrets."""
    from relay.server import workers as multi

    configure_logging(settings.log_level, settings.log_format)
    if handshake is not None:
        return _run_worker(settings, handshake)
    count = workers if workers is not None else settings.workers
    if count is None:
        count = 1  # one process unless asked: more take more media ports (deploy/README.md)
    elif count == 0:  # one per core, as far as this node can run them
        count, why = multi.default_workers_here(multi.default_relay_workers(), settings)
        if why:
            print(f"workers: {why}", file=sys.stderr)
    problem = multi.check_workers(count, settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if count > 1 and not settings.auth.token_secret:  # the workers' pulls need the front's
        settings = settings.model_copy(
            update={"auth": settings.auth.model_copy(update={"token_secret": ephemeral_secret()})}
        )
    problem = tls_problem(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if not settings.cluster.upstream:
        print("an edge needs --upstream URL (or cluster.upstream)", file=sys.stderr)
        return 2
    if not settings.auth.token_secret:
        print(
            "an edge needs auth.token_secret (shared with its upstream) to pull private rooms",
            file=sys.stderr,
        )
    if not settings.cluster.redis_url and settings.auth.anonymous_audience:
        print(
            "an in-memory registry: this edge is in no cluster and does not learn the origin's"
            " room policies (private rooms, room limits); set cluster.redis_url to the origin's,"
            " or auth.anonymous_audience = false",
            file=sys.stderr,
        )
    warn_python_send_loop(settings)
    from relay.server.edge import build_edge_node, create_edge_app, edge_whep_gate

    node = build_edge_node(settings)
    key = settings.api.operator_key or ephemeral_secret()  # /cluster and /metrics name rooms
    token = settings.metrics.token
    app = create_edge_app(node, ops_keys=(key, token) if token else (key,))
    node_name = node.cluster.config.node_id
    if count > 1:
        multi.install_front(
            app,
            settings,
            count,
            command=multi.worker_argv(worker_command, settings, config, node_name),
            tokens=node.access.tokens,
            token_secret=settings.auth.token_secret,
            operator_key=key,
            figures=lambda: (node.viewers.count(audience_only=True), node.lag.busy()),
            max_viewers=settings.cluster.max_viewers or settings.rooms.max_viewers_per_node,
            gate=edge_whep_gate(node),
            cluster=node.cluster,
            room_limit=node.cluster.room_max_viewers,
            room_viewers=lambda room: node.viewers.count(room, audience_only=True),
        )
    print(f"stagecast edge {node_name}", flush=True)
    print(f"  upstream:       {settings.cluster.upstream}", flush=True)
    print(f"  watch (WHEP):   {settings.base_url}/whep/ROOM", flush=True)
    print(f"  registry:       {redact(settings.cluster.redis_url) or 'in-memory'}", flush=True)
    print(f"  WebRTC media:   {udp_summary(settings)}", flush=True)
    if count > 1:
        print(f"  workers:        {multi.workers_summary(count, settings)}", flush=True)
    if not settings.api.operator_key:
        print(f"  operator key:   {key} (for /cluster and /metrics)", flush=True)
    run(app, settings)
    return 0


def _run_worker(settings: NodeSettings, handshake: dict[str, Any]) -> int:
    """A front's worker: a quiet local edge whose WHEP only the front reaches."""
    from relay.server.edge import build_edge_node, create_edge_app
    from relay.server.workers import install_worker_guard
    from relay.workers.policy import ROOMS_PATH
    from relay.workers.worker import exit_with_parent

    node = build_edge_node(settings, presence=False)
    key, token = settings.api.operator_key, settings.metrics.token
    # the front scrapes /metrics with the worker key
    keys = (key, str(handshake["worker_key"]), *((token,) if token else ()))
    app = create_edge_app(node, ops_keys=keys)

    @app.get(ROOMS_PATH, include_in_schema=False)
    async def rooms() -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in node.viewers.sessions.values():
            counts[session.room] = counts.get(session.room, 0) + 1
        return counts

    install_worker_guard(app, handshake)
    exit_with_parent(sys.stdin.buffer)
    fd = handshake.get("http_fd")
    run(app, settings, http_fd=int(fd) if fd is not None else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m relay",
        description="Run an edge: pulls each stream once from --upstream and serves WHEP viewers."
        " Reads the node's keys of the stagecast settings (file, STAGECAST_* environment);"
        " a file with the origin's keys too is for `stagecast edge`.",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    add_edge_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    handshake = worker_handshake(args)
    try:
        settings = load_edge_settings(NodeSettings, args.config, args, handshake)
    except (ValidationError, FileNotFoundError) as exc:
        print(
            f"{exc}\n(python -m relay reads an edge's keys only; with the origin's keys in the"
            " same file or environment, run `stagecast edge`)",
            file=sys.stderr,
        )
        return 2
    return run_edge(settings, workers=args.workers, handshake=handshake, config=args.config)


def worker_handshake(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--worker``: the front's handshake on stdin (its secrets); else None."""
    if not getattr(args, "worker", False):
        return None
    from relay.workers.worker import read_handshake

    return read_handshake(sys.stdin.buffer)
