// LopSo client library: signalling WebSocket, WHIP/WHEP, getStats summaries.
// No DOM code here (pages own the DOM). Plain ES2017 so old Chromium / Android browsers
// run it: no optional chaining, no nullish coalescing, no class fields.

/**
 * @typedef {{type: string, id?: string, [key: string]: any}} Message
 * @typedef {{rtt_ms: number|null, loss_pct: number, jitter_ms: number|null, kbps: number|null,
 *            fps: number, frames_decoded: number, freeze_count: number,
 *            frames_sent: number}} QualitySummary
 */

/** Exponential backoff with jitter; never gives up, only caps the delay. */
export class Backoff {
  /** @param {{base?: number, max?: number, factor?: number, jitter?: number}} [opts] */
  constructor(opts) {
    const o = opts || {};
    this.base = o.base || 500;
    this.max = o.max || 15000;
    this.factor = o.factor || 2;
    this.jitter = o.jitter === undefined ? 0.3 : o.jitter;
    this.attempt = 0;
  }

  /** @returns {number} milliseconds to wait before the next attempt */
  next() {
    const raw = Math.min(this.max, this.base * Math.pow(this.factor, this.attempt));
    this.attempt += 1;
    const spread = raw * this.jitter;
    return Math.max(0, Math.round(raw - spread + Math.random() * 2 * spread));
  }

  reset() {
    this.attempt = 0;
  }
}

/** @param {number} ms @returns {Promise<void>} */
export function sleep(ms) {
  return new Promise(function (resolve) { setTimeout(resolve, ms); });
}

/** An HTTP error with the server's machine code (docs/protocol.md error shape). */
export class HttpError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message || code || ("HTTP " + status));
    this.name = "HttpError";
    this.status = status;
    this.code = code;
  }
}

/** @param {Response} resp @returns {Promise<HttpError>} */
async function httpErrorFrom(resp) {
  let code = "http_" + resp.status;
  let message = resp.statusText;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (e) { /* not JSON: keep the status line */ }
  return new HttpError(resp.status, code, message);
}

/** The CSRF token of a signed-in page (page config `csrf`), sent with every change. */
let csrfToken = "";
/** @param {string} token from the page config of a signed-in page */
export function setCsrfToken(token) { csrfToken = token || ""; }

/**
 * JSON request with a bearer token; an empty token means the sign-in cookie (then the CSRF
 * token goes along). Throws HttpError on a non-2xx answer.
 * @param {string} url @param {string} token
 * @param {{method?: string, body?: any, text?: string, contentType?: string}} [opts]
 * @returns {Promise<any>}
 */
export async function apiRequest(url, token, opts) {
  const o = opts || {};
  /** @type {Record<string, string>} */
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  /** @type {RequestInit} */
  const init = { method: o.method || "GET", headers: headers, credentials: "same-origin" };
  if (o.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(o.body);
  } else if (o.text !== undefined) {
    headers["Content-Type"] = o.contentType || "text/csv";
    init.body = o.text;
  }
  const resp = await fetch(url, init);
  if (!resp.ok) throw await httpErrorFrom(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : {};
}

/** @param {string} path a path like /ws/abc?token=... @returns {string} an absolute ws(s) URL */
export function wsUrl(path) {
  if (/^wss?:/.test(path)) return path;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return scheme + "//" + location.host + path;
}

let idCounter = 0;
/** @returns {string} a message id unique within this page */
export function newId() {
  idCounter += 1;
  return Date.now().toString(36) + "-" + idCounter.toString(36) + "-" +
    Math.random().toString(36).slice(2, 8);
}

/**
 * One signalling WebSocket per page: reconnects with backoff, heartbeats every 10 s,
 * and keeps messages that need an ack in a queue that is resent after every reconnect
 * (and survives a page reload when `storageKey` is given).
 * It stops for good when its link was revoked (the site's join key was rotated): on a
 * `revoked` message, or when a connect fails and a plain GET of the same URL answers
 * `401 token_revoked` (a browser hides a refused upgrade's status). It then emits
 * `"rejected"` with the HttpError and goes to state "closed".
 */
export class Channel {
  /**
   * @param {string} path ws path from page config (e.g. /ws/<sid>?token=...)
   * @param {{heartbeatMs?: number, storageKey?: string, backoff?: Backoff,
   *          ackTimeoutMs?: number}} [opts]
   */
  constructor(path, opts) {
    const o = opts || {};
    this.url = wsUrl(path);
    this.heartbeatMs = o.heartbeatMs || 10000;
    this.storageKey = o.storageKey || "";
    this.backoff = o.backoff || new Backoff({ base: 500, max: 10000 });
    /** @type {WebSocket|null} */
    this.ws = null;
    /** @type {"idle"|"connecting"|"open"|"closed"} */
    this.state = "idle";
    this.stopped = false;
    /** @type {Map<string, {msg: Message, resolve: Function, reject: Function}>} */
    this.pending = new Map();
    /** @type {Map<string, Function[]>} */
    this.handlers = new Map();
    this.timer = 0;
    this.reconnects = 0;
    this.restorePending();
  }

  /** Register a handler for a server message type ("*" = every message, "state" = state). */
  on(type, fn) {
    const list = this.handlers.get(type) || [];
    list.push(fn);
    this.handlers.set(type, list);
    return this;
  }

  emit(type, arg) {
    const lists = [this.handlers.get(type) || [], type === "state" ? [] : (this.handlers.get("*") || [])];
    for (const list of lists) {
      for (const fn of list) {
        try { fn(arg); } catch (e) { console.error("lopso handler", type, e); }
      }
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  connect() {
    if (this.stopped) return;
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.onOpen();
    ws.onmessage = (ev) => this.onFrame(ev.data);
    let opened = false;
    ws.addEventListener("open", function () { opened = true; });
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.timer);
      if (opened || this.stopped) this.scheduleReconnect();
      else this.probeThenReconnect();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  onOpen() {
    this.backoff.reset();
    this.setState("open");
    clearInterval(this.timer);
    this.timer = setInterval(() => this.send({ type: "heartbeat" }), this.heartbeatMs);
    for (const entry of this.pending.values()) {
      if (!entry.once) this.rawSend(entry.msg);
    }
  }

  onFrame(data) {
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (!msg || typeof msg.type !== "string") return;
    if (msg.type === "revoked") {
      this.emit(msg.type, msg);
      this.stop(new HttpError(401, "token_revoked", "the link was replaced"));
      return;
    }
    if ((msg.type === "ack" || msg.type === "error") && msg.id && this.pending.has(msg.id)) {
      const entry = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      this.savePending();
      if (msg.type === "ack") entry.resolve(msg);
      else entry.reject(new HttpError(0, msg.code || "error", msg.message || msg.code));
    }
    this.emit(msg.type, msg);
  }

  /** A connect failed before opening: ask why (one GET); stop if the link was revoked. */
  async probeThenReconnect() {
    let err = null;
    try {
      const resp = await fetch(this.url.replace(/^ws/, "http"), { cache: "no-store" });
      if (resp.status === 401) err = await httpErrorFrom(resp);
    } catch (e) { /* offline: just retry later */ }
    if (err && err.code === "token_revoked") {
      this.stop(err);
      return;
    }
    this.scheduleReconnect();
  }

  /** Stop for good because the server refused this page's link. @param {HttpError} err */
  stop(err) {
    this.close();
    this.emit("rejected", err);
  }

  scheduleReconnect() {
    if (this.stopped) { this.setState("closed"); return; }
    this.setState("connecting");
    this.reconnects += 1;
    setTimeout(() => this.connect(), this.backoff.next());
  }

  rawSend(msg) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Fire and forget (heartbeat, status, quality): dropped while disconnected. */
  send(msg) {
    return this.rawSend(msg);
  }

  /**
   * Send a message that the server acknowledges once stored; resent after reconnects until
   * acked. Resolves with the ack, rejects with the server's error.
   * @param {Message} msg @returns {Promise<Message>}
   */
  request(msg) {
    const full = Object.assign({}, msg, { id: msg.id || newId() });
    return new Promise((resolve, reject) => {
      this.pending.set(full.id, { msg: full, resolve: resolve, reject: reject });
      this.savePending();
      this.rawSend(full);
    });
  }

  /**
   * Send once, now (never resent: a moderator's command must not repeat after a reconnect).
   * Resolves with the ack, or null when none came within `timeoutMs`; rejects on the
   * server's error or when the socket is not open.
   * @param {Message} msg @param {number} [timeoutMs] @returns {Promise<Message|null>}
   */
  call(msg, timeoutMs) {
    const full = Object.assign({}, msg, { id: msg.id || newId() });
    return new Promise((resolve, reject) => {
      if (!this.rawSend(full)) {
        reject(new HttpError(0, "offline", "not connected"));
        return;
      }
      const timer = setTimeout(() => { this.pending.delete(full.id); resolve(null); }, timeoutMs || 5000);
      const done = (fn) => (arg) => { clearTimeout(timer); fn(arg); };
      // Not saved to storage and removed on timeout, so it is never resent.
      this.pending.set(full.id, { msg: full, resolve: done(resolve), reject: done(reject), once: true });
    });
  }

  savePending() {
    if (!this.storageKey) return;
    try {
      const msgs = [];
      for (const entry of this.pending.values()) {
        if (!entry.once) msgs.push(entry.msg);
      }
      localStorage.setItem(this.storageKey, JSON.stringify(msgs));
    } catch (e) { /* storage full or disabled: the in-memory queue still works */ }
  }

  restorePending() {
    if (!this.storageKey) return;
    let msgs = [];
    try { msgs = JSON.parse(localStorage.getItem(this.storageKey) || "[]"); } catch (e) { msgs = []; }
    for (const msg of msgs) {
      if (msg && msg.id) this.pending.set(msg.id, { msg: msg, resolve: function () {}, reject: function () {} });
    }
  }

  /** Close for good (no reconnect). */
  close() {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.setState("closed");
  }
}

/**
 * Wait until ICE gathering completes, or at most `ms` milliseconds.
 * @param {RTCPeerConnection} pc @param {number} ms
 */
export function waitIceGathering(pc, ms) {
  if (pc.iceGatheringState === "complete" || ms <= 0) return Promise.resolve();
  return new Promise(function (resolve) {
    const done = function () {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = function () { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * The RTCPeerConnection settings of a page: one bundle, the page config's ICE servers (TURN
 * with credentials the server minted) or fresher ones from a later answer's `Link` headers,
 * and `relay` when the page was opened with `?ice=relay` (TURN only: a technician's check).
 * @param {{ice_servers?: RTCIceServer[], ice_transport_policy?: string}} page
 * @param {RTCIceServer[]} [fresh] @returns {RTCConfiguration}
 */
export function rtcConfig(page, fresh) {
  return {
    bundlePolicy: "max-bundle",
    iceServers: fresh && fresh.length ? fresh : page.ice_servers || [],
    iceTransportPolicy: page.ice_transport_policy === "relay" ? "relay" : "all",
  };
}

/**
 * The ICE servers of RFC 9725 `Link: <turn:...>; rel="ice-server"; username="..."; ...`
 * headers (fetch joins several into one comma-separated value), as RTCIceServer objects.
 * @param {string|null} header @returns {RTCIceServer[]}
 */
export function parseIceLinks(header) {
  /** @type {RTCIceServer[]} */
  const servers = [];
  const re = /<([^>]*)>((?:\s*;\s*[a-zA-Z-]+\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,]*))*)/g;
  let m;
  while ((m = re.exec(header || "")) !== null) {
    /** @type {Record<string, string>} */
    const params = {};
    const pre = /;\s*([a-zA-Z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,]*))/g;
    let p;
    while ((p = pre.exec(m[2])) !== null) {
      params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, "$1") : p[3].trim();
    }
    if (params.rel !== "ice-server") continue;
    /** @type {RTCIceServer} */
    const server = { urls: m[1] };
    if (params.username !== undefined) {
      server.username = params.username;
      server.credential = params.credential || "";
    }
    servers.push(server);
  }
  return servers;
}

/**
 * One WHIP or WHEP resource: POST the offer, apply the answer, DELETE on stop.
 * The server is ICE-lite, so the offer may go before gathering completes (`iceWaitMs`).
 */
export class WhxSession {
  /** @param {string} url whip_url / whep_url from page config @param {string} token */
  constructor(url, token) {
    this.url = url;
    this.token = token;
    /** @type {string|null} */
    this.location = null;
    /** @type {RTCIceServer[]} the answer's `Link` ICE servers (fresh TURN credentials) */
    this.iceServers = [];
  }

  /**
   * @param {RTCPeerConnection} pc with its transceivers already added
   * @param {{iceWaitMs?: number}} [opts]
   */
  async start(pc, opts) {
    const o = opts || {};
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await waitIceGathering(pc, o.iceWaitMs === undefined ? 1000 : o.iceWaitMs);
    const resp = await fetch(this.url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + this.token },
      body: pc.localDescription.sdp,
    });
    if (resp.status !== 201 && resp.status !== 200) throw await httpErrorFrom(resp);
    const loc = resp.headers.get("Location");
    this.location = loc ? new URL(loc, new URL(this.url, location.href)).toString() : null;
    this.iceServers = parseIceLinks(resp.headers.get("Link"));
    const answer = await resp.text();
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  /** DELETE the resource; best effort (the server also notices a dead transport). */
  async stop() {
    const loc = this.location;
    this.location = null;
    if (!loc) return;
    try {
      await fetch(loc, { method: "DELETE", headers: { "Authorization": "Bearer " + this.token },
        keepalive: true });
    } catch (e) { /* the server times the resource out */ }
  }
}

/**
 * Order a transceiver's codecs so the class codec is negotiated (VP8 or H264
 * constrained-baseline, packetization-mode 1, which the server accepts), keeping RTX.
 * @param {RTCRtpTransceiver} transceiver @param {string} codec "VP8" | "H264"
 * @param {"sender"|"receiver"} side
 * @returns {boolean} false when the browser has no such codec or cannot set preferences
 */
export function preferVideoCodec(transceiver, codec, side) {
  const api = side === "receiver" ? window.RTCRtpReceiver : window.RTCRtpSender;
  if (!transceiver.setCodecPreferences || !api || !api.getCapabilities) return false;
  const caps = api.getCapabilities("video");
  if (!caps) return false;
  const want = "video/" + String(codec || "VP8").toUpperCase();
  const chosen = caps.codecs.filter(function (c) {
    if (c.mimeType.toUpperCase() !== want.toUpperCase()) return false;
    if (want === "video/H264") {
      const fmtp = c.sdpFmtpLine || "";
      return /packetization-mode=1/.test(fmtp) && /profile-level-id=42(e0|00)1f/i.test(fmtp);
    }
    return true;
  });
  if (!chosen.length) return false;
  chosen.sort(function (a, b) {
    return (/42e01f/i.test(b.sdpFmtpLine || "") ? 1 : 0) - (/42e01f/i.test(a.sdpFmtpLine || "") ? 1 : 0);
  });
  const rtx = caps.codecs.filter(function (c) { return c.mimeType.toLowerCase() === "video/rtx"; });
  try {
    transceiver.setCodecPreferences(chosen.concat(rtx));
    return true;
  } catch (e) {
    return false;
  }
}

/**
 * Summarises getStats() between two calls: what a site sends as `quality` every 5 s, and
 * what the studio shows about its own publish.
 */
export class StatsSampler {
  /** @param {RTCPeerConnection} pc @param {"inbound"|"outbound"} direction */
  constructor(pc, direction) {
    this.pc = pc;
    this.direction = direction || "inbound";
    this.prev = null;
  }

  /** @returns {Promise<QualitySummary>} */
  async sample() {
    const report = await this.pc.getStats();
    const now = {
      t: performance.now(), bytes: 0, packets: 0, lost: 0, framesDecoded: 0, framesSent: 0,
      freezes: 0, jitter: null, rtt: null, fps: null,
    };
    report.forEach((s) => this.accumulate(now, s, report));
    const prev = this.prev;
    this.prev = now;
    return summarise(prev, now);
  }

  accumulate(now, s, report) {
    if (s.type === "inbound-rtp" && this.direction === "inbound") {
      now.bytes += s.bytesReceived || 0;
      now.packets += s.packetsReceived || 0;
      now.lost += Math.max(0, s.packetsLost || 0);
      if (s.kind === "video") {
        now.framesDecoded += s.framesDecoded || 0;
        now.freezes += s.freezeCount || 0;
        if (typeof s.framesPerSecond === "number") now.fps = s.framesPerSecond;
        if (typeof s.jitter === "number") now.jitter = s.jitter * 1000;
      }
    } else if (s.type === "outbound-rtp" && this.direction === "outbound") {
      now.bytes += s.bytesSent || 0;
      now.packets += s.packetsSent || 0;
      if (s.kind === "video") {
        now.framesSent += s.framesSent || s.framesEncoded || 0;
        if (typeof s.framesPerSecond === "number") now.fps = s.framesPerSecond;
      }
    } else if (s.type === "remote-inbound-rtp" && this.direction === "outbound") {
      now.lost += Math.max(0, s.packetsLost || 0);
      if (typeof s.roundTripTime === "number") now.rtt = s.roundTripTime * 1000;
      if (s.kind === "video" && typeof s.jitter === "number") now.jitter = s.jitter * 1000;
    } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      if (typeof s.currentRoundTripTime === "number") now.rtt = s.currentRoundTripTime * 1000;
    } else if (s.type === "transport" && s.selectedCandidatePairId && report.get) {
      const pair = report.get(s.selectedCandidatePairId);
      if (pair && typeof pair.currentRoundTripTime === "number") now.rtt = pair.currentRoundTripTime * 1000;
    }
  }
}

/** Pure: turn two cumulative snapshots into rates. Exported for tests. */
export function summarise(prev, now) {
  const dt = prev ? Math.max(0.001, (now.t - prev.t) / 1000) : 0;
  const dBytes = prev ? Math.max(0, now.bytes - prev.bytes) : 0;
  const dPackets = prev ? Math.max(0, now.packets - prev.packets) : now.packets;
  const dLost = prev ? Math.max(0, now.lost - prev.lost) : now.lost;
  const dFrames = prev ? Math.max(0, now.framesDecoded - prev.framesDecoded) : 0;
  const total = dPackets + dLost;
  let fps = now.fps;
  if (fps === null) fps = dt ? dFrames / dt : 0;
  return {
    rtt_ms: now.rtt === null ? null : round1(now.rtt),
    loss_pct: total ? round1((100 * dLost) / total) : 0,
    jitter_ms: now.jitter === null ? null : round1(now.jitter),
    // no rate yet on the first sample: unknown, not 0 (0 kbit/s reads as "lost" on the wall)
    kbps: dt ? Math.round((dBytes * 8) / dt / 1000) : null,
    fps: round1(fps),
    frames_decoded: now.framesDecoded,
    freeze_count: now.freezes,
    frames_sent: now.framesSent,
  };
}

function round1(x) {
  return Math.round(x * 10) / 10;
}

/**
 * The `quality` WebSocket message for a summary: only the protocol's fields, no nulls.
 * @param {QualitySummary} q @returns {Message}
 */
export function qualityMessage(q) {
  const msg = { type: "quality" };
  const keys = ["rtt_ms", "loss_pct", "jitter_ms", "kbps", "fps", "frames_decoded", "freeze_count"];
  for (const k of keys) {
    if (typeof q[k] === "number" && isFinite(q[k])) msg[k] = q[k];
  }
  return msg;
}
