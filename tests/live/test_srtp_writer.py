"""The C send loop against the Python one: same datagrams on the wire, same errors."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import struct
import sysconfig
from array import array
from pathlib import Path

import pytest
from pylibsrtp import Policy, Session

from relay.media.estimator import BandwidthEstimator
from relay.rtc.srtp_writer import NATIVE, PySrtpWriter, SrtpWriter, new_srtp_writer

KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80: 16-byte key + 14-byte salt
SSRC = 0x11223344


def _session(direction: int = Policy.SSRC_ANY_OUTBOUND) -> Session:
    return Session(Policy(key=KEY, ssrc_type=direction))


def _templates(sizes: list[int]) -> tuple[bytes, ...]:
    """RTP packets with zero sequence number, timestamp and SSRC, marker on the last."""
    out = []
    for i, size in enumerate(sizes):
        marker = 0x80 if i == len(sizes) - 1 else 0
        out.append(bytes([0x80, marker | 96]) + bytes(10) + bytes([i % 251]) * (size - 12))
    return tuple(out)


def _pair(family: int) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    rx = socket.socket(family, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    rx.settimeout(2)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    tx.setblocking(False)
    return rx, tx, rx.getsockname()[:2]


def _received(rx: socket.socket, count: int) -> list[bytes]:
    return [rx.recv(65536) for _ in range(count)]


FRAME = [1200, 1200, 1200, 900, 300, 1100, 1100, 80]  # runs: GSO of 4, single, GSO of 2, single
RUNS = ((0, 4), (4, 5), (5, 7), (7, 8))


@pytest.mark.skipif(not NATIVE, reason="the C send loop is not built")
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "datagrams"])
def test_c_loop_sends_what_the_python_loop_sends(family: int, gso: bool) -> None:
    templates = _templates(FRAME)
    wire: dict[str, list[bytes]] = {}
    for native in (True, False):
        rx, tx, addr = _pair(family)
        with rx, tx:
            writer = new_srtp_writer(_session(), tx, addr, native=native)
            assert isinstance(writer, PySrtpWriter) is not native
            sends = writer.send(templates, RUNS, 0xFFFE, 0xFFFFFFF0, SSRC, gso)
            assert sends == (2 if gso else 0) and not writer.gso_refused
            wire["c" if native else "py"] = _received(rx, len(templates))
    assert wire["c"] == wire["py"]
    inbound = _session(Policy.SSRC_ANY_INBOUND)
    for i, datagram in enumerate(wire["c"]):
        plain = inbound.unprotect(datagram)
        seq, ts, ssrc = struct.unpack_from("!HII", plain, 2)
        assert (seq, ts, ssrc) == ((0xFFFE + i) & 0xFFFF, 0xFFFFFFF0, SSRC)  # wraps at 2^16
        assert plain[12:] == templates[i][12:] and plain[1] == templates[i][1]


@pytest.mark.skipif(not NATIVE, reason="the C send loop is not built")
def test_both_loops_write_transport_wide_sequence_numbers() -> None:
    """Packet i of the frame gets ``twcc_seq + i`` (wrapping at 2^16) at the extension's offset;
    an offset past a packet is refused before anything is sent."""
    ext = bytes([0x90, 96]) + bytes(10) + bytes([0xBE, 0xDE, 0, 1, 0x51, 0, 0, 0])  # id 5, len 2
    templates = tuple(ext + bytes([i]) * size for i, size in enumerate(FRAME))
    wire: dict[bool, list[bytes]] = {}
    for native in (True, False):
        rx, tx, addr = _pair(socket.AF_INET)
        with rx, tx:
            writer = new_srtp_writer(_session(), tx, addr, native=native)
            writer.send(templates, RUNS, 7, 8, SSRC, True, 17, 0xFFFD)
            wire[native] = _received(rx, len(templates))
            with pytest.raises(ValueError):
                writer.send(_templates([40]), ((0, 1),), 0, 0, SSRC, True, 39, 0)
    assert wire[True] == wire[False]
    inbound = _session(Policy.SSRC_ANY_INBOUND)
    for i, datagram in enumerate(wire[True]):
        plain = inbound.unprotect(datagram)
        assert struct.unpack_from("!H", plain, 17)[0] == (0xFFFD + i) & 0xFFFF
        assert plain[19:] == templates[i][19:]


@pytest.mark.parametrize("native", [True, False], ids=["c-loop", "python-loop"])
def test_gso_refusal_sends_the_run_datagram_by_datagram(native: bool) -> None:
    if native and not NATIVE:
        pytest.skip("the C send loop is not built")
    templates = _templates(FRAME)
    rx, tx, addr = _pair(socket.AF_INET)
    with rx, tx:
        tx.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK: the kernel refuses UDP GSO
        writer = new_srtp_writer(_session(), tx, addr, native=native)
        assert writer.send(templates, RUNS, 1, 2, SSRC, True) == 0
        assert writer.gso_refused
        sizes = [len(d) for d in _received(rx, len(templates))]
    assert sizes == [n + 10 for n in FRAME]  # each its own datagram, with its 10-byte tag


@pytest.mark.skipif(not NATIVE, reason="the C send loop is not built")
def test_c_loop_refuses_bad_input_and_a_closed_socket() -> None:
    rx, tx, addr = _pair(socket.AF_INET)
    with rx:
        writer: SrtpWriter = new_srtp_writer(_session(), tx, addr)
        templates = _templates([200, 200])
        with pytest.raises(ValueError):
            writer.send(templates, ((0, 3),), 0, 0, SSRC, True)  # past the frame's packets
        with pytest.raises(ValueError):
            writer.send(_templates([40_000, 40_000]), ((0, 2),), 0, 0, SSRC, True)
        with pytest.raises(TypeError):
            writer.send([bytes(20)], ((0, 1),), 0, 0, SSRC, True)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            writer.send((bytearray(20),), ((0, 1),), 0, 0, SSRC, True)  # type: ignore[arg-type]
        with pytest.raises(OverflowError):
            writer.send(templates, ((0, 2),), 0x10000, 0, SSRC, True)  # seq is 16 bits
        with pytest.raises(OverflowError):
            writer.send(templates, ((0, 2),), -1, 0, SSRC, True)
        with pytest.raises(ValueError):
            writer.send((bytes(8),), ((0, 1),), 0, 0, SSRC, True)  # shorter than an RTP header
        with pytest.raises(ValueError):
            type(writer)(tx, ("not an address", 9), 1, 1, object())  # type: ignore[call-arg]
        blank = type(writer).__new__(type(writer))  # never initialised: an error, not a crash
        with pytest.raises(RuntimeError):
            blank.send(templates, ((0, 2),), 0, 0, SSRC, True)
        # the descriptor is reused by the next socket; the writer must not send on it
        tx.close()
        reuse = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with reuse, pytest.raises(OSError):
            writer.send(templates, ((0, 2),), 0, 0, SSRC, True)
        rx.settimeout(0.2)
        with pytest.raises(TimeoutError):
            rx.recv(65536)


def test_python_fallback_is_chosen_without_the_c_loop() -> None:
    """Asked for, or for an address the C loop does not parse (a zoned link-local IPv6 one)."""
    rx, tx, addr = _pair(socket.AF_INET)
    with rx, tx:
        assert isinstance(new_srtp_writer(_session(), tx, addr, native=False), PySrtpWriter)
        zoned = new_srtp_writer(_session(), tx, ("fe80::1%lo", 9))
        assert isinstance(zoned, PySrtpWriter)
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which("cc") and headers.exists():  # then pip install built it
        assert NATIVE


TWCC_FRAME = tuple(
    bytes([0x90, 96]) + bytes(10) + bytes([0xBE, 0xDE, 0, 1, 0x51, 0, 0, 0]) + bytes([i]) * n
    for i, n in enumerate(FRAME)
)  # the transport-wide number (id 5) at offset 17


@pytest.mark.parametrize("native", [True, False], ids=["c-loop", "python-loop"])
def test_send_recorded_is_record_send_and_meter_in_one_call(native: bool) -> None:
    """``send_recorded`` leaves the estimator as ``record`` + ``send`` + ``add_sent`` did (the
    history, the next number across its wrap, the meter over bucket rolls and a gap, and
    an audio sender's packets numbered between) and puts the same datagrams on the wire."""
    if native and not NATIVE:
        pytest.skip("the C send loop is not built")
    ours, reference = BandwidthEstimator(), BandwidthEstimator()
    for est in (ours, reference):
        est.next_sequence = 0xFFFA
    sizes = tuple(map(len, TWCC_FRAME))
    wire: dict[bool, list[bytes]] = {}
    for recorded, est in ((True, ours), (False, reference)):
        rx, tx, addr = _pair(socket.AF_INET)
        with rx, tx:
            writer = new_srtp_writer(_session(), tx, addr, native=native)
            writer.record_into(est.send_log)
            for k, now in enumerate((100.01, 100.02, 100.17, 100.55, 103.3, 103.31, 104.05)):
                size = 5000 + k
                if recorded:
                    writer.send_recorded(TWCC_FRAME, RUNS, 8 * k, 9, SSRC, True, 17, now, size)
                else:
                    first = est.record(sizes, now)
                    writer.send(TWCC_FRAME, RUNS, 8 * k, 9, SSRC, True, 17, first)
                    est.add_sent(now, size)
                est.record((120,), now)  # the transport's audio sender, in between
            wire[recorded] = _received(rx, 7 * len(TWCC_FRAME))
    assert wire[True] == wire[False]
    assert ours.next_sequence == reference.next_sequence == (0xFFFA + 7 * 9) & 0xFFFF
    assert ours._seq == reference._seq and ours._size == reference._size
    assert ours._time == reference._time and ours._acked == reference._acked
    assert ours.send_log.meter.state == reference.send_log.meter.state
    assert ours.sent_bps(104.2) == reference.sent_bps(104.2) > 0


@pytest.mark.skipif(not NATIVE, reason="the C send loop is not built")
def test_send_recorded_refuses_an_unbound_writer_and_bad_logs() -> None:
    rx, tx, addr = _pair(socket.AF_INET)
    with rx, tx:
        writer = new_srtp_writer(_session(), tx, addr)
        with pytest.raises(RuntimeError):
            writer.send_recorded(TWCC_FRAME, RUNS, 0, 0, SSRC, True, 17, 1.0, 10)
        log = BandwidthEstimator().send_log
        with pytest.raises(ValueError):
            writer.record_into(dataclasses.replace(log, next=array("l", [0, 0])))
        with pytest.raises(ValueError):
            writer.record_into(dataclasses.replace(log, times=array("d", [0.0]) * 1000))
        writer.record_into(log)
        with pytest.raises(ValueError):  # no transport-wide number's offset
            writer.send_recorded(TWCC_FRAME, RUNS, 0, 0, SSRC, True, 0, 1.0, 10)
        with pytest.raises(TypeError):  # nothing recorded for a frame that cannot go out
            writer.send_recorded((b"x" * 20, "y"), ((0, 2),), 0, 0, SSRC, True, 17, 1.0, 10)
        assert log.next[0] == 0
