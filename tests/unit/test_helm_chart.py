"""deploy/helm/stagecast rendered and linted by Helm itself (its Go SDK through the
``helm-python-sdk`` wheel; no cluster, no helm binary), and what it renders read back: the
manifests' shape, the fallback (hostNetwork) and the single-port mode, and a node's settings
(the ConfigMap's stagecast.toml + the Deployment's env + the Secret) load into ``Settings``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm  # helm-python-sdk, a dev dependency: Helm's Go SDK in a wheel
import pytest
import yaml

from gateway.settings import Settings, load_settings, node_ice

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "stagecast"
TOKEN = "t" * 40
TURN_SECRET = "coturn-static-auth-secret-value"


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"secrets": {"tokenSecret": TOKEN, "operatorKey": "k" * 24}}
    for key, value in values.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    out = helm.Chart.load(CHART).render(base, name="sc", namespace="live")
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def node_settings(
    docs: list[dict[str, Any]], deployment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """What the node in ``deployment`` would load: its env (secret refs read from the chart's
    Secret, the downward API's values made up, $(VAR) expanded as Kubernetes does) over the
    ConfigMap's stagecast.toml."""
    secret = one(docs, "Secret", "sc-stagecast")["stringData"]
    fields = {"status.hostIP": "203.0.113.7", "spec.nodeName": "n1", "status.podIP": "10.0.0.9"}
    fields["metadata.name"] = "sc-stagecast-relay-abc"
    env: dict[str, str] = {}
    for var in container(one(docs, "Deployment", deployment))["env"]:
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["key"] not in secret:
                assert ref.get("optional"), ref
                continue
            value = secret[ref["key"]]
        else:
            value = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        env[var["name"]] = value
    toml = tmp_path / "stagecast.toml"
    toml.write_text(one(docs, "ConfigMap", "sc-stagecast")["data"]["stagecast.toml"])
    for name, value in env.items():
        if name.startswith("STAGECAST_") and name != "STAGECAST_CONFIG":
            monkeypatch.setenv(name, value)
    return load_settings(toml)


def test_helm_lints_the_chart_clean() -> None:
    report = helm.lint(CHART, {"secrets": {"tokenSecret": TOKEN}}, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_is_single_port_without_hostnetwork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default each node binds one UDP and one ICE-TCP port on its Kubernetes node
    (hostPort) and announces that node's address: no hostNetwork."""
    docs = render({})
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "sc-stagecast"),
        ("Deployment", "sc-stagecast-origin"),
        ("Deployment", "sc-stagecast-redis"),
        ("Deployment", "sc-stagecast-relay"),
        ("HorizontalPodAutoscaler", "sc-stagecast-relay"),
        ("PodDisruptionBudget", "sc-stagecast-relay"),
        ("Secret", "sc-stagecast"),
        ("Service", "sc-stagecast-origin"),
        ("Service", "sc-stagecast-redis"),
    ]
    for name in ("sc-stagecast-origin", "sc-stagecast-relay"):
        pod = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert "hostNetwork" not in pod
    relay = container(one(docs, "Deployment", "sc-stagecast-relay"))
    assert relay["args"] == ["relay", "--upstream", "http://sc-stagecast-origin:8080"]
    settings = node_settings(docs, "sc-stagecast-relay", tmp_path, monkeypatch)
    assert settings.auth.token_secret == TOKEN
    assert settings.cluster.redis_url == "redis://sc-stagecast-redis:6379/0"
    assert settings.cluster.max_viewers == 140 and settings.port == 8081
    assert settings.public_url == "http://203.0.113.7:8081"
    assert settings.turn.urls == ()
    assert (settings.webrtc.udp_port, settings.webrtc.tcp_port) == (50001, 50001)
    assert settings.webrtc.announce == ("203.0.113.7",)  # this pod's node
    origin = node_settings(docs, "sc-stagecast-origin", tmp_path, monkeypatch)
    assert (origin.webrtc.udp_port, origin.webrtc.tcp_port) == (50000, 50000)


def test_hostnetwork_fallback_has_per_peer_ports_and_no_ice_tcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render({"webrtc": {"singlePort": False}})
    for name in ("sc-stagecast-origin", "sc-stagecast-relay"):
        pod = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        assert [p["name"] for p in pod["containers"][0]["ports"]] == ["http"]
        settings = node_settings(docs, name, tmp_path, monkeypatch)
        assert (settings.webrtc.udp_port, settings.webrtc.tcp_port) == (0, 0)
        assert settings.webrtc.announce == ()


def test_single_port_mode_exposes_one_udp_and_one_tcp_port_per_node() -> None:
    docs = render({"webrtc": {"announce": ["$(NODE_NAME).media.example"]}})
    for name, udp in (("sc-stagecast-origin", 50000), ("sc-stagecast-relay", 50001)):
        pod = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert "hostNetwork" not in pod
        ports = {
            (p.get("protocol", "TCP"), p["containerPort"]): p for p in pod["containers"][0]["ports"]
        }
        assert ports[("UDP", udp)]["hostPort"] == udp
        assert ports[("TCP", udp)]["hostPort"] == udp  # ICE-TCP on the same number
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["STAGECAST_WEBRTC__UDP_PORT"] == str(udp)
        assert env["STAGECAST_WEBRTC__TCP_PORT"] == str(udp)
        assert env["STAGECAST_WEBRTC__ANNOUNCE"] == '["$(NODE_NAME).media.example"]'
        # $(NODE_NAME) is expanded by Kubernetes only if it is defined earlier in the list
        order = [e["name"] for e in pod["containers"][0]["env"]]
        assert order.index("NODE_NAME") < order.index("STAGECAST_WEBRTC__ANNOUNCE")
    service = one(docs, "Service", "sc-stagecast-origin")["spec"]
    assert [p["name"] for p in service["ports"]] == ["http"]  # media through the node's ports
    no_tcp = render({"relay": {"ports": {"http": 8081, "udp": 50001, "tcp": 0}}})
    pod = one(no_tcp, "Deployment", "sc-stagecast-relay")["spec"]["template"]["spec"]
    assert [p["name"] for p in pod["containers"][0]["ports"]] == ["http", "media-udp"]


def test_origin_service_can_carry_the_media_ports() -> None:
    docs = render(
        {
            "webrtc": {"announce": ["198.51.100.20"]},
            "origin": {"service": {"type": "LoadBalancer", "mediaPorts": True}},
        }
    )
    service = one(docs, "Service", "sc-stagecast-origin")["spec"]
    assert service["type"] == "LoadBalancer"
    assert [(p["name"], p.get("protocol", "TCP"), p["port"]) for p in service["ports"]] == [
        ("http", "TCP", 8080),
        ("media-udp", "UDP", 50000),
        ("media-tcp", "TCP", 50000),
    ]


def test_turn_secret_only_in_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(
        {
            "turn": {"urls": ["turn:turn.example.net:3478"], "ttl": 3600, "nodeRelay": True},
            "secrets": {"tokenSecret": TOKEN, "turnSecret": TURN_SECRET},
        }
    )
    holders = [d["kind"] for d in docs if TURN_SECRET in yaml.safe_dump(d)]
    assert holders == ["Secret"]
    settings = node_settings(docs, "sc-stagecast-origin", tmp_path, monkeypatch)
    assert settings.turn.urls == ("turn:turn.example.net:3478",)
    assert settings.turn.secret == TURN_SECRET and settings.turn.ttl == 3600
    assert settings.turn.node_relay and node_ice(settings) != settings.ice_servers


def test_required_values_are_enforced() -> None:
    with pytest.raises(helm.HelmError, match="tokenSecret"):
        helm.Chart.load(CHART).render({}, name="sc")
    with pytest.raises(helm.HelmError, match="turnSecret"):
        render({"turn": {"urls": ["turn:t.example"]}})
    # an existing Secret: none is made, every reference names it
    docs = render({"secrets": {"existingSecret": "mine", "tokenSecret": ""}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in docs
        if d["kind"] == "Deployment"
        for e in container(d).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"mine"}
