// Group call page: everyone publishes once (WHIP, an anchor token of the call's room) and pulls
// every other participant's own stream (WHEP `?anchor=ID`, the lowest delay: no mixer on the
// way), playing its audio too, so each hears everyone but themselves. Who is in the call comes
// from the room's channel (a `stage.participants` command whenever someone joins or leaves, on
// every node) and from GET v1/rooms/ROOM/participants (at join, and a slow safety poll).
// `?pull=URL` sends the pulls to another node (an edge); publishing stays with this origin.
// State for scripts and tests: window.stagecastCall.
import { endSession, negotiate, newPeerConnection, problemText } from './signaling.js';
import { $, endpointUrl, openChannel, params, setStatus, sleep, validRoom } from './util.js';

const MAX_PARTICIPANTS = 9;
const SAFETY_POLL_MS = 5000;
const PARTICIPANTS_COMMAND = 'stage.participants';  // clients cannot send stage.*: the node's

const ui = {
  grid: $('#grid'),
  me: $('#me'),
  status: $('#status'),
  form: $('#form'),
  room: $('#room'),
  token: $('#token'),
  join: $('#join'),
  leave: $('#leave'),
  message: $('#message'),
  people: $('#people'),
  count: $('#count'),
};

const state = {
  state: 'idle',
  me: null, // my anchor id (my WHIP session's id)
  participants: [], // [{anchor_id, subject, room, guest}], as the gateway lists them
  tiles: {}, // anchor id -> {state, framesDecoded, error}
  updates: [], // [{kind: 'joined'|'left', id, at: Date.now()}]: when this grid changed
  error: null,
  joinedAt: null,
};
window.stagecastCall = state;

let run = 0; // bumps on every join/leave: stale async work checks it
let pc = null;
let session = null;
let stream = null;
let ws = null;
const pulls = new Map(); // anchor id -> {pc, session, el, run}
let lastNoticeAt = null; // when the gateway sent the participants list being applied (ms)
let notices = 0; // participants notices received

const token = () => ui.token.value.trim();
const room = () => ui.room.value.trim();

function show(next, text, message = '') {
  state.state = next;
  setStatus(ui.status, next, text);
  ui.message.textContent = message;
  ui.message.dataset.kind = next === 'error' ? 'error' : '';
  const busy = next !== 'idle' && next !== 'error';
  ui.join.disabled = busy;
  ui.leave.disabled = !busy;
  ui.room.disabled = busy;
  ui.token.disabled = busy;
}

function pullBase() {
  const p = params().get('pull');
  return p ? new URL(p.endsWith('/') ? p : `${p}/`) : new URL(document.baseURI);
}

function pullUrl(participant) {
  const url = new URL(`whep/${encodeURIComponent(participant.room)}`, pullBase());
  url.searchParams.set('anchor', participant.anchor_id);
  return url.href;
}

function apiHeaders() {
  return { Authorization: `Bearer ${token()}` };
}

// -- who is in the call ---------------------------------------------------------------------
function renderPeople() {
  ui.people.replaceChildren(
    ...state.participants.map((p) => {
      const li = document.createElement('li');
      li.dataset.id = p.anchor_id;
      const who = document.createElement('span');
      who.className = 'who';
      const name = p.subject || p.anchor_id;
      who.textContent = p.anchor_id === state.me ? `${name} (you)` : name;
      li.append(who);
      if (p.guest) li.append(` · from ${p.room}`);
      return li;
    }),
  );
  ui.count.textContent = String(state.participants.length);
}

function sync(participants) {
  if (state.state === 'idle' || state.state === 'error') return;
  state.participants = participants.slice(0, MAX_PARTICIPANTS);
  renderPeople();
  const wanted = new Map(
    state.participants.filter((p) => p.anchor_id !== state.me).map((p) => [p.anchor_id, p]),
  );
  for (const id of [...pulls.keys()]) {
    if (!wanted.has(id)) dropTile(id);
  }
  for (const [id, p] of wanted) {
    if (!pulls.has(id)) addTile(p);
  }
  ui.grid.dataset.count = String(pulls.size + 1);
}

async function fetchParticipants(myRun) {
  const before = notices;
  try {
    const url = new URL(`v1/rooms/${encodeURIComponent(room())}/participants`, document.baseURI);
    const resp = await fetch(url, { headers: apiHeaders(), cache: 'no-store' });
    if (!resp.ok || myRun !== run) return;
    const { participants } = await resp.json();
    // a notice that came meanwhile is newer than this answer (asked before it was sent)
    if (notices !== before) return;
    lastNoticeAt = null;
    sync(participants);
  } catch {
    /* the next event or poll */
  }
}

async function listen(myRun) {
  let delay = 250;
  while (myRun === run) {
    const socket = openChannel(room(), token());
    ws = socket;
    await new Promise((resolve) => {
      socket.addEventListener('message', (event) => {
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          return;
        }
        if (msg.type === 'welcome') {
          delay = 250;
          fetchParticipants(myRun); // what changed while the socket was down
        } else if (msg.type === 'command' && msg.name === PARTICIPANTS_COMMAND && msg.data
                   && msg.from && msg.from.role === 'operator') {
          notices += 1;
          lastNoticeAt = Math.round((msg.at || 0) * 1000);
          if (myRun === run) sync(msg.data.participants || []);
        }
      });
      socket.addEventListener('close', resolve);
    });
    if (myRun !== run) return;
    await sleep(delay);
    delay = Math.min(delay * 2, 4000);
  }
}

async function safetyPoll(myRun) {
  while (myRun === run) {
    await sleep(SAFETY_POLL_MS);
    if (myRun === run) await fetchParticipants(myRun);
  }
}

// -- tiles: one pull per other participant --------------------------------------------------
function addTile(p) {
  const id = p.anchor_id;
  const fig = document.createElement('figure');
  fig.className = 'call-tile';
  fig.dataset.id = id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  const caption = document.createElement('figcaption');
  caption.textContent = p.subject || id;
  fig.append(video, caption);
  ui.grid.append(fig);
  const entry = { pc: null, session: null, el: fig, run, stopped: false };
  pulls.set(id, entry);
  state.tiles[id] = { state: 'connecting', framesDecoded: 0, audioSamples: 0, error: null };
  state.updates.push({ kind: 'joined', id, at: Date.now(), sent: lastNoticeAt });
  pullLoop(p, entry, video);
}

async function pullLoop(p, entry, video) {
  const id = p.anchor_id;
  let delay = 200;
  while (!entry.stopped) {
    const peer = await newPeerConnection(token());
    entry.pc = peer;
    peer.addTransceiver('video', { direction: 'recvonly' });
    peer.addTransceiver('audio', { direction: 'recvonly' });
    const media = new MediaStream();
    peer.addEventListener('track', (event) => {
      media.addTrack(event.track);
      video.srcObject = media;
      video.play().catch(() => {});
    });
    const ended = new Promise((resolve) => {
      peer.addEventListener('connectionstatechange', () => {
        if (['failed', 'closed'].includes(peer.connectionState)) resolve();
      });
    });
    try {
      entry.session = await negotiate(peer, pullUrl(p), { token: token() });
      if (entry.stopped) break;
      state.tiles[id].state = 'pulling';
      delay = 200;
      await ended; // the participant left (its stream ended) or the network failed
    } catch (err) {
      state.tiles[id].error = problemText(err);
      peer.close();
      if (entry.stopped) break;
      await sleep(delay); // not live yet (409) or a node in between still starting
      delay = Math.min(delay * 2, 3000);
    }
  }
}

function dropTile(id) {
  const entry = pulls.get(id);
  if (!entry) return;
  pulls.delete(id);
  entry.stopped = true;
  entry.el.remove();
  if (entry.session) endSession(entry.session, token());
  if (entry.pc) entry.pc.close();
  delete state.tiles[id];
  state.updates.push({ kind: 'left', id, at: Date.now(), sent: lastNoticeAt });
}

async function sampleTiles() {
  for (const [id, entry] of pulls) {
    if (!entry.pc || !state.tiles[id]) continue;
    try {
      const report = await entry.pc.getStats();
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp' || !state.tiles[id]) return;
        if (s.kind === 'video') state.tiles[id].framesDecoded = s.framesDecoded || 0;
        if (s.kind === 'audio') state.tiles[id].audioSamples = s.totalSamplesReceived || 0;
      });
    } catch {
      /* closed meanwhile */
    }
  }
}

// -- joining and leaving --------------------------------------------------------------------
async function join(event) {
  event.preventDefault();
  if (!validRoom(room())) {
    show('error', 'offline', 'Room names are 1-64 characters of A-Z a-z 0-9 _ . -');
    return;
  }
  const myRun = ++run;
  show('connecting', 'joining…');
  const t0 = performance.now();
  try {
    stream =
      stream ||
      (await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } },
        audio: { echoCancellation: true, noiseSuppression: true },
      }));
    ui.me.srcObject = stream;
    const mediaMs = performance.now() - t0;
    pc = await newPeerConnection(token());
    for (const track of stream.getTracks()) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    }
    session = await negotiate(pc, endpointUrl('whip', room()), { token: token() });
    if (myRun !== run) return;
    state.me = new URL(session.location).pathname.split('/').pop();
    state.joinedAt = Date.now(); // the gateway announced me while answering (anchor.joined)
    const { gatherMs, postMs } = session;
    state.joinMs = { media: mediaMs, gather: gatherMs, post: postMs }; // where joining took time
    pc.addEventListener('connectionstatechange', () => {
      if (pc && ['failed', 'closed'].includes(pc.connectionState)) leave('The connection ended.');
    });
    show('live', 'in the call');
    listen(myRun);
    safetyPoll(myRun);
    await fetchParticipants(myRun);
  } catch (err) {
    state.error = problemText(err);
    await leave(`Could not join: ${state.error}`, 'error');
  }
}

async function leave(message = 'You left the call.', next = 'idle') {
  run += 1;
  // my own session first: the others' grids change when the gateway sees it end
  const ending = session;
  session = null;
  const t0 = performance.now();
  if (ending) await Promise.race([endSession(ending, token()), sleep(2000)]);
  state.leaveMs = Math.round(performance.now() - t0);
  if (pc) pc.close();
  pc = null;
  for (const id of [...pulls.keys()]) dropTile(id);
  if (ws) ws.close(1000);
  ws = null;
  state.me = null;
  state.participants = [];
  renderPeople();
  ui.grid.dataset.count = '1';
  show(next, 'offline', message);
}

function init() {
  const p = params();
  ui.room.value = p.get('room') || 'call';
  const hash = new URLSearchParams(location.hash.slice(1));
  ui.token.value = hash.get('token') || p.get('token') || p.get('access_token') || '';
  if (hash.has('token') || p.has('token') || p.has('access_token')) {
    p.delete('token');
    p.delete('access_token');
    const query = p.toString();
    history.replaceState(null, '', `${location.pathname}${query ? `?${query}` : ''}`);
  }
  ui.form.addEventListener('submit', join);
  ui.leave.addEventListener('click', () => leave());
  window.addEventListener('pagehide', () => {
    if (session) endSession(session, token());
  });
  setInterval(sampleTiles, 500);
  show('idle', 'offline');
  window.stagecastCallLeave = () => leave();
}

init();
