// Small DOM and formatting helpers shared by the pages.

export const $ = (selector, root = document) => root.querySelector(selector);

export function params() {
  return new URLSearchParams(window.location.search);
}

/** A URL relative to the page, so the pages also work under a path prefix. */
export function endpointUrl(kind, room) {
  return new URL(`${kind}/${encodeURIComponent(room)}`, document.baseURI).href;
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
