// Console, running one room's show: the stage (each anchor's own stream as a tile, raised hands
// to approve, per-anchor gain and mute, the layout), the CDN bridges, the recording, chat
// moderation (recent lines with a mute per sender, the mutes in force) and live charts of
// viewers, bitrate and loss over the last five minutes. Everything through the API with the
// operator key. State: window.stagecast.show.
import { drawChart, Series } from './chart.js';
import { CoHosts } from './cohosts.js';
import { formatBitrate, openChannel } from './util.js';

const MAX_CHAT = 30;

function el(tag, className = '', text = '') {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function button(text, className, action) {
  const b = el('button', `small ${className}`, text);
  b.type = 'button';
  b.dataset.action = action;
  return b;
}

export class ShowPanel {
  /** root: the panel element; api(method, path, body) -> JSON; key(): the operator key. */
  constructor(root, api, key) {
    this.root = root;
    this.api = api;
    this.key = key;
    this.room = null;
    this.timer = null;
    this.ws = null;
    this.series = { viewers: new Series(), bitrate: new Series(), loss: new Series() };
    this.state = {
      room: null,
      program: null,
      layout: null,
      bridges: [],
      recording: null,
      mutes: {},
      chat: [],
      audio: {}, // anchor id -> {gain, muted} as last set here
      samples: 0,
      errors: [],
    };
    root.innerHTML = `
      <h2>Show <small class="show-room">pick a room</small></h2>
      <div class="show" hidden>
        <div class="show-grid">
          <div>
            <h3 class="sub">Stage <small class="show-mode"></small></h3>
            <p class="empty no-cohosts">No one on stage.</p>
            <div class="cohosts"></div>
            <ul class="mixer-controls anchors"></ul>
            <label>Layout
              <select class="layout">
                <option value="grid">grid</option>
                <option value="speaker">speaker</option>
                <option value="pip">picture in picture</option>
              </select>
            </label>
            <label>Speaker <select class="speaker"></select></label>
            <h3 class="sub">Raised hands <small><b class="viewers">0</b> watching here</small></h3>
            <p class="empty no-requests">No raised hands.</p>
            <ul class="requests"></ul>
            <p class="message stage-message" role="status"></p>
            <audio class="mixminus"></audio>
          </div>
          <div>
            <h3 class="sub">Live</h3>
            <figure class="chart"><figcaption>Viewers</figcaption><canvas class="chart-viewers"></canvas></figure>
            <figure class="chart"><figcaption>Bitrate in</figcaption><canvas class="chart-bitrate"></canvas></figure>
            <figure class="chart"><figcaption>Viewer loss</figcaption><canvas class="chart-loss"></canvas></figure>
          </div>
          <div>
            <h3 class="sub">Bridges</h3>
            <ul class="bridges anchors"></ul>
            <form class="bridge-form inline-row" autocomplete="off">
              <input class="rtmp-url" placeholder="rtmp://… (empty: HLS)">
              <button type="submit" class="small">Start bridge</button>
            </form>
            <h3 class="sub">Recording</h3>
            <p class="muted rec-state">–</p>
            <div class="buttons">
              <button type="button" class="small rec-start" data-action="rec-start">Start recording</button>
              <button type="button" class="small danger rec-stop" data-action="rec-stop">Stop recording</button>
            </div>
            <h3 class="sub">Chat</h3>
            <ol class="chat-log show-chat"></ol>
            <ul class="mutes anchors"></ul>
          </div>
        </div>
      </div>`;
    const q = (s) => root.querySelector(s);
    this.ui = {
      title: q('.show-room'),
      body: q('.show'),
      mode: q('.show-mode'),
      controls: q('.mixer-controls'),
      layout: q('.layout'),
      speaker: q('.speaker'),
      bridges: q('.bridges'),
      bridgeForm: q('.bridge-form'),
      rtmpUrl: q('.rtmp-url'),
      recState: q('.rec-state'),
      recStart: q('.rec-start'),
      recStop: q('.rec-stop'),
      chat: q('.show-chat'),
      mutes: q('.mutes'),
      charts: {
        viewers: q('.chart-viewers'),
        bitrate: q('.chart-bitrate'),
        loss: q('.chart-loss'),
      },
    };
    this.cohosts = new CoHosts(
      {
        viewers: q('.viewers'),
        requests: q('.requests'),
        noRequests: q('.no-requests'),
        tiles: q('.cohosts'),
        noTiles: q('.no-cohosts'),
        audio: q('.mixminus'),
        message: q('.stage-message'),
      },
      () => ({ room: this.room, token: this.key(), anchorId: null }),
    );
    this.state.stage = this.cohosts.state;
    root.addEventListener('click', (e) => this.onClick(e));
    root.addEventListener('change', (e) => this.onChange(e));
    this.ui.bridgeForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.startBridge();
    });
  }

  show(room) {
    if (this.room === room) return;
    this.room = room;
    this.state.room = room;
    this.state.chat = [];
    this.state.audio = {};
    this.ui.chat.replaceChildren();
    this.series = { viewers: new Series(), bitrate: new Series(), loss: new Series() };
    this.ui.title.textContent = room;
    this.ui.body.hidden = false;
    this.cohosts.stopAll();
    this.cohosts.start();
    this.joinChat(room);
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), 2000);
    this.refresh();
  }

  async get(path, fallback = null) {
    try {
      return await this.api('GET', path);
    } catch (err) {
      if (err.status !== 404) this.state.errors.push(err.message);
      return fallback;
    }
  }

  async refresh() {
    const room = this.room;
    if (!room) return;
    const r = encodeURIComponent(room);
    const [stream, viewers, program, layout, bridges, recording, channel] = await Promise.all([
      this.get(`rooms/${r}/stream`),
      this.get(`rooms/${r}/viewers`, { count: 0, viewers: [] }),
      this.get(`rooms/${r}/program`),
      this.get(`rooms/${r}/layout`),
      this.get(`rooms/${r}/bridges`, []),
      this.get(`rooms/${r}/recording`),
      this.get(`rooms/${r}/channel`),
    ]);
    if (room !== this.room) return;
    const bps = stream ? ((stream.video && stream.video.bitrate_bps) || 0) + ((stream.audio && stream.audio.bitrate_bps) || 0) : 0;
    const losses = viewers.viewers.map((v) => v.fraction_lost).filter(Number.isFinite);
    this.series.viewers.add(viewers.count);
    this.series.bitrate.add(bps);
    this.series.loss.add(losses.length ? (100 * losses.reduce((a, b) => a + b, 0)) / losses.length : 0);
    this.state.samples += 1;
    Object.assign(this.state, { program, layout, bridges, recording, mutes: channel ? channel.mutes : {} });
    this.render();
  }

  render() {
    const { program, layout, bridges, recording, mutes } = this.state;
    this.ui.mode.textContent = program ? `${program.mode}${program.live ? '' : ' · offline'}` : '';
    drawChart(this.ui.charts.viewers, this.series.viewers, { format: (v) => String(Math.round(v)) });
    drawChart(this.ui.charts.bitrate, this.series.bitrate, { format: formatBitrate, colour: '#1a7f37' });
    drawChart(this.ui.charts.loss, this.series.loss, {
      format: (v) => `${v.toFixed(1)} %`,
      colour: '#cf222e',
      floor: 1,
    });
    // per-anchor gain and mute (the mixer's); the anchors come with the stage poll
    const anchors = this.cohosts.state.anchors || [];
    const rows = new Map([...this.ui.controls.children].map((li) => [li.dataset.anchor, li]));
    for (const a of anchors) {
      let li = rows.get(a.id);
      rows.delete(a.id);
      if (!li) {
        li = el('li');
        li.dataset.anchor = a.id;
        const gain = el('input', 'gain');
        Object.assign(gain, { type: 'range', min: '0', max: '2', step: '0.05', value: '1' });
        gain.dataset.anchor = a.id;
        gain.title = 'gain in the program mix';
        const mute = el('input', 'mute');
        mute.type = 'checkbox';
        mute.dataset.anchor = a.id;
        const label = el('label', 'inline-check');
        label.append(mute, document.createTextNode(' mute'));
        const kick = button(a.guest ? 'Remove' : 'Kick', 'danger', a.guest ? 'remove-guest' : 'kick');
        kick.dataset.anchor = a.id;
        li.append(el('span', 'who'), gain, label, kick);
        this.ui.controls.append(li);
      }
      li.querySelector('.who').textContent = a.guest ? `${a.name} (guest)` : a.subject;
      li.querySelector('button').dataset.request = a.request_id || '';
      const ctl = this.state.audio[a.id];
      if (ctl && document.activeElement !== li.querySelector('.gain')) {
        li.querySelector('.gain').value = String(ctl.gain);
        li.querySelector('.mute').checked = ctl.muted;
      }
    }
    for (const li of rows.values()) li.remove();
    // layout
    if (layout && document.activeElement !== this.ui.layout) this.ui.layout.value = layout.mode === 'custom' ? 'grid' : layout.mode;
    const speakers = anchors.map((a) => [a.id, a.guest ? a.name : a.subject]);
    const keys = speakers.map(([id]) => id).join();
    if (this.ui.speaker.dataset.keys !== keys) {
      this.ui.speaker.replaceChildren(...speakers.map(([id, name]) => new Option(name, id)));
      this.ui.speaker.dataset.keys = keys;
    }
    if (layout && layout.speaker && document.activeElement !== this.ui.speaker) this.ui.speaker.value = layout.speaker;
    // bridges
    this.ui.bridges.replaceChildren(
      ...bridges.map((b) => {
        const li = el('li');
        li.dataset.bridge = b.id;
        const stop = button('Stop', 'danger', 'bridge-stop');
        stop.dataset.bridge = b.id;
        li.append(el('span', 'who', b.kind.toUpperCase()), el('span', 'muted', `${b.state}${b.url ? ` · ${b.url}` : ''}`), stop);
        return li;
      }),
    );
    // recording
    const rec = recording && recording.recording;
    const cur = recording && recording.current;
    this.ui.recState.textContent = rec
      ? `recording${cur ? ` · ${Math.round(cur.duration_s || 0)} s · ${Math.round((cur.size || 0) / 1024)} KiB` : ' (waiting for the program)'}`
      : 'not recording';
    this.ui.recState.dataset.recording = rec ? 'yes' : 'no';
    this.ui.recStart.disabled = Boolean(rec);
    this.ui.recStop.disabled = !rec;
    // mutes in force
    this.ui.mutes.replaceChildren(
      ...Object.entries(mutes || {}).map(([subject, until]) => {
        const li = el('li');
        const unmute = button('Unmute', '', 'unmute');
        unmute.dataset.subject = subject;
        const left = Math.max(0, Math.round(until - Date.now() / 1000));
        li.append(el('span', 'who', subject), el('span', 'muted', `muted ${left} s`), unmute);
        return li;
      }),
    );
  }

  // -- chat moderation -------------------------------------------------------------------
  joinChat(room) {
    if (this.ws) this.ws.close(1000);
    const ws = openChannel(room, this.key());
    this.ws = ws;
    ws.addEventListener('message', (e) => {
      if (ws !== this.ws) return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg.type !== 'chat') return;
      const subject = msg.from ? msg.from.subject : '';
      this.state.chat.push({ subject, text: msg.text });
      if (this.state.chat.length > MAX_CHAT) this.state.chat.shift();
      const li = el('li');
      li.append(el('b', '', `${subject}: `), document.createTextNode(msg.text));
      if (msg.from && msg.from.role !== 'anchor' && msg.from.role !== 'operator') {
        const mute = button('Mute', 'danger', 'mute-sender');
        mute.dataset.subject = subject;
        li.append(' ', mute);
      }
      this.ui.chat.append(li);
      while (this.ui.chat.children.length > MAX_CHAT) this.ui.chat.firstChild.remove();
      this.ui.chat.scrollTop = this.ui.chat.scrollHeight;
    });
    ws.addEventListener('close', () => {
      if (ws === this.ws && this.room === room) setTimeout(() => this.room === room && this.joinChat(room), 2000);
    });
  }

  // -- actions ---------------------------------------------------------------------------
  async act(method, path, body) {
    try {
      const out = await this.api(method, path, body);
      this.root.querySelector('.stage-message').textContent = '';
      return out;
    } catch (err) {
      this.root.querySelector('.stage-message').textContent = err.message;
      this.state.errors.push(err.message);
      return null;
    } finally {
      this.refresh();
    }
  }

  async onClick(event) {
    const b = event.target.closest('button[data-action]');
    if (!b || !this.room) return;
    const r = encodeURIComponent(this.room);
    const { action } = b.dataset;
    if ((action === 'kick' || action === 'remove-guest') && b.dataset.armed !== '1') {
      // two clicks, as in the room list: a mis-tap must not end somebody's show
      const label = b.textContent;
      b.dataset.armed = '1';
      b.textContent = 'Confirm';
      setTimeout(() => {
        b.dataset.armed = '';
        b.textContent = label;
      }, 4000);
      return;
    }
    if (action === 'rec-start') await this.act('POST', `rooms/${r}/recording`, {});
    else if (action === 'rec-stop') await this.act('DELETE', `rooms/${r}/recording`);
    else if (action === 'bridge-stop') await this.act('DELETE', `rooms/${r}/bridges/${encodeURIComponent(b.dataset.bridge)}`);
    else if (action === 'mute-sender') await this.act('PUT', `rooms/${r}/mutes/${encodeURIComponent(b.dataset.subject)}`, { seconds: 600 });
    else if (action === 'unmute') await this.act('DELETE', `rooms/${r}/mutes/${encodeURIComponent(b.dataset.subject)}`);
    else if (action === 'kick') await this.act('DELETE', `rooms/${r}/anchors/${encodeURIComponent(b.dataset.anchor)}`);
    else if (action === 'remove-guest' && b.dataset.request) {
      // the stage API (not under /v1): the operator key removes a guest
      const url = new URL(`rooms/${r}/stage/requests/${encodeURIComponent(b.dataset.request)}`, document.baseURI);
      await fetch(url, { method: 'DELETE', headers: { Authorization: `Bearer ${this.key()}` } });
      this.refresh();
    }
  }

  async onChange(event) {
    const t = event.target;
    if (!this.room) return;
    const r = encodeURIComponent(this.room);
    if (t.classList.contains('gain') || t.classList.contains('mute')) {
      const li = t.closest('li[data-anchor]');
      const gain = Number(li.querySelector('.gain').value);
      const muted = li.querySelector('.mute').checked;
      const out = await this.act('POST', `rooms/${r}/anchors/${encodeURIComponent(li.dataset.anchor)}/audio`, { gain, muted });
      if (out) this.state.audio[out.anchor_id] = { gain: out.gain, muted: out.muted };
    } else if (t === this.ui.layout || t === this.ui.speaker) {
      const mode = this.ui.layout.value;
      const body = { mode };
      if (mode !== 'grid' && this.ui.speaker.value) body.speaker = this.ui.speaker.value;
      const out = await this.act('PUT', `rooms/${r}/layout`, body);
      if (out) this.state.layout = out;
    }
  }

  async startBridge() {
    if (!this.room) return;
    const url = this.ui.rtmpUrl.value.trim();
    const body = url ? { kind: 'rtmp', url } : { kind: 'hls' };
    const out = await this.act('POST', `rooms/${encodeURIComponent(this.room)}/bridges`, body);
    if (out) this.ui.rtmpUrl.value = '';
  }
}
