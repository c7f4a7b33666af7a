"""The layers' import contract, read from the source (every import, including ones inside functions
and under TYPE_CHECKING): arrows point down only.

- gateway builds on relay; nothing under relay imports gateway (so the edge runs from relay alone).
- relay/media is the sans-I/O core: no aiortc/aioice/pylibsrtp, no web framework, no server, and
  none of the layers above it (relay.rtc, relay.http, relay.cluster).
- relay/rtc (the aiortc seam) has no web framework and reaches neither relay.http nor the cluster;
  relay/http does not reach the cluster; relay/auth and relay/ops are leaves.
- relay/messages (chat, likes, commands) touches no media and no peer, and not the cluster
  (whose edge mounts it).
- relay/cluster reaches no gateway (the first rule), so an edge stands on relay alone.
- gateway/mixer (decode, composite, audio mix, encode) reaches neither the room (gateway/stage)
  nor the WHIP sessions.
- relay/server (a node process: settings, app factory, edge, ``python -m relay``) is relay's top:
  no other relay layer imports it.
- bench/ and tests/ may import anything.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (package whose modules are checked, imported prefixes it must not reach)
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("relay", ("gateway", "bench", "tests")),
    ("gateway", ("bench", "tests")),
    (
        "relay.media",
        (
            "aiortc",
            "aioice",
            "pylibsrtp",
            "fastapi",
            "starlette",
            "uvicorn",
            "httpx",
            "redis",
            "relay.rtc",
            "relay.http",
            "relay.cluster",
            "relay.server",
        ),
    ),
    # the aiortc seam: sessions and peers, no web framework, no HTTP routes, no cluster
    (
        "relay.rtc",
        ("fastapi", "starlette", "uvicorn", "redis", "relay.http", "relay.cluster", "relay.server"),
    ),
    ("relay.http", ("relay.cluster", "relay.server")),
    # relay.server assembles a node process (settings, app factory, edge, main) on every layer
    ("relay.cluster", ("relay.server",)),
    # room messages: no media, no peers; the cluster's edge mounts them, so not the other way
    (
        "relay.messages",
        ("aiortc", "aioice", "av", "relay.media", "relay.rtc", "relay.cluster", "relay.server"),
    ),
    # the mixer is media work only: the room, its sessions and the web are above it
    ("gateway.mixer", ("gateway.stage", "gateway.anchors", "aiortc", "fastapi", "starlette")),
    # leaves that everything may use, so they use none of the layers
    *(
        (
            leaf,
            (
                "aiortc",
                "fastapi",
                "relay.media",
                "relay.rtc",
                "relay.http",
                "relay.cluster",
                "relay.server",
            ),
        )
        for leaf in ("relay.auth", "relay.ops")
    ),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, package: str) -> Iterator[tuple[int, str]]:
    """Absolute names a module's source imports, with line numbers; `package` is the package the
    module sits in (for relative imports)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from relay import rtc` reaches relay.rtc
                yield node.lineno, f"{base}.{alias.name}"


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@functools.cache
def imports_in(path: Path) -> tuple[tuple[int, str], ...]:
    """A file's imports, parsed once for every rule."""
    return tuple(imports_of(path.read_text(), package_of(path)))


def reaches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        for line, name in imports_in(path):
            for prefix in forbidden:
                if reaches(name, prefix):
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


@pytest.mark.parametrize(("package", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layers_import_downwards_only(package: str, forbidden: tuple[str, ...]) -> None:
    assert violations(package, forbidden) == []


def test_the_walker_finds_nested_relative_and_from_imports() -> None:
    """So that the rules can fail: imports inside functions, relative ones, `from x import y`."""
    source = (
        "from __future__ import annotations\n"
        "def f():\n    from aiortc import RTCPeerConnection\n"
        "from .. import rtc\n"
        "from ..http.whep import router\n"
    )
    names = {name for _, name in imports_of(source, "relay.media")}
    assert {"aiortc", "relay.rtc", "relay.http.whep"} <= names
    media_rule = dict(RULES)["relay.media"]
    assert {p for p in media_rule for n in names if reaches(n, p)} == {
        "aiortc",
        "relay.rtc",
        "relay.http",
    }
