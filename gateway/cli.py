"""``stagecast`` command line: ``serve`` runs the origin, ``edge`` (alias ``relay``) an edge,
``token`` mints an access token, ``status`` shows rooms, ``cert`` makes a self-signed certificate
for HTTPS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from relay.server.logs import configure_logging
from relay.server.main import (
    UDP_HELP,
    WORKERS_HELP,
    add_edge_arguments,
    load_edge_settings,
    run,
    run_edge,
    tls_problem,
    udp_summary,
    worker_handshake,
)
from relay.server.main import warn_python_send_loop as _warn_python_send_loop
from relay.server.settings import ephemeral_secret

from .settings import Settings, load_settings


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
    from relay.server import workers as multi

    from .app import build_gateway, create_app, origin_whep_gate

    overrides = _overrides(args)
    settings = load_settings(args.config, **overrides)
    if settings.cluster.role == "edge":
        return _edge(args)  # one config file can pick the node's role
    problem = tls_problem(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # A configured secret or key is the operator's: never printed (it would land in pod logs).
    # Without them this is a trial run, and the generated ones are how to use it.
    trial = not settings.auth.token_secret
    count = args.workers or settings.workers or 1
    problem = multi.check_workers(count, settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if count > 1 and trial:  # the workers' pulls are signed with the front's secret
        auth = settings.auth.model_copy(update={"token_secret": ephemeral_secret()})
        settings = settings.model_copy(update={"auth": auth})
    gateway = build_gateway(settings)
    app = create_app(settings, gateway)
    if count > 1:
        multi.install_front(
            app,
            settings,
            count,
            command=multi.worker_argv(GATEWAY_WORKER, settings, args.config, gateway.node_id),
            tokens=gateway.tokens,
            token_secret=settings.auth.token_secret,
            operator_key=gateway.operator_key,
            figures=lambda: (gateway.viewers.count(audience_only=True), gateway.lag.busy()),
            max_viewers=settings.rooms.max_viewers_per_node,
            gate=origin_whep_gate(gateway.cluster, gateway.access),
            cluster=gateway.cluster,
            room_limit=gateway.stages.max_viewers,
            room_viewers=lambda room: gateway.viewers.count(room, audience_only=True),
        )
    base = settings.base_url
    room = args.room
    print("stagecast gateway (single node)", flush=True)
    print(f"  publish (WHIP): {base}/whip/{room}", flush=True)
    if trial:
        anchor = gateway.tokens.mint(room, "anchor", "cli-anchor", settings.auth.token_ttl)
        print(f"    anchor token: {anchor}", flush=True)
    watch = f"{base}/whep/{room}"
    print(
        f"  watch (WHEP):   {watch}{'' if settings.auth.anonymous_audience else ' (token needed)'}"
    )
    if trial:
        print(f"  publish page:   {base}/publish?room={room}#token={anchor}", flush=True)
    else:
        print(f"  publish page:   {base}/publish?room={room} (token: stagecast token)", flush=True)
    print(f"  watch page:     {base}/watch?room={room}", flush=True)
    print(f"  API docs:       {base}/docs", flush=True)
    print(f"  WebRTC media:   {_udp(settings)}", flush=True)
    if count > 1:
        print(f"  workers:        {multi.workers_summary(count, settings)}", flush=True)
    if not settings.api.operator_key:
        print(f"  operator key:   {gateway.operator_key}", flush=True)
    if trial:
        print("  (no auth.token_secret set: tokens are valid for this process only)", flush=True)
    _warn_python_send_loop(settings)
    run(app, settings)
    return 0


def _cert(args: argparse.Namespace) -> int:
    from .tls import write_self_signed

    cert, key = write_self_signed(args.out, args.name, days=args.days)
    print(f"certificate: {cert}\nkey:         {key}")
    print("serve HTTPS with:")
    print(f"  STAGECAST_TLS_CERTFILE={cert} STAGECAST_TLS_KEYFILE={key} stagecast serve")
    print("(self-signed: each browser asks once to accept it)")
    return 0


GATEWAY_WORKER = (sys.executable, "-m", "gateway.cli", "{config}", "edge")


def _edge(args: argparse.Namespace) -> int:
    """An edge with the full settings (a config file shared with the origin loads as is)."""
    handshake = worker_handshake(args)
    settings = load_edge_settings(Settings, args.config, args, handshake)
    return run_edge(
        settings,
        workers=getattr(args, "workers", None),
        handshake=handshake,
        config=args.config,
        worker_command=GATEWAY_WORKER,
    )


def _udp(settings: Settings) -> str:
    return udp_summary(settings)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagecast", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (single node)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--udp-port", dest="udp_port", type=int, default=None, help=UDP_HELP)
    serve.add_argument("--room", default="demo", help="room whose URLs are printed")
    serve.add_argument("--workers", type=int, default=None, help=WORKERS_HELP % "1")
    serve.set_defaults(func=_serve)
    edge = sub.add_parser(
        "edge", aliases=["relay"], help="run an edge that pulls from --upstream (= python -m relay)"
    )
    add_edge_arguments(edge)
    edge.set_defaults(func=_edge)
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


__all__ = ["Settings", "_warn_python_send_loop", "main"]
