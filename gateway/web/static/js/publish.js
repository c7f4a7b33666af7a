// Publish page: camera + microphone preview, device pick, go live / stop over WHIP, live status,
// bitrate and packet-loss readout. State for scripts and tests: window.stagecast.
import { RoomChat } from './chat.js';
import { CoHosts } from './cohosts.js';
import { endSession, negotiate, newPeerConnection, problemText } from './signaling.js';
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

const QUALITY = {
  360: { width: 640, height: 360, bitrate: 600_000 },
  540: { width: 960, height: 540, bitrate: 1_200_000 },
  720: { width: 1280, height: 720, bitrate: 2_500_000 },
};

// Simulcast layers (RFC 8853 rids), lowest first: 1/4 and 1/2 size at fixed rates, the full
// picture at the chosen quality's. The gateway names them by size: the top is the program,
// the others renditions (?rendition=360p, 180p with the defaults).
const LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1 },
];

function sendEncodings() {
  const q = QUALITY[ui.quality.value] || QUALITY[720];
  // Chromium sends at most 2 layers of a 640x360 picture (3 from 960x540 up)
  const layers = q.height >= 540 ? LAYERS : LAYERS.slice(1);
  return layers.map((layer) => ({ maxBitrate: q.bitrate, ...layer }));
}

const ui = {
  preview: $('#preview'),
  overlay: $('#overlay'),
  status: $('#status'),
  form: $('#form'),
  room: $('#room'),
  token: $('#token'),
  camera: $('#camera'),
  mic: $('#mic'),
  quality: $('#quality'),
  simulcast: $('#simulcast'),
  go: $('#go'),
  stop: $('#stop'),
  message: $('#message'),
  watchLink: $('#watch-link'),
  video: $('#r-video'),
  audio: $('#r-audio'),
  loss: $('#r-loss'),
  rtt: $('#r-rtt'),
};

const state = { state: 'idle', stream: null, pc: null, session: null, stats: {}, error: null };
window.stagecast = state;
let statsTimer = null;
let sampler = null;

function show(next, text, message = '') {
  state.state = next;
  setStatus(ui.status, next, text);
  ui.message.textContent = message;
  ui.message.dataset.kind = next === 'error' ? 'error' : '';
  const busy = next === 'connecting' || next === 'live' || next === 'reconnecting';
  ui.go.disabled = busy || !state.stream;
  ui.stop.disabled = !busy;
  ui.room.disabled = busy;
  ui.token.disabled = busy;
}

function updateWatchLink() {
  const room = ui.room.value.trim();
  const url = new URL('watch', document.baseURI);
  if (room) url.searchParams.set('room', room);
  ui.watchLink.href = url.href;
  ui.watchLink.textContent = url.pathname + url.search;
}

function constraints() {
  const q = QUALITY[ui.quality.value] || QUALITY[720];
  const video = { width: { ideal: q.width }, height: { ideal: q.height }, frameRate: { ideal: 30 } };
  if (ui.camera.value) video.deviceId = { exact: ui.camera.value };
  const audio = { echoCancellation: true, noiseSuppression: true };
  if (ui.mic.value) audio.deviceId = { exact: ui.mic.value };
  return { video, audio };
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kind, label] of [
    [ui.camera, 'videoinput', 'Camera'],
    [ui.mic, 'audioinput', 'Microphone'],
  ]) {
    const current = select.value;
    select.replaceChildren();
    devices
      .filter((d) => d.kind === kind)
      .forEach((d, i) => select.append(new Option(d.label || `${label} ${i + 1}`, d.deviceId)));
    if ([...select.options].some((o) => o.value === current)) select.value = current;
  }
}

async function startPreview() {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    ui.overlay.textContent = 'Camera access needs HTTPS (or http://localhost).';
    show('error', 'no camera', 'Open this page over HTTPS or on localhost to use the camera.');
    return;
  }
  const old = state.stream;
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints());
    state.stream = stream;
    ui.preview.srcObject = stream;
    ui.overlay.hidden = true;
    if (state.pc) await switchTracks(stream);
    if (old) old.getTracks().forEach((t) => t.stop());
    await listDevices();
    const [video] = stream.getVideoTracks();
    if (video && video.getSettings().deviceId) ui.camera.value = video.getSettings().deviceId;
    const [audio] = stream.getAudioTracks();
    if (audio && audio.getSettings().deviceId) ui.mic.value = audio.getSettings().deviceId;
    if (state.state === 'idle' || state.state === 'error') show('idle', 'offline');
  } catch (err) {
    ui.overlay.hidden = false;
    ui.overlay.textContent = 'No camera or microphone';
    show('error', 'no camera', `Camera/microphone: ${err.name || ''} ${err.message || err}`);
  }
}

/** Chromium makes its encoder when the answer is applied, with a 300 kbit/s start rate until
 * the transport is up (the answer's x-google-start-bitrate only counts from then), and drops
 * the first frames as "too large for the target bitrate", scaling a 720p camera to 540p or
 * 360p, which its quality scaler undoes one step per ~4 s. So the encoder starts keeping the
 * resolution (no quality scaler, no initial frame dropping) and falls back to Chromium's
 * default for a camera (keep the frame rate, scale the picture down on a thin link or a busy
 * CPU) once frames are encoded at the rate the estimate allows.
 * `window.stagecastOptions = {fullSizeStart: false}` before the page loads skips this
 * (bench.anchor_ramp's baseline). */
async function startFullSize(pc, sender) {
  const options = window.stagecastOptions || {};
  if (options.fullSizeStart === false) return;
  if (!(await setDegradation(sender, 'maintain-resolution'))) return;
  state.fullSizeStart = true;
  const until = performance.now() + 5000;
  const released = async () => {
    if (pc.connectionState === 'closed') return;
    // after the first encoded frames with an estimate in place (bounded)
    let ready = performance.now() >= until;
    if (!ready) {
      try {
        ready = await encoding(pc);
      } catch {
        return; // closed meanwhile
      }
    }
    if (!ready) {
      setTimeout(released, 100);
      return;
    }
    await setDegradation(sender, 'maintain-framerate');
    state.fullSizeStart = false;
  };
  setTimeout(released, 100);
}

async function setDegradation(sender, preference) {
  try {
    const p = sender.getParameters();
    p.degradationPreference = preference;
    await sender.setParameters(p);
    return sender.getParameters().degradationPreference === preference;
  } catch {
    return false; // not supported (or the sender is gone): the browser's own default
  }
}

/** Whether the video encoder has sent frames at least 0.5 s with a bandwidth estimate. */
async function encoding(pc) {
  let frames = 0;
  let estimate = false;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') frames += s.framesEncoded || 0;
    if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate > 0) {
      estimate = true;
    }
  });
  return estimate && frames >= 15;
}

async function switchTracks(stream) {
  for (const sender of state.pc.getSenders()) {
    const kind = sender.track ? sender.track.kind : null;
    const next = stream.getTracks().find((t) => t.kind === kind);
    if (next) await sender.replaceTrack(next);
  }
  await applyBitrate();
}

async function applyBitrate() {
  const q = QUALITY[ui.quality.value] || QUALITY[720];
  const sender = state.pc && state.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
  if (!sender) return;
  const p = sender.getParameters();
  if (!p.encodings || !p.encodings.length) return;
  p.encodings[p.encodings.length - 1].maxBitrate = q.bitrate; // the top layer when simulcast
  try {
    await sender.setParameters(p);
  } catch {
    /* not fatal: the encoder keeps its own limit */
  }
}

async function goLive(event) {
  event.preventDefault();
  const room = ui.room.value.trim();
  if (!validRoom(room)) {
    show('error', 'offline', 'Room names are 1-64 characters of A-Z a-z 0-9 _ . -, not starting with a dot');
    return;
  }
  if (chatRoom !== room) {
    chatRoom = room;
    chat.join(room, ui.token.value.trim());
  }
  if (!state.stream) return;
  show('connecting', 'connecting…');
  const pc = await newPeerConnection(ui.token.value.trim());
  state.pc = pc;
  state.simulcast = ui.simulcast.checked;
  for (const track of state.stream.getTracks()) {
    const init = { direction: 'sendonly', streams: [state.stream] };
    if (track.kind === 'video' && state.simulcast) init.sendEncodings = sendEncodings();
    const transceiver = pc.addTransceiver(track, init);
    if (track.kind === 'video') await startFullSize(pc, transceiver.sender);
  }
  pc.addEventListener('connectionstatechange', () => onConnectionState(pc));
  try {
    state.session = await negotiate(pc, endpointUrl('whip', room), { token: ui.token.value.trim() });
    // The gateway ending the session (kick, timeout) shows first as DTLS close_notify.
    const dtls = pc.getSenders()[0].transport;
    if (dtls) dtls.addEventListener('statechange', () => onConnectionState(pc, dtls.state));
    await applyBitrate();
    sampler = new StatsSampler(pc);
    statsTimer = setInterval(sampleStats, 1000);
  } catch (err) {
    state.error = problemText(err);
    teardown();
    show('error', 'offline', `Could not go live: ${state.error}`);
  }
}

function onConnectionState(pc, dtlsState = null) {
  if (pc !== state.pc || !state.session) return;
  const s = dtlsState || pc.connectionState;
  if (s === 'connected') {
    show('live', 'live');
  } else if (s === 'disconnected') {
    show('reconnecting', 'reconnecting…', 'The connection is interrupted…');
  } else if (s === 'failed') {
    teardown();
    show('error', 'offline', 'The connection to the gateway failed. Go live again to retry.');
  } else if (s === 'closed') {
    teardown();
    show('ended', 'offline', 'The gateway ended the session (kicked or timed out).');
  }
}

async function sampleStats() {
  const current = sampler;
  if (!current) return;
  const out = await current.outbound();
  if (current !== sampler) return;
  state.stats = out;
  const v = out.video || {};
  const a = out.audio || {};
  const size = v.width ? ` · ${v.width}×${v.height}` : '';
  const fps = Number.isFinite(v.fps) ? ` · ${Math.round(v.fps)} fps` : '';
  ui.video.textContent = `${formatBitrate(v.bps)}${fps}${size}`;
  ui.audio.textContent = formatBitrate(a.bps);
  const losses = [v.loss, a.loss].filter(Number.isFinite);
  ui.loss.textContent = losses.length ? formatPercent(Math.max(...losses)) : '–';
  ui.rtt.textContent = formatMs(v.rtt);
}

function teardown() {
  clearInterval(statsTimer);
  statsTimer = null;
  if (state.pc) state.pc.close();
  state.pc = null;
  state.session = null;
  sampler = null;
}

async function stop() {
  const { session } = state;
  state.session = null; // from here on, the connection closing is expected
  ui.stop.disabled = true;
  // DELETE first (bounded), so the gateway ends the stream for a reason it knows, then hang up
  await Promise.race([endSession(session, ui.token.value.trim()), sleep(2000)]);
  teardown();
  show('idle', 'offline', 'You are offline.');
}

// The room's chat beside the preview (with the anchor token: the anchor may chat and send
// commands); joined at start when the link carries a token, and on Go live.
const chat = new RoomChat($('#chat'));
let chatRoom = null;

// The stage around this anchor: raised hands, co-host tiles, mix-minus audio, viewer count.
const cohosts = new CoHosts(
  {
    viewers: $('#viewers'),
    requests: $('#requests'),
    noRequests: $('#no-requests'),
    tiles: $('#cohosts'),
    noTiles: $('#no-cohosts'),
    audio: $('#mixminus'),
    message: $('#stage-message'),
  },
  () => ({
    room: validRoom(ui.room.value.trim()) ? ui.room.value.trim() : null,
    token: ui.token.value.trim(),
    anchorId: state.session ? new URL(state.session.location).pathname.split('/').pop() : null,
  }),
);
state.cohosts = cohosts.state;

function init() {
  const p = params();
  ui.room.value = p.get('room') || 'demo';
  // The anchor token comes pasted, or in the link: `#token=` (never sent to a server, so never
  // in a log) or `?token=` / `?access_token=`.
  const hash = new URLSearchParams(location.hash.slice(1));
  ui.token.value = hash.get('token') || p.get('token') || p.get('access_token') || '';
  if (hash.has('token') || p.has('token') || p.has('access_token')) {
    // keep the secret out of the address bar, history and screenshots
    p.delete('token');
    p.delete('access_token');
    const query = p.toString();
    history.replaceState(null, '', `${location.pathname}${query ? `?${query}` : ''}`);
  }
  if (p.get('quality') && QUALITY[p.get('quality')]) ui.quality.value = p.get('quality');
  if (p.get('simulcast') === '0') ui.simulcast.checked = false;
  updateWatchLink();
  ui.room.addEventListener('input', updateWatchLink);
  ui.form.addEventListener('submit', goLive);
  ui.stop.addEventListener('click', stop);
  for (const el of [ui.camera, ui.mic, ui.quality]) el.addEventListener('change', startPreview);
  window.addEventListener('pagehide', () => {
    if (state.session) endSession(state.session, ui.token.value.trim());
  });
  show('idle', 'offline');
  if (ui.token.value && validRoom(ui.room.value.trim())) {
    chatRoom = ui.room.value.trim();
    chat.join(chatRoom, ui.token.value.trim());
  }
  cohosts.start(); // polls while a room and a token are given
  startPreview();
}

init();
