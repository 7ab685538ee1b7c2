// Site player: the village hall's projector page. Connects as soon as it opens (operators
// test early), shows a waiting card until the lecturer is live, plays by itself, and
// reconnects WHEP and the WebSocket with backoff for as long as the class lasts — unless
// its link was revoked (the site's join key rotated): then it stops and says so.
// The operator chooses "auto" (video, paused by the server on a weak link) or "audio only".
import {
  Backoff, Channel, HttpError, StatsSampler, WhxSession, qualityMessage, rtcConfig, sleep,
} from "./protocol.js";
import { $, dateTime, errorText, loadStrings, readPageConfig, setText, t, toast, wireLangSwitch } from "./i18n.js";

const STALL_MS = 5000; // live but no new frame this long → stalled
const STALL_RECONNECT_MS = 12000; // stalled this long → new WHEP connection
const DISCONNECTED_GRACE_MS = 3000; // ICE "disconnected" often heals by itself
const QUALITY_EVERY_MS = 5000;
const CONNECT_TIMEOUT_MS = 15000; // answered but ICE/DTLS never connected → start over

/** Everything the page knows; `derive()` turns it into one displayed state. */
class Player {
  /** @param {any} page */
  constructor(page) {
    this.page = page;
    this.live = false;
    this.ended = false;
    this.revoked = false; // the link was replaced: no more reconnects
    /** @type {"auto"|"audio_only"} the hall's choice, kept across reloads */
    this.mode = loadMode(page);
    /** @type {boolean|null} the server paused video (weak link), from `media_state` */
    this.videoPaused = null;
    this.audioNow = 0; // audio packets received by the current peer connection
    /** @type {"none"|"connecting"|"connected"|"failed"} */
    this.media = "none";
    this.everConnected = false;
    this.state = "connecting";
    this.framesBase = 0; // frames decoded by earlier peer connections
    this.framesNow = 0; // frames decoded by the current one
    this.lastFrameAt = 0;
    this.liveSince = 0;
    this.connectedAt = 0;
    this.whepConnects = 0;
    /** @type {RTCPeerConnection|null} */
    this.pc = null;
    /** @type {WhxSession|null} */
    this.whep = null;
    /** @type {RTCIceServer[]} ICE servers from the last answer's `Link` headers */
    this.iceServers = [];
    this.sampler = null;
    this.backoff = new Backoff({ base: 1000, max: 20000 });
    this.wakeRequested = false;
    this.generation = 0;
    this.problem = ""; // catalogue key of a lasting problem shown on the card (bad link)
    this.channel = new Channel(page.ws_url, {
      storageKey: "lopso:pending:" + page.sid + ":" + (page.site ? page.site.code : ""),
    });
  }

  framesDecoded() {
    return this.framesBase + this.framesNow;
  }

  /** Only sound is expected now (chosen, or video paused by the server). */
  audioOnly() {
    return this.mode === "audio_only" || this.videoPaused === true;
  }

  /** @returns {string} waiting|connecting|playing|reconnecting|stalled|ended|revoked */
  derive(now) {
    if (this.revoked) return "revoked";
    if (this.ended) return "ended";
    if (this.lastFrameAt && now - this.lastFrameAt < STALL_MS && this.media === "connected") return "playing";
    if (this.media !== "connected") return this.everConnected ? "reconnecting" : "connecting";
    if (!this.live) return "waiting";
    const since = Math.max(this.liveSince, this.connectedAt);
    return now - since < 8000 ? "connecting" : "stalled";
  }
}

function main() {
  loadStrings();
  wireLangSwitch();
  const page = readPageConfig();
  const player = new Player(page);
  exposeForTests(player);
  wireChannel(player);
  wireControls(player);
  fillStartTime(page);
  player.channel.connect();
  connectMedia(player, 0);
  setInterval(function () { tick(player); }, 1000);
  setInterval(function () { sendQuality(player); }, QUALITY_EVERY_MS);
  render(player);
}

function exposeForTests(player) {
  window.lopso = {
    get state() { return player.state; },
    get live() { return player.live; },
    get whepConnects() { return player.whepConnects; },
    get wsState() { return player.channel.state; },
    get mode() { return player.mode; },
    get revoked() { return player.revoked; },
    framesDecoded: function () { return player.framesDecoded(); },
    peerConnection: function () { return player.pc; },
  };
}

function fillStartTime(page) {
  const el = $("starts-at");
  if (el) setText(el, dateTime(el.getAttribute("data-iso"), page.lang));
}

// ---- signalling --------------------------------------------------------------------------

function wireChannel(player) {
  const ch = player.channel;
  ch.on("state", function (state) {
    if (state === "open") {
      ch.send({ type: "status", state: wireState(player.state) });
      if (player.mode !== "auto") ch.send({ type: "media_mode", mode: player.mode });
    }
    render(player);
  });
  ch.on("rejected", function (err) {
    if (err && err.code === "token_revoked") revoke(player);
  });
  ch.on("media_state", function (msg) {
    player.videoPaused = typeof msg.video_paused === "boolean" ? msg.video_paused : null;
    render(player);
  });
  ch.on("welcome", function (msg) {
    setLive(player, !!msg.live);
    showOnAir(msg);
    if (msg.ended || (msg.session && msg.session.ended_at)) endClass(player);
    // After a reload the operator sees the last count the server has, and the form starts there.
    if (typeof msg.headcount === "number") {
      setText($("headcount-shown"), t("site_headcount_shown", { count: msg.headcount }));
      if (!$("hc-count").value) $("hc-count").value = String(msg.headcount);
    }
  });
  ch.on("live", function (msg) { setLive(player, !!msg.live); });
  ch.on("presenters", showOnAir);
  ch.on("class_ended", function () { endClass(player); });
  ch.on("headcount_prompt", function (msg) { showPrompt(msg.phase); });
  ch.on("message", function (msg) { showMessage(msg.text, msg.from); });
  ch.on("help_resolved", function () { toast(t("site_help_resolved"), 8000); });
  ch.on("command", function (msg) {
    if (msg.action === "reconnect") {
      toast(t("site_reconnect_ordered"));
      player.backoff.reset();
      reconnectMedia(player, 0);
    }
  });
}

/** The site's link was replaced: stop every reconnect and show what to do. */
function revoke(player) {
  if (player.revoked) return;
  player.revoked = true;
  player.channel.close();
  closeMedia(player);
  $("start").hidden = true; // nothing left to start: the controls and panels go too (CSS)
  document.body.classList.add("revoked");
  const open = document.querySelectorAll(".panel:not([hidden])");
  for (let i = 0; i < open.length; i++) closePanel(open[i]);
  render(player);
}

function setLive(player, live) {
  if (live && !player.live) player.liveSince = Date.now();
  player.live = live;
  render(player);
}

function endClass(player) {
  player.ended = true;
  closeMedia(player);
  render(player);
}

/** The protocol has no "ended"; a site whose class ended is simply waiting. */
function wireState(state) {
  return state === "ended" ? "waiting" : state;
}

// ---- media -------------------------------------------------------------------------------

async function connectMedia(player, delayMs) {
  const gen = ++player.generation;
  if (delayMs) await sleep(delayMs);
  if (gen !== player.generation || player.ended || player.revoked) return;
  player.media = "connecting";
  render(player);
  const pc = new RTCPeerConnection(rtcConfig(player.page, player.iceServers));
  const stream = new MediaStream();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = function (ev) {
    stream.addTrack(ev.track);
    attachStream(player, stream);
  };
  pc.onconnectionstatechange = function () { onConnectionState(player, pc, gen); };
  player.pc = pc;
  player.whep = new WhxSession(whepUrl(player), player.page.token);
  player.sampler = new StatsSampler(pc, "inbound");
  try {
    await player.whep.start(pc, { iceWaitMs: 0 });
    player.iceServers = player.whep.iceServers; // fresh TURN credentials for the next connect
  } catch (err) {
    if (gen !== player.generation) return;
    onWhepError(player, err);
    return;
  }
  player.problem = "";
  setTimeout(function () {
    if (gen === player.generation && pc.connectionState !== "connected") {
      reconnectMedia(player, player.backoff.next());
    }
  }, CONNECT_TIMEOUT_MS);
}

function onWhepError(player, err) {
  console.warn("lopso: WHEP failed", err);
  if (err instanceof HttpError && err.code === "class_ended") {
    endClass(player);
    return;
  }
  if (err instanceof HttpError && err.code === "token_revoked") {
    revoke(player);
    return;
  }
  if (err instanceof HttpError && (err.status === 401 || err.status === 403 || err.status === 404)) {
    player.problem = "site_error_token";
  }
  reconnectMedia(player, player.backoff.next());
}

function onConnectionState(player, pc, gen) {
  if (gen !== player.generation) return;
  const s = pc.connectionState;
  if (s === "connected") {
    player.media = "connected";
    player.everConnected = true;
    player.connectedAt = Date.now();
    player.whepConnects += 1;
    player.backoff.reset();
  } else if (s === "failed" || s === "closed") {
    player.media = "failed";
    reconnectMedia(player, player.backoff.next());
  } else if (s === "disconnected") {
    setTimeout(function () {
      if (gen === player.generation && pc.connectionState === "disconnected") {
        player.media = "failed";
        reconnectMedia(player, player.backoff.next());
      }
    }, DISCONNECTED_GRACE_MS);
  }
  render(player);
}

function closeMedia(player) {
  player.generation += 1;
  const pc = player.pc;
  const whep = player.whep;
  player.pc = null;
  player.whep = null;
  player.framesBase += player.framesNow;
  player.framesNow = 0;
  player.audioNow = 0;
  if (whep) whep.stop();
  if (pc) pc.close();
  player.media = "none";
}

function reconnectMedia(player, delayMs) {
  if (player.ended || player.revoked) return;
  closeMedia(player);
  connectMedia(player, delayMs);
}

function attachStream(player, stream) {
  const video = $("video");
  if (video.srcObject !== stream) video.srcObject = stream;
  const p = video.play();
  if (p && p.catch) {
    p.catch(function () {
      // Autoplay with sound refused: play muted now, the start button brings the sound.
      video.muted = true;
      video.play().catch(function () {});
      $("start").hidden = false;
    });
  }
}

async function tick(player) {
  const pc = player.pc;
  if (pc && player.media === "connected") {
    try {
      const got = await mediaReceived(pc);
      if (pc === player.pc && got.frames > player.framesNow) {
        player.framesNow = got.frames;
        player.lastFrameAt = Date.now();
      }
      // Sound only (chosen, or the server paused video): sound arriving is playing.
      if (pc === player.pc && got.audio > player.audioNow) {
        player.audioNow = got.audio;
        if (player.audioOnly()) player.lastFrameAt = Date.now();
      }
    } catch (e) { /* closed meanwhile */ }
  }
  const now = Date.now();
  if (player.live && player.state === "stalled" && now - Math.max(player.lastFrameAt,
    player.liveSince, player.connectedAt) > STALL_RECONNECT_MS) {
    reconnectMedia(player, player.backoff.next());
  }
  render(player);
}

/** Video frames decoded and audio packets received by one peer connection. */
async function mediaReceived(pc) {
  const report = await pc.getStats();
  let frames = 0;
  let audio = 0;
  report.forEach(function (s) {
    if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0;
    if (s.type === "inbound-rtp" && s.kind === "audio") audio += s.packetsReceived || 0;
  });
  return { frames: frames, audio: audio };
}

async function sendQuality(player) {
  if (!player.sampler || player.media !== "connected" || player.channel.state !== "open") return;
  try {
    const q = await player.sampler.sample();
    player.channel.send(qualityMessage(q));
  } catch (e) { /* the peer connection closed meanwhile */ }
}

// ---- rendering ---------------------------------------------------------------------------

const CARD = {
  connecting: ["site_connecting", "site_connecting_detail"],
  reconnecting: ["site_reconnecting", "site_reconnecting_detail"],
  waiting: ["site_waiting", "site_waiting_detail"],
  stalled: ["site_stalled", "site_stalled_detail"],
  ended: ["site_ended", "site_ended_detail"],
  revoked: ["link_revoked_title", "link_revoked_detail"],
};

function render(player) {
  const state = player.derive(Date.now());
  const changed = state !== player.state;
  player.state = state;
  $("stage").setAttribute("data-state", state);
  const pill = $("status");
  pill.setAttribute("data-state", state);
  let label = t("state_" + state);
  if (player.channel.state !== "open" && state !== "ended" && state !== "revoked") {
    label += " · " + t("site_ws_offline");
  }
  setText(pill, label);
  const card = CARD[state];
  $("card").hidden = !card;
  if (card) {
    setText($("card-title"), t(card[0]));
    const problem = player.problem && state !== "ended" && state !== "revoked";
    setText($("card-detail"), t(problem ? player.problem : card[1]));
  }
  renderMedia(player, state);
  if (changed) {
    player.channel.send({ type: "status", state: wireState(state) });
    if (state === "playing") keepScreenOn(player);
  }
}

/** The mode buttons and the "sound only" notice on the stage. */
function renderMedia(player, state) {
  $("mode-auto").setAttribute("aria-pressed", String(player.mode === "auto"));
  $("mode-audio").setAttribute("aria-pressed", String(player.mode === "audio_only"));
  const note = $("media-note");
  let key = "";
  if (state === "playing" && player.mode === "audio_only") key = "site_media_audio_only_on";
  else if (state === "playing" && player.videoPaused === true) key = "site_video_paused_weak";
  note.hidden = !key;
  note.setAttribute("data-kind", player.mode === "audio_only" ? "chosen" : "weak");
  if (key) setText(note, t(key));
}

// ---- media mode (auto / audio only) ------------------------------------------------------

function modeKey(page) {
  return "lopso:mode:" + page.sid + ":" + (page.site ? page.site.code : "");
}

/** @returns {"auto"|"audio_only"} */
function loadMode(page) {
  try {
    return localStorage.getItem(modeKey(page)) === "audio_only" ? "audio_only" : "auto";
  } catch (e) { return "auto"; }
}

/** The WHEP URL with the hall's choice, so a new viewer starts in it on whichever node. */
function whepUrl(player) {
  const url = player.page.whep_url;
  if (player.mode === "auto") return url;
  return url + (url.indexOf("?") < 0 ? "?" : "&") + "media=" + player.mode;
}

/** @param {"auto"|"audio_only"} mode */
function setMode(player, mode) {
  if (player.mode === mode) return;
  player.mode = mode;
  try { localStorage.setItem(modeKey(player.page), mode); } catch (e) { /* private mode */ }
  if (mode === "auto") player.videoPaused = null;
  // Applied to the viewer at once; after a reconnect the WHEP URL and `open` carry it again.
  // When the viewer is on another node (a cluster edge), a new WHEP carries the choice there.
  player.channel.call({ type: "media_mode", mode: mode }).then(function (ack) {
    if (ack && ack.viewers_here === 0 && player.media === "connected" && player.mode === mode) {
      reconnectMedia(player, 0);
    }
  }).catch(function () {});
  render(player);
}

function keepScreenOn(player) {
  if (player.wakeRequested || !navigator.wakeLock) return;
  player.wakeRequested = true;
  navigator.wakeLock.request("screen").catch(function () { player.wakeRequested = false; });
}

function showPrompt(phase) {
  const key = { start: "prompt_start", mid: "prompt_mid", end: "prompt_end" }[phase] || "prompt_start";
  setText($("prompt-text"), t(key));
  $("prompt").hidden = false;
  $("prompt").setAttribute("data-phase", phase || "start");
}

function showMessage(text, from) {
  const role = t("role_" + from);
  setText($("message-from"), from ? t("site_message_from", { from: role === "role_" + from ? from : role })
    : t("site_message"));
  setText($("message-text"), text || "");
  $("message").hidden = false;
}

// ---- controls ----------------------------------------------------------------------------

function wireControls(player) {
  autoHideControls();
  $("start").hidden = false;
  $("start").addEventListener("click", function () { startWatching(); });
  $("fullscreen").addEventListener("click", function () { toggleFullscreen(); });
  $("mode-auto").addEventListener("click", function () { setMode(player, "auto"); });
  $("mode-audio").addEventListener("click", function () { setMode(player, "audio_only"); });
  $("message-close").addEventListener("click", function () { $("message").hidden = true; });
  $("open-headcount").addEventListener("click", function () { openPanel("panel-headcount", "hc-count"); });
  $("open-help").addEventListener("click", function () { openPanel("panel-help"); });
  $("open-checkin").addEventListener("click", function () { openPanel("panel-checkin", "ci-name"); });
  $("open-question").addEventListener("click", function () { openPanel("panel-question", "q-text"); });
  $("prompt-open").addEventListener("click", function () {
    $("hc-phase").value = $("prompt").getAttribute("data-phase") || "start";
    $("prompt").hidden = true;
    openPanel("panel-headcount", "hc-count");
  });
  const closers = document.querySelectorAll("[data-close]");
  for (let i = 0; i < closers.length; i++) {
    closers[i].addEventListener("click", function (ev) { closePanel(ev.target.closest(".panel")); });
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") {
      const open = document.querySelectorAll(".panel:not([hidden])");
      for (let i = 0; i < open.length; i++) closePanel(open[i]);
    }
  });
  $("form-headcount").addEventListener("submit", function (ev) { ev.preventDefault(); submitHeadcount(player); });
  $("form-help").addEventListener("submit", function (ev) { ev.preventDefault(); submitHelp(player); });
  $("form-checkin").addEventListener("submit", function (ev) { ev.preventDefault(); submitCheckin(player); });
  $("form-question").addEventListener("submit", function (ev) { ev.preventDefault(); submitQuestion(player); });
}

/** Full screen on a projector: the control bar fades after a while and returns on any input. */
function autoHideControls() {
  let timer = 0;
  const wake = function () {
    document.body.classList.remove("idle");
    clearTimeout(timer);
    timer = setTimeout(function () {
      if (document.fullscreenElement || document.webkitFullscreenElement) document.body.classList.add("idle");
    }, 6000);
  };
  ["mousemove", "mousedown", "keydown", "touchstart"].forEach(function (name) {
    document.addEventListener(name, wake, { passive: true });
  });
  document.addEventListener("fullscreenchange", wake);
  wake();
}

function startWatching() {
  const video = $("video");
  video.muted = false;
  video.play().catch(function () {});
  $("start").hidden = true;
  toggleFullscreen(true);
}

function toggleFullscreen(onlyEnter) {
  const doc = document;
  const el = doc.documentElement;
  if (doc.fullscreenElement || doc.webkitFullscreenElement) {
    if (onlyEnter) return;
    (doc.exitFullscreen || doc.webkitExitFullscreen).call(doc);
    return;
  }
  const req = el.requestFullscreen || el.webkitRequestFullscreen;
  if (!req) return;
  try {
    const p = req.call(el);
    if (p && p.catch) p.catch(function () {});
  } catch (e) { /* not allowed here (iframe, old browser) */ }
}

function openPanel(id, focusId) {
  const panel = $(id);
  panel.hidden = false;
  const result = panel.querySelector(".result");
  if (result) setText(result, "");
  if (focusId) $(focusId).focus();
}

function closePanel(panel) {
  if (panel) panel.hidden = true;
}

/** Send an acked message and report progress in `resultEl`; resolves with the ack or null. */
async function sendAcked(player, msg, resultEl) {
  resultEl.removeAttribute("data-kind");
  setText(resultEl, player.channel.state === "open" ? t("sending") : t("queued_offline"));
  try {
    return await player.channel.request(msg);
  } catch (err) {
    resultEl.setAttribute("data-kind", "error");
    setText(resultEl, errorText(err));
    return null;
  }
}

async function submitHeadcount(player) {
  const count = parseInt($("hc-count").value, 10);
  const phase = $("hc-phase").value;
  const result = $("hc-result");
  if (!(count >= 0 && count <= 10000)) {
    setText(result, t("site_headcount_invalid"));
    return;
  }
  if (await sendAcked(player, { type: "headcount", count: count, phase: phase }, result)) {
    result.setAttribute("data-kind", "ok");
    setText(result, t("site_headcount_ok", { count: count }));
    setText($("headcount-shown"), t("site_headcount_shown", { count: count }));
    setTimeout(function () { closePanel($("panel-headcount")); }, 1500);
  }
}

async function submitHelp(player) {
  const form = $("form-help");
  const checked = form.querySelector("input[name=reason]:checked");
  const text = $("help-text").value.trim().slice(0, 500);
  const result = $("help-result");
  if (!checked) return;
  if (await sendAcked(player, { type: "help", reason: checked.value, text: text }, result)) {
    result.setAttribute("data-kind", "ok");
    setText(result, t("site_help_ok"));
    form.reset();
    toast(t("site_help_ok"), 6000);
    setTimeout(function () { closePanel($("panel-help")); }, 2000);
  }
}

async function submitCheckin(player) {
  const name = $("ci-name").value.trim().slice(0, 100);
  const ident = $("ci-ident").value.trim().slice(0, 40);
  const result = $("ci-result");
  if (!name) return;
  const msg = { type: "checkin", name: name };
  if (ident) msg.ident = ident;
  const ack = await sendAcked(player, msg, result);
  if (ack) {
    result.setAttribute("data-kind", ack.duplicate ? "warn" : "ok");
    setText(result, t(ack.duplicate ? "checkin_duplicate" : "checkin_ok", { name: name }));
    $("form-checkin").reset();
    $("ci-name").focus();
  }
}

async function submitQuestion(player) {
  const text = $("q-text").value.trim().slice(0, 500);
  const result = $("q-result");
  if (!text) return;
  if (await sendAcked(player, { type: "question", text: text }, result)) {
    result.setAttribute("data-kind", "ok");
    setText(result, t("site_question_ok"));
    $("form-question").reset();
    setTimeout(function () { closePanel($("panel-question")); }, 2000);
  }
}

/** A caption naming the presenter on air (a class with several presenters). */
function showOnAir(msg) {
  const lineup = msg.presenters || [];
  const live = lineup.find(function (p) { return p.id === msg.on_air; });
  const caption = $("on-air-caption");
  caption.hidden = !live || lineup.length < 2;
  caption.setAttribute("data-presenter", live ? live.id : "");
  if (live) setText(caption, live.name + (live.organisation ? " — " + live.organisation : ""));
}

main();
