"""``stagecast`` command line: ``serve`` runs a single node, ``token`` mints an access token."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .settings import Settings, load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import build_gateway, create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(args.config, **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    print(f"  API docs:       {base}/docs", flush=True)
    print(f"  operator key:   {gateway.operator_key}", flush=True)
    if not settings.auth.token_secret:
        print("  (no auth.token_secret set: tokens are valid for this process only)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def _token(args: argparse.Namespace) -> int:
    from relay.tokens import TokenAuthority

    settings = load_settings(args.config)
    if not settings.auth.token_secret:
        print(
            "auth.token_secret is not set (config file or STAGECAST_AUTH__TOKEN_SECRET)",
            file=sys.stderr,
        )
        return 2
    ttl = args.ttl or settings.auth.token_ttl
    print(TokenAuthority(settings.auth.token_secret).mint(args.room, args.role, args.subject, ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagecast", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (single node)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--room", default="demo", help="room whose URLs are printed")
    serve.set_defaults(func=_serve)
    token = sub.add_parser("token", help="mint an anchor or audience token")
    token.add_argument("--room", required=True)
    token.add_argument("--role", choices=["anchor", "audience"], required=True)
    token.add_argument("--subject", default="cli")
    token.add_argument("--ttl", type=int, default=None, help="seconds (default auth.token_ttl)")
    token.set_defaults(func=_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Settings", "main"]
