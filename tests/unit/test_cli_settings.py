"""Settings: the sample config, unknown keys, env overrides, TLS pairs, the send-loop notice."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_loads_and_matches_defaults() -> None:
    loaded = load_settings(ROOT / "config" / "stagecast.toml")
    assert loaded.model_dump() == Settings().model_dump()


def test_unknown_keys_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("porrt = 1\n")
    with pytest.raises(ValidationError):
        load_settings(bad)
    with pytest.raises(ValidationError):
        Settings(media={"nope": 1})


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("port = 9001\n[media]\nkeyframe_interval = 0.5\n")
    monkeypatch.setenv("STAGECAST_PORT", "9002")
    s = load_settings(cfg)
    assert s.port == 9002 and s.media.keyframe_interval == 0.5


def test_tls_settings_go_in_pairs() -> None:
    with pytest.raises(ValidationError):
        Settings(tls_certfile="cert.pem")
    assert Settings(tls_certfile="c", tls_keyfile="k", port=8443).base_url == (
        "https://127.0.0.1:8443"
    )


def test_ice_tcp_needs_the_single_port_transport() -> None:
    """ICE-TCP streams join sessions of the shared UDP port; per-peer ports have none to join."""
    with pytest.raises(ValidationError, match="tcp_port needs webrtc"):
        Settings(webrtc={"udp_port": 0, "tcp_port": 8443})
    both = Settings(webrtc={"udp_port": 8443, "tcp_port": 8443})
    assert (both.webrtc.udp_port, both.webrtc.tcp_port) == (8443, 8443)


def test_serve_and_relay_say_when_viewers_get_the_python_send_loop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Installed without a C compiler, the node says so at start (on stderr): an operator
    would otherwise only see the extra CPU per viewer. Not when the Python loop was chosen."""
    from gateway import cli

    monkeypatch.setattr("relay.rtc.srtp_writer.NATIVE", False)
    cli._warn_python_send_loop(Settings())
    assert "Python send loop" in capsys.readouterr().err
    cli._warn_python_send_loop(Settings(media={"native_send": False}))  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("relay.rtc.srtp_writer.NATIVE", True)
    cli._warn_python_send_loop(Settings())
    assert capsys.readouterr().err == ""
