// Operator console over the /v1 API: rooms, anchors, viewer counts, kick an anchor, and
// anchor links. The key stays in this tab (sessionStorage); `#key=...` in the URL also works.
// The room list is polled every 2 s and updated in place (keyed by room and anchor id), so a
// click never lands on a node that a refresh has just replaced.
import { ShowPanel } from './show.js';
import { $, formatBitrate, setStatus, validRoom } from './util.js';

const ui = {
  keyForm: $('#key-form'),
  key: $('#key'),
  status: $('#status'),
  message: $('#message'),
  rooms: $('#rooms'),
  noRooms: $('#no-rooms'),
  summary: $('#summary'),
  linkForm: $('#link-form'),
  linkRoom: $('#link-room'),
  linkOut: $('#link-out'),
};

const state = { state: 'idle', rooms: [], streams: {}, error: null, kicked: [] };
window.stagecast = state;
let timer = null;
let armed = null; // {anchor, timer}: the kick waiting for its confirming second click

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${ui.key.value.trim()}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(new URL(`v1/${path}`, document.baseURI), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      const problem = await resp.json();
      detail = problem.detail || problem.title || detail;
    } catch {
      /* keep the status text */
    }
    throw new ApiError(resp.status, `${resp.status} ${detail}`);
  }
  return resp.status === 204 ? null : resp.json();
}

function el(tag, className = '', text = '') {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Makes parent's children match items (by key), reusing, moving, creating, removing nodes. */
function syncList(parent, items, keyOf, create, update) {
  const existing = new Map();
  for (const child of parent.children) existing.set(child.dataset.key, child);
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    let node = existing.get(key);
    if (node) {
      existing.delete(key);
    } else {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item);
    const want = prev ? prev.nextSibling : parent.firstChild;
    if (node !== want) parent.insertBefore(node, want);
    prev = node;
  }
  for (const node of existing.values()) node.remove();
}

function createRoom(room) {
  const card = el('article', 'room');
  card.dataset.room = room.name;
  const head = el('header');
  head.append(el('h3', '', room.name), el('span', 'pill'), el('span', 'count'));
  const watch = el('a', 'open', 'Open player');
  const url = new URL('watch', document.baseURI);
  url.searchParams.set('room', room.name);
  watch.href = url.href;
  watch.target = '_blank';
  watch.rel = 'noopener';
  const none = el('p', 'muted none', 'No anchor.');
  const run = el('button', 'small run-show', 'Run show');
  run.type = 'button';
  run.dataset.show = room.name;
  card.append(head, el('p', 'muted rate'), el('ul', 'anchors'), none, run, watch);
  return card;
}

function updateRoom(card, room) {
  const pill = card.querySelector('.pill');
  pill.dataset.state = room.live ? 'live' : 'idle';
  setText(pill, room.live ? 'live' : 'offline');
  const count = card.querySelector('.count');
  count.dataset.viewers = String(room.viewers);
  setText(count, `${room.viewers} watching`);
  const stream = state.streams[room.name];
  const video = stream && stream.video;
  const rate = card.querySelector('.rate');
  rate.hidden = !video;
  if (video) {
    const fps = `${Math.round(video.fps)} fps`;
    setText(rate, `${video.codec} · ${formatBitrate(video.bitrate_bps)} · ${fps}`);
  }
  card.querySelector('.none').hidden = room.anchors.length > 0;
  const list = card.querySelector('.anchors');
  syncList(list, room.anchors, (a) => a.id, createAnchor, (li, a) => updateAnchor(li, room, a));
}

function createAnchor(anchor) {
  const li = el('li');
  li.dataset.anchor = anchor.id;
  const kick = el('button', 'danger small', 'Kick');
  kick.type = 'button';
  kick.dataset.anchor = anchor.id;
  li.append(el('span', 'who'), el('span', 'muted'), kick);
  return li;
}

function updateAnchor(li, room, anchor) {
  setText(li.querySelector('.who'), anchor.subject);
  const lost = `${anchor.packets_received} pkts · ${anchor.packets_lost} lost`;
  setText(li.querySelector('.muted'), `${anchor.state} · ${lost}`);
  const kick = li.querySelector('button');
  kick.dataset.room = room.name;
  setText(kick, armed && armed.anchor === anchor.id ? 'Confirm kick' : 'Kick');
}

function renderRooms() {
  const rooms = [...state.rooms].sort((a, b) => a.name.localeCompare(b.name));
  const viewers = rooms.reduce((n, r) => n + r.viewers, 0);
  const live = rooms.filter((r) => r.live).length;
  setText(ui.summary, rooms.length ? `${rooms.length} · ${live} live · ${viewers} watching` : '');
  ui.noRooms.hidden = rooms.length > 0;
  syncList(ui.rooms, rooms, (r) => r.name, createRoom, updateRoom);
}

// One delegated handler: the armed (first-clicked) kick lives in `armed`, not in the DOM.
async function onRoomsClick(event) {
  const run = event.target.closest('button[data-show]');
  if (run) {
    show.show(run.dataset.show);
    $('#show').scrollIntoView({ behavior: 'smooth' });
    return;
  }
  const button = event.target.closest('button[data-anchor]');
  if (!button || button.disabled) return;
  const { room, anchor } = button.dataset;
  if (!armed || armed.anchor !== anchor) {
    // two clicks: a mis-tap on a phone must not end somebody's show
    if (armed) clearTimeout(armed.timer);
    const disarm = () => {
      armed = null;
      renderRooms();
    };
    armed = { anchor, timer: setTimeout(disarm, 4000) };
    renderRooms();
    return;
  }
  clearTimeout(armed.timer);
  armed = null;
  button.disabled = true;
  try {
    await api('DELETE', `rooms/${encodeURIComponent(room)}/anchors/${encodeURIComponent(anchor)}`);
    state.kicked.push(anchor);
    const info = state.rooms.flatMap((r) => r.anchors).find((a) => a.id === anchor);
    ui.message.textContent = `Kicked ${info ? info.subject : 'the anchor'} from ${room}.`;
  } catch (err) {
    ui.message.textContent = `Kick failed: ${err.message}`;
    button.disabled = false;
  }
  refresh();
}

async function refresh() {
  try {
    const [rooms, streams] = await Promise.all([
      api('GET', 'rooms'),
      api('GET', 'streams').catch(() => []),
    ]);
    state.rooms = rooms;
    state.streams = Object.fromEntries(streams.map((s) => [s.room, s]));
    state.state = 'connected';
    state.error = null;
    setStatus(ui.status, 'live', 'connected');
    renderRooms();
    refreshNodes();
  } catch (err) {
    state.error = err.message;
    state.state = err.status === 401 || err.status === 403 ? 'denied' : 'error';
    setStatus(ui.status, 'error', state.state === 'denied' ? 'key rejected' : 'error');
    ui.message.textContent = `Operator API: ${err.message}`;
    if (state.state === 'denied') stopPolling();
  }
}

// The show panel: one room's stage, requests, bridges, recording, chat moderation and charts.
const show = new ShowPanel($('#show'), api, () => ui.key.value.trim());
state.show = show.state;

async function refreshNodes() {
  let nodes;
  try {
    nodes = await api('GET', 'nodes');
  } catch {
    return;
  }
  state.nodes = nodes;
  const fmtAge = (s) => `${s.toFixed(1)} s`;
  $('#nodes').replaceChildren(
    ...nodes.map((n) => {
      const tr = document.createElement('tr');
      tr.dataset.node = n.id;
      tr.dataset.state = n.state;
      const cells = [
        `${n.id}${n.local ? ' (this)' : ''}`,
        n.role,
        n.state,
        String(n.viewers),
        String(n.anchors),
        n.load.toFixed(2),
        n.cpu_percent == null ? '–' : `${Math.round(n.cpu_percent)} %`,
        fmtAge(n.heartbeat_age_s),
      ];
      for (const text of cells) tr.append(el('td', '', text));
      return tr;
    }),
  );
}

function stopPolling() {
  clearInterval(timer);
  timer = null;
}

function connect(event) {
  if (event) event.preventDefault();
  if (!ui.key.value.trim()) return;
  sessionStorage.setItem('stagecast-operator-key', ui.key.value.trim());
  ui.message.textContent = '';
  stopPolling();
  refresh();
  timer = setInterval(refresh, 2000);
}

async function createLink(event) {
  event.preventDefault();
  const room = ui.linkRoom.value.trim();
  if (!validRoom(room)) return;
  try {
    const body = { room, role: 'anchor', subject: 'console', ttl: 3600 };
    const minted = await api('POST', 'tokens', body);
    const url = new URL('publish', document.baseURI);
    url.searchParams.set('room', room);
    url.hash = new URLSearchParams({ token: minted.token }).toString(); // stays out of logs
    const link = el('a', '', url.href);
    link.href = url.href;
    link.target = '_blank';
    link.rel = 'noopener';
    ui.linkOut.replaceChildren(link);
  } catch (err) {
    ui.linkOut.textContent = `Could not create a link: ${err.message}`;
  }
}

function init() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const key = hash.get('key') || sessionStorage.getItem('stagecast-operator-key') || '';
  if (hash.has('key')) history.replaceState(null, '', location.pathname + location.search);
  ui.key.value = key;
  ui.keyForm.addEventListener('submit', connect);
  ui.linkForm.addEventListener('submit', createLink);
  ui.rooms.addEventListener('click', onRoomsClick);
  if (key) connect();
}

init();
