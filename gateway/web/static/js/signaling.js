// WHIP/WHEP signalling shared by the publish and watch pages (RFC 9725 and the WHEP draft).
//
// ICE strategy, the same on both pages: wait for candidate gathering to finish (bounded by
// gatherTimeoutMs), drop the browser's mDNS ".local" host candidates, and send one offer; no
// trickle. The gateway (aiortc) cannot use ".local" names: resolving one over multicast DNS
// holds its answer for up to a second and usually fails anyway. It does not need them either:
// its answer lists its own host candidates, the browser sends connectivity checks to those, and
// the gateway learns the browser's address from those checks (a peer-reflexive candidate,
// RFC 8445 7.3.1.3). Plain IP candidates (a LAN address once camera permission is granted,
// srflx/relay ones from configured STUN/TURN servers) are kept.

export class HttpError extends Error {
  constructor(status, title, detail, retryAfter) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
    this.retryAfter = retryAfter;
  }
}

const configs = new Map();

/** The gateway's client settings: {iceServers, anonymousAudience, gatherTimeoutMs}. With a
 * token the gateway may add a TURN credential it does not give anonymous callers. */
export function loadConfig(token = '') {
  if (!configs.has(token)) {
    configs.set(
      token,
      fetch('config.json', { cache: 'no-store', headers: authHeaders(token) })
        .then((r) => (r.ok ? r.json() : {}))
        .catch(() => ({}))
        .then((c) => ({ iceServers: [], gatherTimeoutMs: 1500, anonymousAudience: true, ...c })),
    );
  }
  return configs.get(token);
}

/** A peer connection configured from the gateway's settings (no STUN unless configured). */
export async function newPeerConnection(token = '') {
  const config = await loadConfig(token);
  return new RTCPeerConnection({ iceServers: config.iceServers, bundlePolicy: 'max-bundle' });
}

/** Removes candidates whose address is an mDNS name (draft-ietf-mmusic-mdns-ice-candidates). */
export function stripMdnsCandidates(sdp) {
  return sdp
    .split('\r\n')
    .filter((line) => {
      if (!line.startsWith('a=candidate:')) return true;
      const address = line.split(' ')[4] || '';
      return !address.toLowerCase().endsWith('.local');
    })
    .join('\r\n');
}

/** Resolves once ICE gathering is complete, or after timeoutMs, whichever comes first. */
export function gatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function httpError(resp) {
  let title = resp.statusText;
  let detail = '';
  try {
    const type = resp.headers.get('Content-Type') || '';
    if (type.includes('json')) {
      const problem = await resp.json();
      title = problem.title || title;
      detail = problem.detail || '';
    } else {
      detail = (await resp.text()).slice(0, 200);
    }
  } catch {
    /* keep the status line */
  }
  const retry = Number.parseFloat(resp.headers.get('Retry-After') || '');
  return new HttpError(resp.status, title, detail, Number.isFinite(retry) ? retry : null);
}

/**
 * Offer/answer over WHIP or WHEP: POSTs the local offer to `endpoint`, applies the answer.
 * Returns the session {location, etag} and how long gathering, the POST and applying the
 * answer took (gatherMs, postMs, applyMs); throws HttpError when the gateway refuses.
 */
export async function negotiate(pc, endpoint, { token = '', signal } = {}) {
  const config = await loadConfig(token);
  const t0 = performance.now();
  // a page may have made its offer (and gathered) ahead, e.g. while a hand is raised
  if (!pc.localDescription) await pc.setLocalDescription(await pc.createOffer());
  await gatheringDone(pc, config.gatherTimeoutMs);
  const gatherMs = performance.now() - t0;
  const offer = stripMdnsCandidates(pc.localDescription.sdp);
  const resp = await fetch(endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', ...authHeaders(token) },
    body: offer,
    signal,
  });
  if (resp.status !== 201) throw await httpError(resp);
  const answer = await resp.text();
  const location = new URL(resp.headers.get('Location'), resp.url).href;
  const postMs = performance.now() - t0 - gatherMs;
  await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  const applyMs = performance.now() - t0 - gatherMs - postMs;
  return { location, etag: resp.headers.get('ETag'), gatherMs, postMs, applyMs };
}

/** Ends a WHIP/WHEP session (DELETE on its resource); errors are ignored. */
export async function endSession(session, token = '') {
  if (!session) return;
  try {
    await fetch(session.location, { method: 'DELETE', headers: authHeaders(token), keepalive: true });
  } catch {
    /* the gateway reaps sessions whose peer goes away */
  }
}

/** True when the room has a live stream (WHEP HEAD: 200 live, 409 not live); HEAD takes the
 * token a POST takes (a private room's liveness is its secret). */
export async function isLive(endpoint, token = '') {
  try {
    const resp = await fetch(endpoint, { method: 'HEAD', cache: 'no-store', headers: authHeaders(token) });
    return resp.status === 200;
  } catch {
    return false;
  }
}

export function problemText(err) {
  if (err instanceof HttpError) {
    return `${err.status} ${err.title}${err.message && err.message !== err.title ? `: ${err.message}` : ''}`;
  }
  return err && err.message ? err.message : String(err);
}
