"""Forward error correction for browser viewers: ULPFEC (RFC 5109) in RED (RFC 2198), sans I/O.

A browser that negotiated ``red`` and ``ulpfec`` (libwebrtc: every Chromium and Safari) repairs
a lost packet from XOR parity packets without waiting a round trip for a retransmission. How the
receiver wants it (libwebrtc's ``RtpVideoStreamReceiver2`` and ``UlpfecReceiver``): only packets
of the RED payload type reach its ULPFEC decoder, so the protected media go in RED too (a 1-byte
RED header: the media payload type, F bit clear), and each parity packet is a RED packet whose
block has the ulpfec payload type, in the media's SSRC and sequence space. The decoder takes a
RED media packet back to plain RTP (header as received, payload type restored, the RED byte
dropped) and XORs from byte 12 on: CSRCs, header extensions, payload and padding, as
``ForwardErrorCorrection::GenerateFecPayloads`` does on the sender's side.

Parity groups here are interleaved: with ``m`` parity packets over a block of ``n`` media
packets, parity packet ``j`` protects the media packets ``i`` with ``i % m == j``, so any single
loss per group is repaired and a burst of up to ``m`` consecutive losses too. A block is at most
48 packets (the long ULPFEC mask). A block covers one or more whole frames: parity goes out after
a frame's last packet, once ``protection`` says enough media is pending (a 720p delta frame is
5-6 packets: a parity packet per frame would be 20 % on a link that loses 1 %).

``FecPlan`` holds one viewer's state (what is pending, the level); ``encode`` is the packet
work. H264 has no picture id, so libwebrtc's receiver waits for every sequence number before
a delta frame: a lost parity packet must be retransmitted like media (the sender keeps them in
its history), which is why libwebrtc itself switches ULPFEC off for H264 with NACK; here the
parity is resent on NACK instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct

MAX_BLOCK = 48
"""Media packets one ULPFEC mask can name (the long mask, L bit set)."""
MAX_FRAMES = 3
"""Frames whose media may wait for their parity (at 30 fps: 100 ms, under one NACK round)."""
FEC_HEADER = 10
RED_HEADER = 1
ON_LOSS = 0.01
"""Loss (0..1) from which a viewer gets parity; below ``OFF_LOSS`` it stops (hysteresis)."""
OFF_LOSS = 0.005
PROTECTION_TABLE: tuple[tuple[float, int, int], ...] = (
    # (loss up to, media packets per parity packet for delta frames, for keyframes)
    (0.03, 10, 5),
    (0.06, 6, 3),
    (0.10, 4, 2),
    (0.20, 3, 2),
)
"""How many media packets share one parity packet, by the viewer's loss: at loss ``p`` a group
of ``k`` media packets and its parity loses two or more with probability ~``C(k+1, 2) p^2``
(at 5 % and k=6: 5 %; unprotected, a 6-packet frame loses one 26 % of the time). Keyframes get
twice the parity (libwebrtc boosts them likewise): every later frame waits on them. Above the
last row the loss is the link overrun, not random: parity would only add to it."""

_U16 = Struct("!H")
_U32 = Struct("!I")


def protection(loss: float, *, on: bool) -> tuple[int, int] | None:
    """(media packets per parity packet for delta frames, for keyframes) at ``loss``, or None
    for no parity; ``on``: the viewer gets parity now (it stops only below ``OFF_LOSS``)."""
    if loss < (OFF_LOSS if on else ON_LOSS):
        return None
    for limit, delta, key in PROTECTION_TABLE:
        if loss <= limit:
            return delta, key
    return None


def rtp_header_length(packet: bytes | bytearray) -> int:
    """Bytes before the payload: fixed header, CSRCs and the extension block."""
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        length += 4 + 4 * _U16.unpack_from(packet, length + 2)[0]
    return length


def red_wrap(header: bytes, payload: bytes, media_pt: int) -> bytes:
    """A media payload as a RED packet's single primary block (RFC 2198: F bit clear)."""
    return header + bytes((media_pt & 0x7F,)) + payload


def unwrap_red(packet: bytes | bytearray) -> bytes:
    """What libwebrtc's ULPFEC decoder protects of a RED media packet: its header with the
    block's payload type in place of RED's, and the payload after the RED byte."""
    head = rtp_header_length(packet)
    pt = packet[head] & 0x7F
    out = bytearray(packet[:head])
    out[1] = (out[1] & 0x80) | pt
    out += packet[head + RED_HEADER :]
    return bytes(out)


def masks(count: int, groups: int) -> list[int]:
    """Interleaved parity masks over ``count`` packets: bit ``i`` (from the most significant of
    a ``mask_bits(count)``-bit mask) of mask ``j`` set when ``i % groups == j``."""
    bits = mask_bits(count)
    out = []
    for j in range(groups):
        mask = 0
        for i in range(j, count, groups):
            mask |= 1 << (bits - 1 - i)
        out.append(mask)
    return out


def mask_bits(count: int) -> int:
    return 16 if count <= 16 else 48


def fec_payload(media: list[bytes], mask: int, bits: int, seq_base: int) -> bytes:
    """One ULPFEC packet (FEC header, level-0 ULP header, parity) over the plain RTP packets
    ``media`` (the i-th numbered ``seq_base + i``) whose mask bit ``i`` is set."""
    chosen = [p for i, p in enumerate(media) if mask >> (bits - 1 - i) & 1]
    longest = max(len(p) for p in chosen) - 12
    parity = 0
    b0 = b1 = 0
    ts = 0
    length = 0
    for p in chosen:
        b0 ^= p[0]
        b1 ^= p[1]
        ts ^= _U32.unpack_from(p, 4)[0]
        length ^= len(p) - 12
        body = p[12:]
        parity ^= int.from_bytes(body + bytes(longest - len(body)), "big")
    long_mask = bits == 48
    head = bytearray(FEC_HEADER + 2 + bits // 8)
    head[0] = (b0 & 0x3F) | (0x40 if long_mask else 0)  # E=0, L, P, X, CC
    head[1] = b1  # M, PT recovery
    _U16.pack_into(head, 2, seq_base)
    _U32.pack_into(head, 4, ts)
    _U16.pack_into(head, 8, length)
    _U16.pack_into(head, 10, longest)  # protection length: the whole parity
    head[12:] = mask.to_bytes(bits // 8, "big")
    return bytes(head) + parity.to_bytes(longest, "big")


Parity = Callable[[list[bytes], int, int, int], bytes]
"""``fec_payload``'s signature: the C one (``relay.rtc._srtp_writer.ulpfec_parity``) or it."""


def encode(
    media: list[bytes], seq_base: int, groups: int, parity: Parity = fec_payload
) -> list[bytes]:
    """ULPFEC packets (without RTP header or RED byte) for the plain RTP packets ``media``
    numbered from ``seq_base``: ``groups`` interleaved parity packets per block of at most
    ``MAX_BLOCK``."""
    out: list[bytes] = []
    for start in range(0, len(media), MAX_BLOCK):
        block = media[start : start + MAX_BLOCK]
        count = min(groups, len(block))
        bits = mask_bits(len(block))
        base = (seq_base + start) & 0xFFFF
        out.extend(parity(block, mask, bits, base) for mask in masks(len(block), count))
    return out


def fec_packet(header_template: bytes, red_pt: int, ulpfec_pt: int, payload: bytes) -> bytes:
    """A parity packet: ``header_template``'s RTP header (the frame's last media packet: same
    SSRC, timestamp and header extensions) with the marker cleared, payload type RED and one
    RED block of the ulpfec payload type. No RTP padding: the parity covers any."""
    head = rtp_header_length(header_template)
    out = bytearray(header_template[:head])
    out[0] &= ~0x20 & 0xFF
    out[1] = red_pt & 0x7F
    out += bytes((ulpfec_pt & 0x7F,))
    out += payload
    return bytes(out)


@dataclass(slots=True)
class FecPlan:
    """One viewer's parity: the level from its loss, and the media still waiting for parity.

    ``on_frame`` takes a frame's packets as the viewer receives them (RED, numbered) and returns
    the parity packets to send right after them (RED, without sequence number: the caller
    numbers them next), or nothing yet."""

    red_pt: int
    ulpfec_pt: int
    parity: Parity = fec_payload
    level: tuple[int, int] | None = None  # (per parity packet: delta, key), None: off
    pending: list[bytes] | None = None  # plain RTP packets since the last parity
    pending_base: int = 0
    pending_frames: int = 0
    keyframe_pending: bool = False
    packets: int = 0  # parity packets made
    octets: int = 0

    def set_loss(self, loss: float) -> None:
        level = protection(loss, on=self.level is not None)
        if level is None:
            self.reset()
        self.level = level

    def reset(self) -> None:
        """Forget the pending media (a frame not sent whole; a new timeline)."""
        self.pending = None
        self.pending_frames = 0
        self.keyframe_pending = False

    def on_frame(self, packets: list[bytes], keyframe: bool, template: bytes) -> list[bytes]:
        level = self.level
        if level is None or not packets:
            return []
        seq = _U16.unpack_from(packets[0], 2)[0]
        pending = self.pending
        plain = [unwrap_red(p) for p in packets]
        if pending is None or (self.pending_base + len(pending)) & 0xFFFF != seq:
            pending, self.pending_base = plain, seq
            self.pending_frames = 0
            self.keyframe_pending = False
        elif len(pending) + len(plain) > MAX_BLOCK:  # the earlier frames get theirs alone
            out = self._flush(template)
            pending, self.pending_base = plain, seq
            self.pending = pending
            self.pending_frames, self.keyframe_pending = 1, keyframe
            return out + self._maybe(level, template)
        else:
            pending = pending + plain
        self.pending = pending
        self.pending_frames += 1
        self.keyframe_pending = self.keyframe_pending or keyframe
        return self._maybe(level, template)

    def _maybe(self, level: tuple[int, int], template: bytes) -> list[bytes]:
        pending = self.pending
        assert pending is not None
        per = level[1] if self.keyframe_pending else level[0]
        if len(pending) >= per or self.pending_frames >= MAX_FRAMES or self.keyframe_pending:
            return self._flush(template)
        return []

    def _flush(self, template: bytes) -> list[bytes]:
        pending = self.pending
        if not pending:
            return []
        level = self.level or (1, 1)
        per = level[1] if self.keyframe_pending else level[0]
        groups = max(1, -(-len(pending) // per))
        payloads = encode(pending, self.pending_base, groups, self.parity)
        self.reset()
        out = [fec_packet(template, self.red_pt, self.ulpfec_pt, p) for p in payloads]
        self.packets += len(out)
        self.octets += sum(map(len, out))
        return out
