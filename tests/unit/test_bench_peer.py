"""bench.peer's builders: the Janus configuration and the two ffmpeg sources (pure functions)."""

from __future__ import annotations

from pathlib import Path

from bench.janus import JanusPorts, janus_jcfg, streaming_jcfg, write_janus_config
from bench.peer import Source, rtp_source_argv, whip_source_argv


def test_janus_configuration_loads_one_plugin_offers_loopback_and_sets_event_loops(
    tmp_path: Path,
) -> None:
    ports = JanusPorts(8088, 20000, 20002)
    main = write_janus_config(tmp_path, ports, event_loops=1)
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["libjanus_streaming.so"]
    assert sorted(p.name for p in (tmp_path / "transports").iterdir()) == ["libjanus_http.so"]
    text = main.read_text()
    assert "event_loops = 1" in text and 'ice_enforce_list = "lo"' in text
    assert "event_loops" not in janus_jcfg(tmp_path, event_loops=0)  # Janus's own default
    mount = streaming_jcfg(ports)
    assert "port = 20000 pt = 96" in mount and "port = 20002 pt = 111" in mount
    assert "port = 8088" in (tmp_path / "janus.transport.http.jcfg").read_text()


def test_the_two_sources_encode_alike() -> None:
    """The same encoder settings reach both servers; RTP maps one stream per output."""
    src = Source(kbps=1200)
    rtp = rtp_source_argv("ffmpeg", src, "127.0.0.1", 20000, 20002)
    whip = whip_source_argv("ffmpeg", src, "http://127.0.0.1:1/whip/bench", "tok")
    for argv in (rtp, whip):
        for flag, value in (("-b:v", "1200k"), ("-profile:v", "baseline"), ("-c:a", "libopus")):
            assert argv[argv.index(flag) + 1] == value, (argv, flag)
    assert [rtp[i + 1] for i, a in enumerate(rtp) if a == "-map"] == ["0:v", "1:a"]
    assert rtp[rtp.index("-map") + 1 :].count("rtp://127.0.0.1:20000?pkt_size=1200") == 1
    assert "whip" in whip and whip[whip.index("-authorization") + 1] == "tok"
