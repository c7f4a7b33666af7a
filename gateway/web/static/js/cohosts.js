// Publish page, the stage around the anchor: raised hands to approve or refuse, each co-host's
// own stream as a small tile (WHEP ?anchor=ID: no mixer in the way, the lowest delay), the
// mix-minus audio for this anchor (?mixminus=ID: everyone but itself) and the viewer count.
// Polls GET /rooms/ROOM/stage with the anchor token once a second. State:
// window.stagecast.cohosts.
import { endSession, negotiate, newPeerConnection, problemText } from './signaling.js';
import { endpointUrl } from './util.js';

function roomUrl(room, rest) {
  return new URL(`rooms/${encodeURIComponent(room)}/${rest}`, document.baseURI).href;
}

function el(tag, className = '', text = '') {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

export class CoHosts {
  /**
   * ui: {viewers, requests, noRequests, tiles, noTiles, audio, message};
   * self(): {room, token, anchorId} of this page (anchorId null while not live).
   */
  constructor(ui, self) {
    this.ui = ui;
    this.self = self;
    this.state = {
      state: 'idle',
      viewers: 0,
      anchors: [],
      requests: [],
      tiles: {}, // anchor id -> {frames, subject}
      mixminus: null, // the anchor id whose mix-minus plays
      mixminusStream: null,
      decided: [], // {id, approve, at (Date.now())}
      error: null,
    };
    this.pulls = new Map(); // anchor id -> {pc, session, figure, video}
    this.listening = null; // {anchorId, pc, session}
    this.timer = null;
    this.busy = false;
    ui.requests.addEventListener('click', (e) => this.onClick(e));
  }

  start() {
    if (!this.timer) this.timer = setInterval(() => this.refresh(), 1000);
    this.refresh();
  }

  async refresh() {
    const { room, token, anchorId } = this.self();
    if (this.busy || !room || !token) return;
    this.busy = true;
    try {
      const resp = await fetch(roomUrl(room, 'stage'), {
        headers: { Authorization: `Bearer ${token}` },
        cache: 'no-store',
      });
      if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}`);
      const stage = await resp.json();
      this.state.state = 'ok';
      this.state.error = null;
      this.state.viewers = stage.viewers;
      this.state.anchors = stage.anchors;
      this.state.requests = stage.requests;
      this.ui.viewers.textContent = String(stage.viewers);
      this.renderRequests(room, stage.requests);
      await this.syncTiles(room, stage, anchorId);
      await this.syncMixMinus(room, token, anchorId, stage);
    } catch (err) {
      this.state.state = 'error';
      this.state.error = problemText(err);
    } finally {
      this.busy = false;
    }
  }

  renderRequests(room, requests) {
    const open = requests.filter((r) => r.state === 'pending' || r.state === 'approved' || r.state === 'joined');
    this.ui.noRequests.hidden = open.length > 0;
    const byId = new Map([...this.ui.requests.children].map((li) => [li.dataset.id, li]));
    for (const r of open) {
      let li = byId.get(r.id);
      byId.delete(r.id);
      if (!li) {
        li = el('li');
        li.dataset.id = r.id;
        li.dataset.room = room;
        li.append(el('span', 'who'), el('span', 'muted state'));
        const approve = el('button', 'primary small approve', 'Approve');
        const refuse = el('button', 'small refuse', 'Refuse');
        const remove = el('button', 'danger small remove', 'Remove');
        for (const b of [approve, refuse, remove]) b.type = 'button';
        li.append(approve, refuse, remove);
        this.ui.requests.append(li);
      }
      li.querySelector('.who').textContent = r.name;
      const label = { pending: 'raised a hand', approved: 'approved, joining…', joined: 'on stage' };
      li.querySelector('.state').textContent = label[r.state];
      li.dataset.state = r.state;
      li.querySelector('.approve').hidden = r.state !== 'pending';
      li.querySelector('.refuse').hidden = r.state !== 'pending';
      li.querySelector('.remove').hidden = r.state === 'pending';
    }
    for (const li of byId.values()) li.remove();
  }

  async onClick(event) {
    const button = event.target.closest('button');
    const li = button && button.closest('li[data-id]');
    if (!li || button.disabled) return;
    const { id, room } = li.dataset;
    const { token } = this.self();
    const approve = button.classList.contains('approve');
    const path = `stage/requests/${encodeURIComponent(id)}`;
    const [method, rest] = button.classList.contains('remove')
      ? ['DELETE', path]
      : ['POST', `${path}/${approve ? 'approve' : 'refuse'}`];
    button.disabled = true;
    try {
      const resp = await fetch(roomUrl(room, rest), {
        method,
        headers: { Authorization: `Bearer ${token}` },
      });
      if (!resp.ok) {
        let detail = resp.statusText;
        try {
          detail = (await resp.json()).detail || detail;
        } catch {
          /* keep it */
        }
        throw new Error(`${resp.status} ${detail}`);
      }
      this.state.decided.push({ id, approve, method, at: Date.now() });
      this.ui.message.textContent = '';
    } catch (err) {
      this.ui.message.textContent = `Stage: ${err.message}`;
    } finally {
      button.disabled = false;
    }
    this.refresh();
  }

  /** A tile per co-host (every anchor on stage but this one), pulled from its own hub. */
  async syncTiles(room, stage, selfId) {
    const others = stage.anchors.filter((a) => a.id !== selfId);
    const wanted = new Set(others.map((a) => a.id));
    for (const [id, pull] of this.pulls) {
      if (!wanted.has(id)) this.drop(id, pull);
    }
    for (const a of others) {
      if (!this.pulls.has(a.id)) this.pull(room, a, stage.viewer_token);
      const pull = this.pulls.get(a.id);
      pull.caption.textContent = a.guest ? `${a.name} (guest)` : a.subject;
    }
    this.ui.noTiles.hidden = this.pulls.size > 0;
  }

  pull(room, anchor, viewerToken) {
    const figure = el('figure', 'cohost');
    figure.dataset.anchor = anchor.id;
    const video = el('video');
    video.autoplay = true;
    video.muted = true; // its sound comes in the mix-minus
    video.playsInline = true;
    const caption = el('figcaption');
    figure.append(video, caption);
    this.ui.tiles.append(figure);
    const tile = { frames: 0, subject: anchor.subject, guest: anchor.guest };
    this.state.tiles[anchor.id] = tile;
    const pull = { pc: null, session: null, figure, video, caption, closed: false };
    this.pulls.set(anchor.id, pull);
    const count = () => {
      if (pull.closed) return;
      tile.frames += 1;
      video.requestVideoFrameCallback(count);
    };
    (async () => {
      const pc = await newPeerConnection(viewerToken);
      pull.pc = pc;
      if (pull.closed) {
        pc.close();
        return;
      }
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addEventListener('track', (e) => {
        video.srcObject = new MediaStream([e.track]);
        video.requestVideoFrameCallback(count);
        video.play().catch(() => {});
      });
      const url = `${endpointUrl('whep', room)}?anchor=${encodeURIComponent(anchor.id)}`;
      pull.session = await negotiate(pc, url, { token: viewerToken });
      pull.token = viewerToken;
    })().catch((err) => {
      tile.error = problemText(err);
      this.drop(anchor.id, pull); // tried again at the next refresh
    });
  }

  drop(id, pull) {
    pull.closed = true;
    this.pulls.delete(id);
    delete this.state.tiles[id];
    pull.figure.remove();
    if (pull.session) endSession(pull.session, pull.token || '');
    if (pull.pc) pull.pc.close();
  }

  /** This anchor's mix-minus while it is live with others on stage (alone, it would be a
   * second peer connection carrying silence, opened while the camera's stream ramps up). */
  async syncMixMinus(room, token, selfId, stage) {
    const onStage = selfId && stage.anchors.some((a) => a.id === selfId);
    const want = onStage && stage.anchors.length > 1 ? selfId : null;
    if (this.listening && this.listening.anchorId === want) return;
    if (this.listening) {
      const old = this.listening;
      this.listening = null;
      endSession(old.session, token);
      if (old.pc) old.pc.close();
      this.ui.audio.srcObject = null;
      this.state.mixminus = null;
      this.state.mixminusStream = null;
    }
    if (!want) return;
    const listening = { anchorId: want, pc: null, session: null };
    this.listening = listening;
    try {
      const pc = await newPeerConnection(token);
      listening.pc = pc;
      pc.addTransceiver('audio', { direction: 'recvonly' });
      const stream = new MediaStream();
      pc.addEventListener('track', (e) => {
        stream.addTrack(e.track);
        this.ui.audio.srcObject = stream;
        this.state.mixminusStream = stream;
        this.ui.audio.play().catch(() => {});
      });
      const url = `${endpointUrl('whep', room)}?mixminus=${encodeURIComponent(want)}`;
      listening.session = await negotiate(pc, url, { token });
      if (this.listening === listening) this.state.mixminus = want;
    } catch (err) {
      if (this.listening === listening) this.listening = null;
      if (listening.pc) listening.pc.close();
      this.state.error = problemText(err);
    }
  }

  stopAll() {
    for (const [id, pull] of this.pulls) this.drop(id, pull);
  }
}
