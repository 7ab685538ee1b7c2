// Lecturer studio: camera + microphone with preview, screen sharing with the camera as a
// picture-in-picture, WHIP publish in the class codec, auto-republish, live counts.
// Viewers never renegotiate: the page sends ONE video track and swaps what feeds it with
// RTCRtpSender.replaceTrack (camera, screen, or a canvas composite of both).
import {
  Backoff, Channel, HttpError, StatsSampler, WhxSession, apiRequest, preferVideoCodec, rtcConfig,
  sleep,
} from "./protocol.js";
import {
  $, clock, dateTime, errorText, formatNumber, formatPercent, loadStrings, readPageConfig, setText, t, toast, wireLangSwitch,
} from "./i18n.js";
import { renderPresenters } from "./presenters.js";

const WIDTH = 1280;
const HEIGHT = 720;
const FPS = 25;
const MAX_BITRATE = 1500000;

class Studio {
  constructor(page) {
    this.page = page;
    this.codec = (page.session && page.session.video_codec) || "VP8";
    /** @type {MediaStream|null} */ this.camera = null;
    /** @type {MediaStream|null} */ this.screen = null;
    /** @type {"camera"|"pip"|"screen"} */ this.mode = "camera";
    this.compositor = null;
    /** @type {MediaStreamTrack|null} */ this.videoTrack = null;
    /** @type {RTCPeerConnection|null} */ this.pc = null;
    /** @type {WhxSession|null} */ this.whip = null;
    /** @type {RTCIceServer[]} ICE servers from the last answer's `Link` headers */
    this.iceServers = [];
    this.sampler = null;
    this.wantLive = false;
    this.state = "idle"; // idle | connecting | live | reconnecting | ended | error
    this.generation = 0;
    this.backoff = new Backoff({ base: 1000, max: 15000 });
    this.framesSent = 0;
    this.sites = new Map();
    this.totals = { expected: 0, connected: 0, playing: 0, people: 0, help_open: 0 };
    this.channel = new Channel(page.ws_url);
    /** @type {string|null} */ this.presenter = null; // which presenter this studio is
    /** @type {{presenters: any[], on_air: string|null}} */ this.lineup = { presenters: [], on_air: null };
    /** @type {RTCPeerConnection|null} */ this.returnPc = null;
    /** @type {WhxSession|null} */ this.returnWhep = null;
    this.monitors = new Map(); // the lead's previews of the presenters
  }
}

async function main() {
  loadStrings();
  wireLangSwitch();
  const studio = new Studio(readPageConfig());
  const start = $("starts-at");
  if (start) setText(start, dateTime(start.getAttribute("data-iso"), studio.page.lang));
  window.lopso = {
    get state() { return studio.state; },
    get totals() { return studio.totals; },
    get mode() { return studio.mode; },
    get onAir() { return studio.lineup.on_air; },
    get presenter() { return studio.presenter; },
    returnFrames: function () {
      const v = $("return-feed");
      return v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality().totalVideoFrames : 0;
    },
    framesSent: function () { return studio.framesSent; },
    peerConnection: function () { return studio.pc; },
  };
  wireChannel(studio);
  wireControls(studio);
  studio.channel.connect();
  setInterval(function () { showStats(studio); }, 2000);
  await openCamera(studio);
}

// ---- capture -----------------------------------------------------------------------------

async function openCamera(studio) {
  const camId = $("camera").value;
  const micId = $("microphone").value;
  const constraints = {
    video: { width: { ideal: WIDTH }, height: { ideal: HEIGHT }, frameRate: { ideal: FPS } },
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  };
  if (camId) constraints.video.deviceId = { exact: camId };
  if (micId) constraints.audio.deviceId = { exact: micId };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(constraints);
  } catch (err) {
    console.warn("lopso: camera/microphone refused", err);
    setText($("preview-empty"), t("studio_no_camera") + " (" + (err.name || err) + ")");
    return;
  }
  if (studio.camera) studio.camera.getTracks().forEach(function (tr) { tr.stop(); });
  studio.camera = stream;
  $("preview-empty").hidden = true;
  await listDevices(stream);
  showMicLevel(stream);
  await applySource(studio);
  const audio = stream.getAudioTracks()[0] || null;
  const sender = audioSender(studio);
  if (sender) await sender.replaceTrack(audio);
}

async function listDevices(stream) {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const inUse = {};
  stream.getTracks().forEach(function (tr) { inUse[tr.kind] = tr.getSettings().deviceId; });
  fillSelect($("camera"), devices.filter(function (d) { return d.kind === "videoinput"; }), inUse.video);
  fillSelect($("microphone"), devices.filter(function (d) { return d.kind === "audioinput"; }), inUse.audio);
}

function fillSelect(select, devices, current) {
  select.textContent = "";
  devices.forEach(function (d, i) {
    const opt = document.createElement("option");
    opt.value = d.deviceId;
    opt.textContent = d.label || (select.id + " " + (i + 1));
    if (d.deviceId === current) opt.selected = true;
    select.appendChild(opt);
  });
}

let meterContext = null;
function showMicLevel(stream) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx || !stream.getAudioTracks().length) return;
  if (meterContext) meterContext.close();
  const ctx = new Ctx();
  meterContext = ctx;
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const data = new Uint8Array(analyser.fftSize);
  const bar = $("mic-level");
  const draw = function () {
    if (meterContext !== ctx) return;
    analyser.getByteTimeDomainData(data);
    let peak = 0;
    for (let i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i] - 128));
    bar.style.width = Math.min(100, Math.round((peak / 128) * 160)) + "%";
    setTimeout(draw, 100);
  };
  draw();
}

async function shareScreen(studio) {
  if (studio.screen) return true;
  if (!navigator.mediaDevices.getDisplayMedia) {
    toast(t("studio_no_screen"));
    return false;
  }
  try {
    studio.screen = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15 }, width: { ideal: 1920 } }, audio: false,
    });
  } catch (err) {
    toast(t("studio_screen_refused"));
    return false;
  }
  const track = studio.screen.getVideoTracks()[0];
  if ("contentHint" in track) track.contentHint = "detail";
  track.addEventListener("ended", function () {
    studio.screen = null;
    setMode(studio, "camera");
  });
  return true;
}

/** Offscreen <video> to read frames of a stream from, for the canvas. */
function sourceVideo(stream) {
  const v = document.createElement("video");
  v.muted = true;
  v.playsInline = true;
  v.srcObject = stream;
  v.play().catch(function () {});
  return v;
}

/** Timer in a worker: unlike page timers, not throttled when the lecturer looks at slides. */
function workerTicker(ms, fn) {
  try {
    const w = new Worker("/static/js/ticker-worker.js"); // a file: the page policy allows no blob: worker
    w.onmessage = fn;
    w.postMessage(ms);
    return function () { w.terminate(); };
  } catch (e) {
    const h = setInterval(fn, ms);
    return function () { clearInterval(h); };
  }
}

/** Screen full frame, camera as a small picture-in-picture bottom right. */
function makeCompositor(screen, camera) {
  const canvas = document.createElement("canvas");
  canvas.width = WIDTH;
  canvas.height = HEIGHT;
  const ctx = canvas.getContext("2d");
  const sv = sourceVideo(screen);
  const cv = camera ? sourceVideo(camera) : null;
  const draw = function () {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, WIDTH, HEIGHT);
    drawFit(ctx, sv, 0, 0, WIDTH, HEIGHT);
    if (cv && cv.videoWidth) {
      const w = Math.round(WIDTH * 0.24);
      const h = Math.round((w * cv.videoHeight) / cv.videoWidth);
      const x = WIDTH - w - 16;
      const y = HEIGHT - h - 16;
      ctx.fillStyle = "#fff";
      ctx.fillRect(x - 3, y - 3, w + 6, h + 6);
      ctx.drawImage(cv, x, y, w, h);
    }
  };
  const stop = workerTicker(Math.round(1000 / FPS), draw);
  const track = canvas.captureStream(FPS).getVideoTracks()[0];
  return {
    track: track,
    stop: function () { stop(); track.stop(); sv.srcObject = null; if (cv) cv.srcObject = null; },
  };
}

function drawFit(ctx, video, x, y, w, h) {
  if (!video.videoWidth) return;
  const scale = Math.min(w / video.videoWidth, h / video.videoHeight);
  const dw = video.videoWidth * scale;
  const dh = video.videoHeight * scale;
  ctx.drawImage(video, x + (w - dw) / 2, y + (h - dh) / 2, dw, dh);
}

async function setMode(studio, mode) {
  if (mode !== "camera" && !(await shareScreen(studio))) return;
  studio.mode = mode;
  await applySource(studio);
}

/** Point the one outgoing video track (and the preview) at the current source. */
async function applySource(studio) {
  if (studio.compositor) {
    studio.compositor.stop();
    studio.compositor = null;
  }
  let track = null;
  if (studio.mode === "pip" && studio.screen) {
    studio.compositor = makeCompositor(studio.screen, studio.camera);
    track = studio.compositor.track;
  } else if (studio.mode === "screen" && studio.screen) {
    track = studio.screen.getVideoTracks()[0];
  } else {
    studio.mode = "camera";
    track = studio.camera ? studio.camera.getVideoTracks()[0] : null;
  }
  studio.videoTrack = track;
  $("preview").srcObject = track ? new MediaStream([track]) : null;
  ["camera", "pip", "screen"].forEach(function (m) {
    $("src-" + m).setAttribute("aria-pressed", String(m === studio.mode));
  });
  const sender = videoSender(studio);
  if (sender) await sender.replaceTrack(track);
}

function videoSender(studio) {
  return studio.pc ? studio.pc.getTransceivers()[1].sender : null;
}

function audioSender(studio) {
  return studio.pc ? studio.pc.getTransceivers()[0].sender : null;
}

// ---- publishing --------------------------------------------------------------------------

async function publish(studio, delayMs) {
  const gen = ++studio.generation;
  if (delayMs) await sleep(delayMs);
  if (gen !== studio.generation || !studio.wantLive) return;
  setState(studio, studio.state === "live" || studio.state === "reconnecting" ? "reconnecting" : "connecting");
  const pc = new RTCPeerConnection(rtcConfig(studio.page, studio.iceServers));
  const stream = new MediaStream();
  const audio = studio.camera ? studio.camera.getAudioTracks()[0] : null;
  pc.addTransceiver(audio || "audio", { direction: "sendonly", streams: [stream] });
  const vtx = pc.addTransceiver(studio.videoTrack || "video", {
    direction: "sendonly", streams: [stream], sendEncodings: [{ maxBitrate: MAX_BITRATE }],
  });
  if (!preferVideoCodec(vtx, studio.codec, "sender")) {
    console.warn("lopso: could not force codec", studio.codec);
  }
  pc.onconnectionstatechange = function () { onConnectionState(studio, pc, gen); };
  studio.pc = pc;
  studio.whip = new WhxSession(studio.page.whip_url, studio.page.token);
  studio.sampler = new StatsSampler(pc, "outbound");
  try {
    await studio.whip.start(pc, { iceWaitMs: 0 });
    studio.iceServers = studio.whip.iceServers; // fresh TURN credentials for the next connect
  } catch (err) {
    if (gen !== studio.generation) return;
    console.warn("lopso: WHIP failed", err);
    if (err instanceof HttpError && err.code === "class_ended") {
      studio.wantLive = false;
      closePublish(studio);
      setState(studio, "ended");
      return;
    }
    toast(t("studio_publish_failed", { message: err.message || err }));
    republish(studio);
    return;
  }
  setTimeout(function () {
    if (gen === studio.generation && pc.connectionState !== "connected") republish(studio);
  }, 15000);
}

function onConnectionState(studio, pc, gen) {
  if (gen !== studio.generation) return;
  const s = pc.connectionState;
  if (s === "connected") {
    studio.backoff.reset();
    setState(studio, "live");
  } else if (s === "failed") {
    republish(studio);
  } else if (s === "disconnected") {
    setTimeout(function () {
      if (gen === studio.generation && pc.connectionState === "disconnected") republish(studio);
    }, 3000);
  }
}

function republish(studio) {
  if (!studio.wantLive) return;
  setState(studio, "reconnecting");
  closePublish(studio);
  publish(studio, studio.backoff.next());
}

function closePublish(studio) {
  studio.generation += 1;
  if (studio.whip) studio.whip.stop();
  if (studio.pc) studio.pc.close();
  studio.whip = null;
  studio.pc = null;
  studio.sampler = null;
}

function goLive(studio) {
  if (!studio.videoTrack && !studio.camera) {
    toast(t("studio_no_camera"));
  }
  studio.wantLive = true;
  studio.backoff.reset();
  publish(studio, 0);
  startReturnFeed(studio);
}

/** The programme as halls get it, from the origin (WHEP shape); the server leaves out this
 * studio's own voice while it is on air, so it never echoes. */
async function startReturnFeed(studio) {
  if (studio.returnPc || !studio.page.return_url) return;
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const vtx = pc.addTransceiver("video", { direction: "recvonly" });
  preferVideoCodec(vtx, studio.codec, "receiver");
  const stream = new MediaStream();
  pc.ontrack = function (ev) {
    stream.addTrack(ev.track);
    $("return-feed").srcObject = stream;
  };
  studio.returnPc = pc;
  studio.returnWhep = new WhxSession(studio.page.return_url, studio.page.token);
  $("return-wrap").hidden = false;
  try {
    await studio.returnWhep.start(pc, { iceWaitMs: 0 });
  } catch (err) {
    console.warn("lopso: return feed failed", err);
    stopReturnFeed(studio);
  }
}

function stopReturnFeed(studio) {
  if (studio.returnWhep) studio.returnWhep.stop();
  if (studio.returnPc) studio.returnPc.close();
  studio.returnWhep = null;
  studio.returnPc = null;
  $("return-wrap").hidden = true;
}

function stopLive(studio) {
  studio.wantLive = false;
  closePublish(studio);
  stopReturnFeed(studio);
  setState(studio, "idle");
}

async function endClass(studio) {
  $("panel-end").hidden = true;
  try {
    await apiRequest("/api/sessions/" + encodeURIComponent(studio.page.sid) + "/end",
      studio.page.token, { method: "POST", body: {} });
  } catch (err) {
    toast(errorText(err));
    return;
  }
  stopLive(studio);
  setState(studio, "ended");
}

function setState(studio, state) {
  studio.state = state;
  const pill = $("pub-status");
  pill.setAttribute("data-state", state);
  setText(pill, t("studio_state_" + state));
  const publishing = state === "live" || state === "connecting" || state === "reconnecting";
  $("golive").hidden = publishing || state === "ended";
  $("stop").hidden = !publishing;
  $("end").disabled = state === "ended";
  showOnAir(studio);
}

/** The badge says ON AIR only while this studio's picture is the programme. */
function showOnAir(studio) {
  const onAir = studio.state === "live" && studio.lineup.on_air === studio.presenter;
  $("live-badge").hidden = !onAir;
  const status = $("presenter-status");
  const live = studio.lineup.presenters.find(function (p) { return p.id === studio.lineup.on_air; });
  status.hidden = studio.state !== "live";
  setText(status, onAir ? t("presenter_you_on_air")
    : t("presenter_you_standby", { name: live ? live.name || live.id : "—" }));
}

function showPresenters(studio, msg) {
  studio.lineup = { presenters: msg.presenters || [], on_air: msg.on_air || null };
  const me = studio.lineup.presenters.find(function (p) { return p.id === studio.presenter; });
  renderPresenters($("presenter-list"), studio.lineup, {
    sid: studio.page.sid, token: studio.page.token, me: studio.presenter, director: !!(me && me.lead),
    monitors: me && me.lead ? studio.monitors : undefined,
  });
  showOnAir(studio);
}

async function showStats(studio) {
  if (!studio.sampler) {
    setText($("pub-stats"), "");
    return;
  }
  try {
    const q = await studio.sampler.sample();
    studio.framesSent = q.frames_sent;
    let text = (q.kbps === null ? "…" : formatNumber(q.kbps, 0)) + " kbit/s · " + formatNumber(q.fps, 0) + " fps";
    if (q.rtt_ms !== null) text += " · RTT " + formatNumber(q.rtt_ms, 0) + " ms";
    if (q.loss_pct) text += " · " + t("loss") + " " + formatPercent(q.loss_pct);
    setText($("pub-stats"), text);
  } catch (e) { /* closed meanwhile */ }
}

// ---- signalling --------------------------------------------------------------------------

function wireChannel(studio) {
  const ch = studio.channel;
  ch.on("presenters", function (msg) { showPresenters(studio, msg); });
  ch.on("welcome", function (msg) {
    studio.presenter = msg.presenter || null;
    showPresenters(studio, msg);
    if (msg.ended || (msg.session && msg.session.ended_at)) {
      stopLive(studio);
      setState(studio, "ended");
    }
  });
  ch.on("sites", function (msg) {
    studio.sites.clear();
    mergeSites(studio, msg);
  });
  ch.on("sites_update", function (msg) { mergeSites(studio, msg); });
  ch.on("help", function (msg) {
    addFeed($("help-list"), msg.site, siteName(studio, msg.site),
      t("help_" + msg.reason) + (msg.text ? " — " + msg.text : ""), msg.at);
  });
  ch.on("question", function (msg) {
    addFeed($("question-list"), msg.site, siteName(studio, msg.site), msg.text, msg.at);
  });
  ch.on("class_ended", function () {
    stopLive(studio);
    setState(studio, "ended");
  });
}

function mergeSites(studio, msg) {
  (msg.sites || []).forEach(function (s) { studio.sites.set(s.code, s); });
  if (msg.totals) studio.totals = msg.totals;
  const tot = studio.totals;
  setText($("c-connected"), tot.connected + " / " + tot.expected);
  setText($("c-playing"), tot.playing);
  setText($("c-people"), formatNumber(tot.people || 0, 0));
  setText($("c-help"), tot.help_open || 0);
}

function siteName(studio, code) {
  const s = studio.sites.get(code);
  return s ? s.name + (s.commune ? " (" + s.commune + ")" : "") : code;
}

function addFeed(list, code, who, text, at) {
  const empty = list.querySelector(".feed-empty");
  if (empty) empty.remove();
  const li = document.createElement("li");
  const head = document.createElement("strong");
  head.textContent = clock(at || new Date().toISOString()) + " · " + who;
  const body = document.createElement("p");
  body.textContent = text || "";
  li.appendChild(head);
  li.appendChild(body);
  li.setAttribute("data-site", code || "");
  list.insertBefore(li, list.firstChild);
  while (list.children.length > 30) list.removeChild(list.lastChild);
}

// ---- controls ----------------------------------------------------------------------------

function wireControls(studio) {
  $("camera").addEventListener("change", function () { openCamera(studio); });
  $("microphone").addEventListener("change", function () { openCamera(studio); });
  $("src-camera").addEventListener("click", function () { setMode(studio, "camera"); });
  $("src-pip").addEventListener("click", function () { setMode(studio, "pip"); });
  $("src-screen").addEventListener("click", function () { setMode(studio, "screen"); });
  $("golive").addEventListener("click", function () { goLive(studio); });
  $("stop").addEventListener("click", function () { stopLive(studio); });
  $("end").addEventListener("click", function () { $("panel-end").hidden = false; });
  $("end-cancel").addEventListener("click", function () { $("panel-end").hidden = true; });
  $("end-confirm").addEventListener("click", function () { endClass(studio); });
  window.addEventListener("pagehide", function () {
    if (studio.whip) studio.whip.stop();
    if (studio.returnWhep) studio.returnWhep.stop();
  });
}

main();
