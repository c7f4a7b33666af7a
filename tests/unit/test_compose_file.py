"""deploy/compose.yaml and deploy/Dockerfile read back: no host networking, each node publishes
the HTTP, UDP and ICE-TCP ports it binds, and its environment (with compose's ${VAR:-default}
expanded) loads into Settings with the announced address."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NODES = ("origin", "relay-a", "relay-b")


def expand(value: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name, op, default = m[1], m[2], m[3] or ""
        if name in env:
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {default}")
        return default

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def services() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    found: dict[str, Any] = doc["services"]
    return found


def node_settings(
    service: dict[str, Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, expand(str(value), env))
    return Settings()


def test_no_host_networking_and_every_bound_port_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"STAGECAST_TOKEN_SECRET": "s" * 40, "PUBLIC_IP": "203.0.113.9"}
    found = services()
    assert not [name for name, s in found.items() if "network_mode" in s]
    for name in NODES:
        settings = node_settings(found[name], env, monkeypatch)
        published = set(found[name]["ports"])
        http, udp, tcp = settings.port, settings.webrtc.udp_port, settings.webrtc.tcp_port
        assert udp and tcp
        assert published == {f"{http}:{http}", f"{udp}:{udp}/udp", f"{tcp}:{tcp}/tcp"}
        assert settings.webrtc.announce == ("203.0.113.9", name)  # public, then compose's name
        assert settings.public_url == f"http://203.0.113.9:{http}"
        assert settings.cluster.redis_url == "redis://redis:6379/0"
    with pytest.raises(KeyError, match="STAGECAST_TOKEN_SECRET"):
        node_settings(found["origin"], {}, monkeypatch)


def test_dockerfile_exposes_the_ports_its_environment_binds() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    (expose,) = re.findall(r"^EXPOSE (.+)$", text, re.M)
    udp = re.search(r"^\s+STAGECAST_WEBRTC__UDP_PORT=(\d+)", text, re.M)
    tcp = re.search(r"^\s+STAGECAST_WEBRTC__TCP_PORT=(\d+)", text, re.M)
    assert udp and tcp
    assert set(expose.split()) == {"8080", f"{udp[1]}/udp", f"{tcp[1]}/tcp"}
