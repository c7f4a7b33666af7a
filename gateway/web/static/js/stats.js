// Turns successive RTCStatsReports into rates: bitrate, packet loss, frame rate, audio level.

export class StatsSampler {
  constructor(pc) {
    this.pc = pc;
    this.last = new Map(); // stats id -> {bytes, packets, lost, t}
  }

  rate(id, bytes, packets, lost, t) {
    const prev = this.last.get(id);
    this.last.set(id, { bytes, packets, lost, t });
    if (!prev || t <= prev.t) return { bps: NaN, loss: NaN };
    const bps = ((bytes - prev.bytes) * 8 * 1000) / (t - prev.t);
    const dPackets = packets - prev.packets;
    const dLost = lost - prev.lost;
    const loss = dPackets + dLost > 0 ? (100 * Math.max(0, dLost)) / (dPackets + dLost) : 0;
    return { bps, loss };
  }

  /** Sender side: per kind {bps, fps, width, height, loss, rtt} (loss from the receiver's RR). */
  async outbound() {
    const report = await this.pc.getStats();
    const out = {};
    report.forEach((s) => {
      if (s.type === 'outbound-rtp') {
        // simulcast: one outbound-rtp per layer (rid); the sum, and the largest layer's picture
        const r = this.rate(s.id, s.bytesSent || 0, s.packetsSent || 0, 0, s.timestamp);
        const prev = out[s.kind] || { bps: 0, packets: 0, layers: [] };
        const layer = { rid: s.rid, bps: r.bps, fps: s.framesPerSecond, width: s.frameWidth, height: s.frameHeight };
        const bigger = !prev.width || (s.frameWidth || 0) > prev.width;
        out[s.kind] = {
          ...prev,
          bps: (prev.bps || 0) + (r.bps || 0),
          packets: (prev.packets || 0) + (s.packetsSent || 0),
          layers: [...prev.layers, layer],
          ...(bigger ? { fps: s.framesPerSecond, width: s.frameWidth, height: s.frameHeight } : {}),
        };
      }
    });
    report.forEach((s) => {
      if (s.type === 'remote-inbound-rtp' && out[s.kind]) {
        const sent = out[s.kind].packets || 0;
        out[s.kind].lossTotal = sent > 0 ? (100 * Math.max(0, s.packetsLost || 0)) / sent : 0;
        out[s.kind].loss = Number.isFinite(s.fractionLost) ? 100 * s.fractionLost : NaN;
        out[s.kind].rtt = Number.isFinite(s.roundTripTime) ? 1000 * s.roundTripTime : NaN;
      }
    });
    return out;
  }

  /** Receiver side: per kind {bps, loss, fps, width, height, jitter, audioLevel, energy}. */
  async inbound() {
    const report = await this.pc.getStats();
    const out = {};
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const lost = Math.max(0, s.packetsLost || 0);
      const r = this.rate(s.id, s.bytesReceived || 0, s.packetsReceived || 0, lost, s.timestamp);
      out[s.kind] = {
        bps: r.bps,
        loss: r.loss,
        packets: s.packetsReceived || 0,
        lost,
        fps: s.framesPerSecond,
        width: s.frameWidth,
        height: s.frameHeight,
        framesDecoded: s.framesDecoded,
        jitter: Number.isFinite(s.jitter) ? 1000 * s.jitter : NaN,
        audioLevel: s.audioLevel,
        energy: s.totalAudioEnergy,
      };
    });
    return out;
  }
}
