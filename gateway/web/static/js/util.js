// Small DOM and formatting helpers shared by the pages.

export const $ = (selector, root = document) => root.querySelector(selector);

export function params() {
  return new URLSearchParams(window.location.search);
}

/** A URL relative to the page, so the pages also work under a path prefix. */
export function endpointUrl(kind, room) {
  return new URL(`${kind}/${encodeURIComponent(room)}`, document.baseURI).href;
}

/** Base64url of a string's UTF-8 bytes, without padding. */
function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * A WebSocket on the room's channel (rooms/ROOM/messages). The credential rides the
 * subprotocol header ("stagecast.bearer.<base64url>"), never the URL, so it does not land in
 * a proxy's access log.
 */
export function openChannel(room, token) {
  const url = new URL(`rooms/${encodeURIComponent(room)}/messages`, document.baseURI);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const protocols = ['stagecast'];
  if (token) protocols.push(`stagecast.bearer.${base64url(token)}`);
  return new WebSocket(url.href, protocols);
}

export function formatBitrate(bps) {
  if (!Number.isFinite(bps) || bps <= 0) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbps`;
  return `${Math.round(bps / 1e3)} kbps`;
}

export function formatPercent(value) {
  return Number.isFinite(value) ? `${value.toFixed(1)} %` : '–';
}

export function formatMs(value) {
  return Number.isFinite(value) ? `${Math.round(value)} ms` : '–';
}

/** Sets a status pill: text plus a data-state attribute the stylesheet colours. */
export function setStatus(el, state, text) {
  el.dataset.state = state;
  el.textContent = text;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const ROOM = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/; // no leading dot, as the gateway's
export function validRoom(room) {
  return ROOM.test(room);
}
