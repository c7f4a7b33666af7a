"""``stagecast`` command line: ``serve`` runs a node, ``relay`` an edge relay, ``token`` mints an
access token, ``status`` shows rooms, ``cert`` makes a self-signed certificate for HTTPS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .logs import configure_logging, uvicorn_log_config
from .settings import Settings, ephemeral_secret, ice_directory, load_settings


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--host, --port and --udp-port over the settings."""
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    if args.udp_port is not None:
        webrtc = load_settings(args.config).webrtc.model_dump()
        overrides["webrtc"] = {**webrtc, "udp_port": args.udp_port}
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from .app import build_gateway, create_app

    overrides = _overrides(args)
    settings = load_settings(args.config, **overrides)
    if settings.cluster.role == "edge":
        return _relay(args)  # one config file can pick the node's role
    problem = _tls_problem(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    gateway = build_gateway(settings)
    app = create_app(settings, gateway)
    base = settings.base_url
    room = args.room
    anchor = gateway.tokens.mint(room, "anchor", "cli-anchor", settings.auth.token_ttl)
    print("stagecast gateway (single node)", flush=True)
    print(f"  publish (WHIP): {base}/whip/{room}", flush=True)
    print(f"    anchor token: {anchor}", flush=True)
    watch = f"{base}/whep/{room}"
    print(
        f"  watch (WHEP):   {watch}{'' if settings.auth.anonymous_audience else ' (token needed)'}"
    )
    print(f"  publish page:   {base}/publish?room={room}#token={anchor}", flush=True)
    print(f"  watch page:     {base}/watch?room={room}", flush=True)
    print(f"  API docs:       {base}/docs", flush=True)
    print(f"  WebRTC media:   {_udp(settings)}", flush=True)
    print(f"  operator key:   {gateway.operator_key}", flush=True)
    if not settings.auth.token_secret:
        print("  (no auth.token_secret set: tokens are valid for this process only)", flush=True)
    _warn_python_send_loop(settings)
    _run(app, settings)
    return 0


def _tls_problem(settings: Settings) -> str | None:
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


def _warn_python_send_loop(settings: Settings) -> None:
    """Say so when viewers will get the Python send loop for want of the built C one (~0.0012
    core more per viewer): pip installed stagecast without a C compiler."""
    from relay.rtc.srtp_writer import NATIVE

    if settings.media.native_send and not NATIVE:
        print(
            "viewers get the Python send loop: relay/rtc/_srtp_writer.c was not built (install a C"
            " compiler and reinstall stagecast) or does not match pylibsrtp's libsrtp",
            file=sys.stderr,
        )


def _run(app: object, settings: Settings) -> None:
    import gc

    import uvicorn

    from relay.http.slow_clients import SlowClientLimits, guarded_http_protocol

    # Everything built so far lives as long as the process: out of the cyclic collector's way,
    # a full collection (which stalls every stream on this loop) scans only the sessions'
    # objects: ~73k tracked objects at 100 viewers, 34-82 ms per full collection while viewers
    # join (BENCHMARKS.md), against 117k more from startup without the freeze.
    gc.collect()
    gc.freeze()
    lim = settings.limits
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=guarded_http_protocol(  # deadlines for slow clients, slow connections per address
            SlowClientLimits(
                header_timeout=lim.header_timeout,
                body_timeout=lim.body_timeout,
                max_per_address=lim.max_slow_connections_per_address,
                send_timeout=lim.send_timeout,
            )
        ),
        ssl_certfile=settings.tls_certfile or None,
        ssl_keyfile=settings.tls_keyfile or None,
        log_config=uvicorn_log_config(),  # credentials redacted from the access log
    )


def _cert(args: argparse.Namespace) -> int:
    from .tls import write_self_signed

    cert, key = write_self_signed(args.out, args.name, days=args.days)
    print(f"certificate: {cert}\nkey:         {key}")
    print("serve HTTPS with:")
    print(f"  STAGECAST_TLS_CERTFILE={cert} STAGECAST_TLS_KEYFILE={key} stagecast serve")
    print("(self-signed: each browser asks once to accept it)")
    return 0


def _relay(args: argparse.Namespace) -> int:
    from .cluster import build_edge_node
    from .settings import ClusterSettings

    overrides = _overrides(args)
    base = load_settings(args.config)
    cluster = base.cluster.model_dump()
    cluster["role"] = "edge"
    for key in ("upstream", "redis_url", "node_id"):
        value = getattr(args, key, None)
        if value is not None:
            cluster[key] = value
    settings = load_settings(args.config, cluster=ClusterSettings(**cluster), **overrides)
    configure_logging(settings.log_level, settings.log_format)
    problem = _tls_problem(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if not settings.cluster.upstream:
        print("a relay needs --upstream URL (or cluster.upstream)", file=sys.stderr)
        return 2
    if not settings.auth.token_secret:
        print(
            "a relay needs auth.token_secret (shared with its upstream) to pull private rooms",
            file=sys.stderr,
        )
    if not settings.cluster.redis_url and settings.auth.anonymous_audience:
        print(
            "an in-memory registry: this relay is in no cluster and does not learn the origin's"
            " room policies (private rooms, room limits); set cluster.redis_url to the origin's,"
            " or auth.anonymous_audience = false",
            file=sys.stderr,
        )
    _warn_python_send_loop(settings)
    from relay.cluster.edge import create_edge_app

    node = build_edge_node(settings)
    key = settings.api.operator_key or ephemeral_secret()  # for /cluster (it names rooms)
    app = create_edge_app(
        node,
        max_sdp_bytes=settings.sessions.max_sdp_bytes,
        ice=ice_directory(settings),
        cors_origin=settings.cors_origin,
        ops_keys=(key, settings.metrics.token) if settings.metrics.token else (key,),
    )
    print(f"stagecast relay {node.cluster.config.node_id}", flush=True)
    print(f"  upstream:       {settings.cluster.upstream}", flush=True)
    print(f"  watch (WHEP):   {settings.base_url}/whep/ROOM", flush=True)
    print(f"  registry:       {settings.cluster.redis_url or 'in-memory'}", flush=True)
    if not settings.api.operator_key:
        print(f"  operator key:   {key} (for /cluster)", flush=True)
    print(f"  WebRTC media:   {_udp(settings)}", flush=True)
    _run(app, settings)
    return 0


def _udp(settings: Settings) -> str:
    port = settings.webrtc.udp_port
    return f"UDP port {port}, every session (ICE-lite)" if port else "a UDP port per session"


def _token(args: argparse.Namespace) -> int:
    from relay.auth.tokens import LINK_SUBJECT_PREFIX, TokenAuthority

    settings = load_settings(args.config)
    if not settings.auth.token_secret:
        print(
            "auth.token_secret is not set (config file or STAGECAST_AUTH__TOKEN_SECRET)",
            file=sys.stderr,
        )
        return 2
    ttl = args.ttl or settings.auth.token_ttl
    if args.subject.startswith(LINK_SUBJECT_PREFIX):
        print(f"subjects starting with {LINK_SUBJECT_PREFIX!r} are the nodes' own", file=sys.stderr)
        return 2
    print(TokenAuthority(settings.auth.token_secret).mint(args.room, args.role, args.subject, ttl))
    return 0


def _status(args: argparse.Namespace) -> int:
    import time

    import httpx
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from .status import render_status

    settings = load_settings(args.config)
    key = args.key or settings.api.operator_key
    if not key:
        print("an operator key is needed: --key or api.operator_key", file=sys.stderr)
        return 2
    url = (args.url or settings.base_url).rstrip("/")
    console = Console()
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=5) as client:

        def table() -> Table:
            rooms = client.get("/v1/rooms")
            streams = client.get("/v1/streams")
            for resp in (rooms, streams):
                if resp.status_code != 200:
                    raise SystemExit(f"{resp.request.url}: HTTP {resp.status_code} {resp.text}")
            return render_status(url, rooms.json(), streams.json())

        try:
            if not args.watch:
                console.print(table())
                return 0
            with Live(table(), console=console, refresh_per_second=2) as live:
                while True:
                    time.sleep(args.interval)
                    live.update(table())
        except httpx.HTTPError as exc:
            print(f"cannot reach {url}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


UDP_HELP = "the node's one WebRTC UDP port, e.g. 8443 (default webrtc.udp_port; 0: one per session)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagecast", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (single node)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--udp-port", dest="udp_port", type=int, default=None, help=UDP_HELP)
    serve.add_argument("--room", default="demo", help="room whose URLs are printed")
    serve.set_defaults(func=_serve)
    relay = sub.add_parser("relay", help="run an edge relay that pulls from --upstream")
    relay.add_argument("--upstream", default=None, help="origin or parent relay base URL")
    relay.add_argument("--host", default=None)
    relay.add_argument("--port", type=int, default=None)
    relay.add_argument("--udp-port", dest="udp_port", type=int, default=None, help=UDP_HELP)
    relay.add_argument("--redis-url", dest="redis_url", default=None, help="cluster registry")
    relay.add_argument("--node-id", dest="node_id", default=None)
    relay.set_defaults(func=_relay)
    token = sub.add_parser("token", help="mint an anchor or audience token")
    token.add_argument("--room", required=True)
    token.add_argument("--role", choices=["anchor", "audience"], required=True)
    token.add_argument("--subject", default="cli")
    token.add_argument("--ttl", type=int, default=None, help="seconds (default auth.token_ttl)")
    token.set_defaults(func=_token)
    status = sub.add_parser("status", help="live table of rooms from a gateway's API")
    status.add_argument("--url", default=None, help="gateway base URL (default: from settings)")
    status.add_argument("--key", default=None, help="operator key (default: api.operator_key)")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0)
    status.set_defaults(func=_status)
    cert = sub.add_parser("cert", help="write a self-signed certificate to serve HTTPS on a LAN")
    cert.add_argument(
        "--name",
        action="append",
        required=True,
        help="host name or IP address the certificate is for (repeat for several)",
    )
    cert.add_argument("--out", type=Path, default=Path("tls"), help="directory (default ./tls)")
    cert.add_argument("--days", type=int, default=30)
    cert.set_defaults(func=_cert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Settings", "main"]
