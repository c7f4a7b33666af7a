// Room chat panel: the room's channel over WebSocket (/rooms/ROOM/messages): chat lines, a like
// counter and a like button. Reconnects with backoff; refused messages show as notices.
// State for tests and embedding pages: window.stagecastChat.
import { $, openChannel, sleep } from './util.js';

const MAX_LINES = 200;

export class RoomChat {
  /** Builds the panel inside `root` (an element with no children of its own). */
  constructor(root) {
    root.innerHTML = `
      <h2>Chat <small class="chat-state">offline</small></h2>
      <ol class="chat-log" aria-live="polite"></ol>
      <form class="chat-form" autocomplete="off">
        <input class="chat-input" name="text" maxlength="500" placeholder="Say something…">
        <button class="chat-send" type="submit">Send</button>
        <button class="chat-like" type="button" title="Like">❤ <b class="chat-likes">0</b></button>
      </form>
      <p class="chat-notice message" role="status"></p>`;
    this.ui = {
      state: $('.chat-state', root),
      log: $('.chat-log', root),
      form: $('.chat-form', root),
      input: $('.chat-input', root),
      like: $('.chat-like', root),
      likes: $('.chat-likes', root),
      notice: $('.chat-notice', root),
    };
    this.state = { state: 'offline', lines: [], likes: 0, can: {}, you: null, errors: [] };
    window.stagecastChat = this.state;
    this.ws = null;
    this.run = 0;
    this.pendingLikes = 0;
    this.ui.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.sendChat();
    });
    this.ui.like.addEventListener('click', () => this.like());
    // likes clicked quickly go out as one frame carrying their count (a few a second at most)
    setInterval(() => this.flushLikes(), 250);
  }

  setState(text) {
    this.state.state = text;
    this.ui.state.textContent = text;
  }

  /** Joins `room` (leaving any other); keeps reconnecting until `leave()` or another join. */
  async join(room, token) {
    const myRun = ++this.run;
    if (this.ws) this.ws.close(1000);
    this.ui.log.textContent = '';
    this.state.lines = [];
    let backoff = 500;
    while (myRun === this.run) {
      this.setState('connecting…');
      const code = await this.connectOnce(room, token, myRun);
      if (myRun !== this.run) return;
      if (code === 4401 || code === 4403) {
        this.setState('refused');
        this.notice(code === 4401 ? 'A token is needed to join this chat.' : 'This token is not for this room.');
        return;
      }
      this.setState('reconnecting…');
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 8000);
    }
  }

  leave() {
    this.run += 1;
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.setState('offline');
  }

  connectOnce(room, token, myRun) {
    return new Promise((resolve) => {
      const ws = openChannel(room, token);
      this.ws = ws;
      ws.addEventListener('message', (e) => {
        if (myRun === this.run) this.onMessage(JSON.parse(e.data));
      });
      ws.addEventListener('close', (e) => {
        if (this.ws === ws) this.ws = null;
        if (e.code === 1009) this.notice('That message was too long.');
        resolve(e.code);
      });
    });
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'welcome':
        this.state.can = msg.can;
        this.state.you = msg.you;
        this.setLikes(msg.likes);
        this.setState(msg.can.chat ? 'live' : 'read only');
        this.ui.input.disabled = !msg.can.chat;
        this.ui.like.disabled = !msg.can.like;
        break;
      case 'chat':
      case 'system':
        this.addLine(msg);
        break;
      case 'likes':
        this.setLikes(msg.total);
        break;
      case 'error':
        this.state.errors.push(msg);
        this.notice(msg.status === 429 ? 'Slow down a little.' : msg.detail);
        break;
      default:
        break; // commands are for pages that know them
    }
  }

  addLine(msg) {
    const line = { type: msg.type, text: msg.text, from: msg.from ? msg.from.subject : '' };
    this.state.lines.push(line);
    const li = document.createElement('li');
    li.dataset.kind = msg.type;
    if (msg.type === 'chat') {
      const who = document.createElement('b');
      who.textContent = `${line.from}${msg.from.role === 'anchor' ? ' ★' : ''}: `;
      li.append(who);
    }
    li.append(document.createTextNode(msg.text)); // text, never HTML
    this.ui.log.append(li);
    while (this.ui.log.children.length > MAX_LINES) this.ui.log.firstElementChild.remove();
    this.ui.log.scrollTop = this.ui.log.scrollHeight;
  }

  setLikes(total) {
    if (total >= this.state.likes) {
      this.state.likes = total;
      this.ui.likes.textContent = String(total);
    }
  }

  notice(text) {
    this.ui.notice.textContent = text;
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  sendChat() {
    const text = this.ui.input.value.trim();
    if (!text) return;
    if (this.send({ type: 'chat', text })) {
      this.ui.input.value = '';
      this.notice('');
    }
  }

  like() {
    this.pendingLikes += 1;
  }

  flushLikes() {
    if (this.pendingLikes && this.send({ type: 'like', count: this.pendingLikes })) {
      this.pendingLikes = 0;
    }
  }
}
