// Reads the machine-readable stamp that relay/media/stamps.py draws into the top of a picture:
// 80 black/white blocks = 8 sync bits, a 24-bit frame counter, the 40-bit send time in ms and an
// 8-bit checksum. Glass-to-glass latency = now - send time (same clock, e.g. the same host).

const SYNC = 0b10110010;
const BLOCKS = 80;
const MS_MOD = 2 ** 40;

function checksum(counter, sentMs) {
  let sum = (counter >> 16) + ((counter >> 8) & 0xff) + (counter & 0xff);
  let v = sentMs;
  for (let i = 0; i < 5; i += 1) {
    sum += v % 256;
    v = Math.floor(v / 256);
  }
  return sum & 0xff;
}

/** Decodes 80 bits (array of 0/1); returns {counter, sentMs} or null. */
export function decodeBits(bits) {
  const field = (start, width) => {
    let v = 0;
    for (let i = start; i < start + width; i += 1) v = v * 2 + bits[i];
    return v;
  };
  const sync = field(0, 8);
  const counter = field(8, 24);
  const sentMs = field(32, 40);
  const check = field(72, 8);
  if (sync !== SYNC || check !== checksum(counter, sentMs)) return null;
  return { counter, sentMs };
}

export class StampReader {
  constructor() {
    this.canvas = document.createElement('canvas');
    this.ctx = null;
  }

  /** The stamp in the video's current frame, or null. */
  read(video) {
    const width = video.videoWidth;
    const height = video.videoHeight;
    const block = Math.floor(width / BLOCKS);
    const band = Math.max(block, 8);
    if (block < 2 || height < band) return null;
    if (this.canvas.width !== width || this.canvas.height !== band) {
      this.canvas.width = width;
      this.canvas.height = band;
      this.ctx = this.canvas.getContext('2d', { willReadFrequently: true });
    }
    const y = Math.floor(band / 2);
    this.ctx.drawImage(video, 0, 0, width, band, 0, 0, width, band);
    const row = this.ctx.getImageData(0, y, width, 1).data;
    const bits = new Array(BLOCKS);
    for (let i = 0; i < BLOCKS; i += 1) {
      const x = i * block + Math.floor(block / 2);
      const luma = 0.299 * row[4 * x] + 0.587 * row[4 * x + 1] + 0.114 * row[4 * x + 2];
      bits[i] = luma > 128 ? 1 : 0;
    }
    return decodeBits(bits);
  }
}

/** Milliseconds from the stamped send time to `nowMs` (wall clock), modulo the 40-bit range. */
export function latencyMs(stamp, nowMs) {
  return (((nowMs - stamp.sentMs) % MS_MOD) + MS_MOD) % MS_MOD;
}
