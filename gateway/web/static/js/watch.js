// Watch page: a WHEP player. Mute/unmute, reconnect on failure, wait while the room is offline,
// and a latency readout when frames carry stamps (relay/media/stamps.py). State: window.stagecast.
import {
  endSession,
  HttpError,
  isLive,
  negotiate,
  newPeerConnection,
  problemText,
} from './signaling.js';
import { RoomChat } from './chat.js';
import { GuestStage } from './guest.js';
import { latencyMs, StampReader } from './stamps.js';
import { StatsSampler } from './stats.js';
import {
  $,
  endpointUrl,
  formatBitrate,
  formatMs,
  formatPercent,
  params,
  setStatus,
  sleep,
  validRoom,
} from './util.js';

const ui = {
  player: $('#player'),
  overlay: $('#overlay'),
  status: $('#status'),
  mute: $('#mute'),
  level: $('#level'),
  form: $('#form'),
  room: $('#room'),
  token: $('#token'),
  leave: $('#leave'),
  message: $('#message'),
  video: $('#r-video'),
  loss: $('#r-loss'),
  ttff: $('#r-ttff'),
  latency: $('#r-latency'),
};

// Everything a test or an embedding page may want to read.
const state = {
  state: 'idle',
  connects: 0, // sessions opened (reconnects included)
  framesPresented: 0, // requestVideoFrameCallback count over the page's life
  firstFrameMs: null, // time to first frame of the current session (from the offer)
  timing: {}, // the current session's milestones in ms from the offer: answer, connected
  endedCount: 0, // times the stream ended while we watched
  latencyMs: null, // median glass-to-glass latency of recent stamped frames
  stampedFrames: 0,
  audioEnergy: 0, // sum of mean-square audio level x seconds, over the page's life
  audioLevel: 0, // recent RMS level (0..1)
  stats: {},
  error: null,
};
Object.defineProperty(state, 'pc', { get: () => current && current.pc }); // for debugging
window.stagecast = state;

let run = 0; // incremented to cancel the current connect loop
let current = null; // {pc, session, stream, sampler, startedAt, gotFrame}
const reader = new StampReader();
const chat = new RoomChat($('#chat'));
const latencies = [];

// On stage the guest hears the mix-minus (everyone but itself), never the program's audio,
// which carries its own voice back a moment late.
let mutedBeforeStage = null;
const guest = new GuestStage(
  {
    raise: $('#raise'),
    leave: $('#leave-stage'),
    name: $('#guest-name'),
    status: $('#guest-status'),
    self: $('#guest-self'),
    audio: $('#mixminus'),
  },
  (on) => {
    if (on && mutedBeforeStage === null) {
      mutedBeforeStage = ui.player.muted;
      setMuted(true);
    } else if (!on && mutedBeforeStage !== null) {
      setMuted(mutedBeforeStage);
      mutedBeforeStage = null;
    }
    ui.mute.disabled = on;
  },
);
state.stage = guest.state;

function show(next, text, overlay = null, message = '') {
  state.state = next;
  setStatus(ui.status, next, text);
  ui.overlay.hidden = overlay === null;
  if (overlay !== null) ui.overlay.textContent = overlay;
  ui.message.textContent = message;
}

function setMuted(muted) {
  ui.player.muted = muted;
  ui.mute.textContent = muted ? 'Unmute' : 'Mute';
}

// Audio level from Web Audio (getStats' audioLevel stays 0 where the browser has no playout
// device, e.g. headless). The AudioContext may only start after a user gesture: the first
// Unmute click resumes it.
const meter = { ctx: null, analyser: null, source: null, buf: null, timer: null, last: 0 };

function meterAttach(stream) {
  if (!stream.getAudioTracks().length || !window.AudioContext) return;
  if (!meter.ctx) {
    meter.ctx = new AudioContext();
    meter.analyser = meter.ctx.createAnalyser();
    meter.analyser.fftSize = 2048;
    meter.buf = new Float32Array(meter.analyser.fftSize);
  }
  if (meter.source) meter.source.disconnect();
  meter.source = meter.ctx.createMediaStreamSource(stream);
  meter.source.connect(meter.analyser);
  meter.ctx.resume().catch(() => {});
  if (!meter.timer) {
    meter.last = performance.now();
    meter.timer = setInterval(meterTick, 100);
  }
}

function meterTick() {
  const now = performance.now();
  const dt = (now - meter.last) / 1000;
  meter.last = now;
  if (!current || meter.ctx.state !== 'running') return;
  meter.analyser.getFloatTimeDomainData(meter.buf);
  let sum = 0;
  for (const v of meter.buf) sum += v * v;
  const rms = Math.sqrt(sum / meter.buf.length);
  state.audioEnergy += rms * rms * dt; // like RTCInboundRtpStreamStats.totalAudioEnergy
  state.audioLevel = Math.max(rms, state.audioLevel * 0.8);
  ui.level.style.width = `${Math.min(100, Math.round(Math.sqrt(state.audioLevel) * 100))}%`;
}

async function toggleMute() {
  setMuted(!ui.player.muted);
  if (meter.ctx) meter.ctx.resume().catch(() => {});
  if (!ui.player.muted) {
    try {
      await ui.player.play();
    } catch {
      setMuted(true);
    }
  }
}

function onVideoFrame(now, meta) {
  const c = current;
  if (!c || ui.player.srcObject !== c.stream) return;
  state.framesPresented += 1;
  if (!c.gotFrame) {
    c.gotFrame = true;
    state.firstFrameMs = performance.now() - c.startedAt;
    ui.ttff.textContent = formatMs(state.firstFrameMs);
    show('playing', 'live');
  }
  // read stamps on at most ~6 frames a second: a canvas read per frame is not free on a phone
  if (meta.presentedFrames % 5 === 0) readStamp();
  ui.player.requestVideoFrameCallback(onVideoFrame);
}

function readStamp() {
  const stamp = reader.read(ui.player);
  if (!stamp) return;
  state.stampedFrames += 1;
  latencies.push(latencyMs(stamp, Date.now()));
  if (latencies.length > 30) latencies.shift();
  const sorted = [...latencies].sort((a, b) => a - b);
  state.latencyMs = sorted[Math.floor(sorted.length / 2)];
  ui.latency.textContent = formatMs(state.latencyMs);
}

async function sampleStats(c) {
  if (c !== current) return;
  const s = await c.sampler.inbound();
  if (c !== current) return;
  state.stats = s;
  const v = s.video || {};
  const a = s.audio || {};
  const size = v.width ? ` · ${v.width}×${v.height}` : '';
  const fps = Number.isFinite(v.fps) ? ` · ${Math.round(v.fps)} fps` : '';
  ui.video.textContent = `${formatBitrate((v.bps || 0) + (a.bps || 0))}${fps}${size}`;
  const losses = [v.loss, a.loss].filter(Number.isFinite);
  ui.loss.textContent = losses.length ? formatPercent(Math.max(...losses)) : '–';
}

function closeCurrent() {
  const c = current;
  current = null;
  if (!c) return null;
  clearInterval(c.timer);
  c.pc.close();
  if (ui.player.srcObject === c.stream) ui.player.srcObject = null;
  if (meter.source) meter.source.disconnect();
  meter.source = null;
  state.audioLevel = 0;
  ui.level.style.width = '0%';
  return c;
}

/** Opens one WHEP session; resolves with why it ended: 'ended' | 'failed' | 'cancelled'. */
async function watchOnce(endpoint, token, myRun) {
  const pc = await newPeerConnection(token);
  const stream = new MediaStream();
  const c = {
    pc,
    stream,
    session: null,
    sampler: new StatsSampler(pc),
    startedAt: performance.now(),
    gotFrame: false,
    timer: null,
    cancel: null,
  };
  current = c;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  // The session is over when the peer connection closes or fails, when the gateway's RTCP BYE
  // ends the tracks (the anchor left), or when we are cancelled; whichever comes first.
  const over = new Promise((resolve) => {
    c.cancel = () => resolve('cancelled');
    let lostTimer = null;
    pc.addEventListener('connectionstatechange', () => {
      const s = pc.connectionState;
      if (s === 'connected') {
        clearTimeout(lostTimer);
        if (state.timing.connected === undefined) {
          state.timing.connected = Math.round(performance.now() - c.startedAt);
        }
      }
      else if (s === 'disconnected') lostTimer = setTimeout(() => resolve('failed'), 3000);
      else if (s === 'failed') resolve('failed');
      else if (s === 'closed') resolve('ended');
    });
    pc.addEventListener('track', (e) => {
      e.track.addEventListener('ended', () => resolve('ended'));
      // The gateway closing our session shows first as the DTLS transport closing (close_notify);
      // ICE would only notice seconds later.
      const dtls = e.receiver.transport;
      if (dtls && !dtls.onstatechange) {
        dtls.onstatechange = () => {
          if (dtls.state === 'closed') resolve('ended');
          else if (dtls.state === 'failed') resolve('failed');
        };
      }
      stream.addTrack(e.track);
      if (e.track.kind === 'audio') meterAttach(stream);
      if (ui.player.srcObject !== stream) {
        ui.player.srcObject = stream;
        ui.player.requestVideoFrameCallback(onVideoFrame);
        ui.player.play().catch(() => {
          setMuted(true); // autoplay with sound refused: play muted, the button unmutes
          ui.player.play().catch(() => {});
        });
      }
    });
  });
  state.connects += 1;
  state.timing = {};
  c.session = await negotiate(pc, endpoint, { token });
  state.timing.gather = Math.round(c.session.gatherMs);
  state.timing.post = Math.round(c.session.postMs);
  state.timing.apply = Math.round(c.session.applyMs);
  state.timing.answer = Math.round(performance.now() - c.startedAt);
  if (myRun !== run) return 'cancelled';
  if (!c.gotFrame) show('connecting', 'connecting…', 'Connecting…');
  c.timer = setInterval(() => sampleStats(c), 1000);
  return over;
}

async function watchLoop(room, token) {
  const myRun = ++run;
  const endpoint = endpointUrl('whep', room);
  let backoff = 500;
  let ended = false; // the stream ended while we watched: say so until it is back
  while (myRun === run) {
    show('connecting', 'connecting…', 'Connecting…');
    let outcome;
    try {
      outcome = await watchOnce(endpoint, token, myRun);
    } catch (err) {
      closeCurrent();
      if (myRun !== run) return;
      if (err instanceof HttpError && err.status === 409) {
        // nothing live yet: wait as long as the gateway asks, then try again
        if (ended) show('ended', 'ended', 'The stream has ended. Waiting for it to come back…');
        else show('waiting', 'offline', 'Waiting for the stream to start…');
        await sleep(1000 * (err.retryAfter || 2));
        continue;
      }
      state.error = problemText(err);
      if (err instanceof HttpError && err.status >= 400 && err.status < 500 && err.status !== 429) {
        show('error', 'error', `Cannot watch: ${state.error}`, state.error);
        return;
      }
      // 429/503 (busy, full) carry Retry-After: never ask again sooner than that
      const waitMs = Math.max(backoff, 1000 * ((err instanceof HttpError && err.retryAfter) || 0));
      if (err instanceof HttpError && (err.status === 429 || err.status === 503)) {
        const again = `The server is busy; trying again in ${Math.round(waitMs / 1000)} s…`;
        show('reconnecting', 'busy', again, state.error);
      } else {
        show('reconnecting', 'reconnecting…', 'Reconnecting…', state.error);
      }
      await sleep(waitMs);
      backoff = Math.min(backoff * 2, 8000);
      continue;
    }
    const c = closeCurrent();
    if (myRun !== run || outcome === 'cancelled') return;
    if (c && c.gotFrame) {
      backoff = 500;
      ended = false;
    }
    // The session is over: did the stream end, or did our connection fail?
    if (await isLive(endpoint, token)) {
      show('reconnecting', 'reconnecting…', 'Reconnecting…');
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 8000);
    } else {
      if (!ended) state.endedCount += 1;
      ended = true;
      show('ended', 'ended', 'The stream has ended. Waiting for it to come back…');
      await sleep(2000);
    }
  }
}

async function leave() {
  run += 1;
  const c = current;
  if (c && c.cancel) c.cancel();
  closeCurrent();
  if (c) await endSession(c.session, ui.token.value.trim());
  show('idle', 'idle', 'Not watching.');
}

function start(event) {
  if (event) event.preventDefault();
  const room = ui.room.value.trim();
  if (!validRoom(room)) {
    show('error', 'error', 'Enter a room name.', 'Room names are 1-64 characters of A-Z a-z 0-9 _ . -, not starting with a dot');
    return;
  }
  const url = new URL(location.href);
  url.searchParams.set('room', room);
  url.searchParams.delete('token'); // keep a token out of the address bar and history
  url.searchParams.delete('access_token');
  url.hash = '';
  history.replaceState(null, '', url);
  const c = current;
  if (c && c.cancel) c.cancel();
  closeCurrent();
  latencies.length = 0;
  state.latencyMs = null;
  ui.latency.textContent = '–';
  ui.ttff.textContent = '–';
  watchLoop(room, ui.token.value.trim());
  chat.join(room, ui.token.value.trim());
  guest.setRoom(room, ui.token.value.trim());
}

function init() {
  const p = params();
  ui.room.value = p.get('room') || 'demo';
  const hash = new URLSearchParams(location.hash.slice(1));
  ui.token.value = hash.get('token') || p.get('token') || p.get('access_token') || '';
  setMuted(p.get('muted') !== '0');
  ui.mute.addEventListener('click', toggleMute);
  ui.form.addEventListener('submit', start);
  ui.leave.addEventListener('click', leave);
  window.addEventListener('pagehide', () => {
    if (current) endSession(current.session, ui.token.value.trim());
  });
  if (p.get('autoplay') === '0') show('idle', 'idle', 'Press Watch to start.');
  else start();
}

init();
