// Watch page, audience on stage: raise a hand, wait (long-poll) for the anchor's answer, then
// publish camera + microphone with the guest token (WHIP) and play the room's mix-minus for this
// guest (?mixminus=ID: everyone but itself) instead of the program's audio; "Leave stage" (or
// being removed) ends both and leaves plain watching. State: window.stagecast.stage.
import {
  endSession,
  gatheringDone,
  HttpError,
  loadConfig,
  negotiate,
  newPeerConnection,
  problemText,
} from './signaling.js';
import { endpointUrl, sleep } from './util.js';

function stageUrl(room, rest = '') {
  return new URL(`rooms/${encodeURIComponent(room)}/stage/requests${rest}`, document.baseURI).href;
}

async function jsonOrThrow(resp) {
  if (resp.ok) return resp.json();
  let detail = resp.statusText;
  try {
    const problem = await resp.json();
    detail = problem.detail || problem.title || detail;
  } catch {
    /* keep the status text */
  }
  const retry = Number.parseFloat(resp.headers.get('Retry-After') || '');
  throw new HttpError(resp.status, resp.statusText, detail, Number.isFinite(retry) ? retry : null);
}

export class GuestStage {
  /**
   * ui: {raise, leave, name, status, self (video), audio (audio element)};
   * onStage(bool): the page mutes/unmutes its program audio.
   */
  constructor(ui, onStage) {
    this.ui = ui;
    this.onStage = onStage;
    this.state = {
      state: 'idle', // idle | pending | approved | joining | on-stage | refused | left | error
      requestId: null,
      anchorId: null,
      error: null,
      approvedAt: null, // Date.now() when the approval reached this page
      publishedAt: null, // ... when the WHIP answer came
      mixminusStream: null,
      localStream: null,
    };
    this.room = null;
    this.viewerToken = '';
    this.key = null;
    this.run = 0;
    this.whip = null; // {pc, session}
    this.mixminus = null; // {pc, session}
    this.guestToken = null;
    ui.raise.addEventListener('click', () => this.raise());
    ui.leave.addEventListener('click', () => this.leave());
    window.addEventListener('pagehide', () => this.leave(true));
    this.render();
  }

  setRoom(room, viewerToken) {
    if (this.room !== room && this.key) this.leave();
    this.room = room;
    this.viewerToken = viewerToken;
    this.render();
  }

  render(message = '') {
    const s = this.state.state;
    const open = s === 'pending' || s === 'approved' || s === 'joining' || s === 'on-stage';
    this.ui.raise.disabled = open || !this.room;
    this.ui.leave.disabled = !open;
    this.ui.leave.textContent = s === 'pending' ? 'Lower hand' : 'Leave stage';
    this.ui.name.disabled = open;
    const text = {
      idle: '',
      pending: 'Hand raised: waiting for the host…',
      approved: 'Approved: starting your camera…',
      joining: 'Joining the stage…',
      'on-stage': 'You are on stage.',
      refused: 'The host declined.',
      left: 'You left the stage.',
      error: 'Could not join the stage.',
    }[s];
    this.ui.status.textContent = message || text || '';
    this.ui.status.dataset.state = s;
    this.ui.self.hidden = !open; // a preview while the hand is up
  }

  set(state, message = '') {
    this.state.state = state;
    this.render(message);
  }

  async raise() {
    if (!this.room) return;
    const name = this.ui.name.value.trim() || 'Guest';
    const myRun = ++this.run;
    this.state.error = null;
    try {
      const headers = { 'Content-Type': 'application/json' };
      if (this.viewerToken) headers.Authorization = `Bearer ${this.viewerToken}`;
      const body = await jsonOrThrow(
        await fetch(stageUrl(this.room), { method: 'POST', headers, body: JSON.stringify({ name }) }),
      );
      this.key = body.key;
      this.state.requestId = body.id;
      this.set('pending');
      this.prepare(myRun);
      this.poll(myRun, this.room, body.id, body.version);
    } catch (err) {
      this.state.error = problemText(err);
      this.set('error', `Could not raise your hand: ${this.state.error}`);
    }
  }

  /** Long-polls the request; acts on each change until it is finished or another run starts. */
  async poll(myRun, room, id, version) {
    let seen = version;
    while (myRun === this.run) {
      let view;
      try {
        const url = new URL(stageUrl(room, `/${encodeURIComponent(id)}`));
        url.searchParams.set('after', String(seen));
        url.searchParams.set('wait', '20');
        view = await jsonOrThrow(
          await fetch(url, { headers: { 'X-Stage-Key': this.key }, cache: 'no-store' }),
        );
      } catch (err) {
        if (myRun !== this.run) return;
        if (err instanceof HttpError && (err.status === 404 || err.status === 403)) {
          this.finish('left', 'Your stage request is gone.');
          return;
        }
        await sleep(1000);
        continue;
      }
      if (myRun !== this.run) return;
      seen = view.version;
      if (view.state === 'approved' && !this.guestToken && this.state.state === 'pending') {
        this.state.approvedAt = Date.now();
        this.guestToken = view.token;
        this.join(myRun, room, view.token); // keeps polling meanwhile: a removal must be seen
      } else if (view.state === 'joined') {
        this.state.anchorId = view.anchor_id;
      } else if (view.state === 'refused') {
        this.finish('refused');
        return;
      } else if (['left', 'removed', 'expired', 'withdrawn'].includes(view.state)) {
        const why = view.state === 'removed' ? 'The host took you off the stage.' : '';
        this.finish('left', why);
        return;
      }
    }
  }

  /** While the hand is up: the camera and microphone (a preview) and the WHIP offer with its
   * candidates gathered, so that an approval costs only the POST. */
  prepare(myRun) {
    this.prepared = (async () => {
      const stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } },
        audio: { echoCancellation: true, noiseSuppression: true },
      });
      if (myRun !== this.run) {
        stream.getTracks().forEach((t) => t.stop());
        throw new Error('cancelled');
      }
      this.state.localStream = stream;
      this.ui.self.srcObject = stream;
      const pc = await newPeerConnection(this.viewerToken);
      for (const track of stream.getTracks()) {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
      this.whip = { pc, session: null };
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringDone(pc, (await loadConfig(this.viewerToken)).gatherTimeoutMs);
      return pc;
    })();
    this.prepared.catch(async (err) => {
      if (myRun !== this.run) return;
      this.state.error = problemText(err);
      await this.leave(false, `Camera/microphone: ${this.state.error}`);
    });
  }

  async join(myRun, room, token) {
    this.set('approved');
    try {
      const pc = await this.prepared;
      if (myRun !== this.run) return;
      this.set('joining');
      this.whip.session = await negotiate(pc, endpointUrl('whip', room), { token });
      this.state.publishedAt = Date.now();
      const anchorId = new URL(this.whip.session.location).pathname.split('/').pop();
      this.state.anchorId = anchorId;
      pc.addEventListener('connectionstatechange', () => {
        if (pc.connectionState === 'failed' && this.whip && this.whip.pc === pc) this.leave();
      });
      if (myRun !== this.run) return;
      // a busy node answers 503 (or 409 before the mix-minus exists): wait, try again
      for (let attempt = 1; ; attempt++) {
        try {
          await this.listen(room, anchorId, token);
          break;
        } catch (err) {
          const again = err instanceof HttpError && (err.status === 503 || err.status === 409);
          if (!again || attempt >= 5 || myRun !== this.run) throw err;
          await sleep(1000 * Math.min(2, err.retryAfter || 1));
        }
      }
      if (myRun !== this.run) return;
      this.onStage(true);
      this.set('on-stage');
    } catch (err) {
      if (myRun !== this.run) return;
      this.state.error = problemText(err);
      await this.leave(false, `Could not go on stage: ${this.state.error}`);
    }
  }

  /** The mix-minus: everyone on stage but this guest, audio only, with the guest's token. */
  async listen(room, anchorId, token) {
    const pc = await newPeerConnection(token);
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const stream = new MediaStream();
    pc.addEventListener('track', (e) => {
      stream.addTrack(e.track);
      this.state.mixminusStream = stream;
      this.ui.audio.srcObject = stream;
      this.ui.audio.play().catch(() => {});
    });
    const url = `${endpointUrl('whep', room)}?mixminus=${encodeURIComponent(anchorId)}`;
    try {
      this.mixminus = { pc, session: await negotiate(pc, url, { token }) };
    } catch (err) {
      pc.close();
      throw err;
    }
  }

  /** Steps down (or lowers the hand): the gateway ends the WHIP session and revokes the token. */
  async leave(unloading = false, message = '') {
    const { key } = this;
    if (!key && !this.whip) return;
    const id = this.state.requestId;
    const room = this.room;
    this.run += 1;
    if (key && id && room) {
      try {
        await fetch(stageUrl(room, `/${encodeURIComponent(id)}`), {
          method: 'DELETE',
          headers: { 'X-Stage-Key': key },
          keepalive: unloading,
        });
      } catch {
        /* the gateway ends a guest whose session goes quiet */
      }
    }
    this.finish(message ? 'error' : 'left', message);
  }

  finish(state, message = '') {
    this.run += 1;
    const mm = this.mixminus;
    this.mixminus = null;
    if (mm) {
      endSession(mm.session, this.guestToken || '');
      mm.pc.close();
    }
    const whip = this.whip;
    this.whip = null;
    if (whip) whip.pc.close();
    if (this.state.localStream) this.state.localStream.getTracks().forEach((t) => t.stop());
    this.state.localStream = null;
    this.state.mixminusStream = null;
    this.ui.audio.srcObject = null;
    this.ui.self.srcObject = null;
    this.key = null;
    this.prepared = null;
    this.guestToken = null;
    this.state.anchorId = null;
    this.onStage(false);
    this.set(state, message);
  }
}
