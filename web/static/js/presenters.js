// The presenters panel of the studio and moderator pages: each presenter's state (offline /
// standby / on air) and a "Lên sóng" button for whoever may cut — a moderator, the lead
// presenter, or the presenter on air handing over.
import { WhxSession, apiRequest } from "./protocol.js";
import { t, toast } from "./i18n.js";

/**
 * @typedef {{id: string, name: string, organisation: string, lead: boolean, state: string}} PresenterWire
 * @typedef {{presenters: PresenterWire[], on_air: string|null}} PresentersMessage
 * @typedef {{video: HTMLVideoElement, pc: RTCPeerConnection, whep: WhxSession}} Monitor
 * @typedef {{sid: string, token: string, me: string|null, director: boolean,
 *   monitors?: Map<string, Monitor>}} Director
 */

/**
 * Draw the list; a button per presenter on standby when `who` may cut to them.
 * @param {HTMLElement} list an <ul> @param {PresentersMessage} msg @param {Director} who
 */
export function renderPresenters(list, msg, who) {
  list.textContent = "";
  const mayCut = who.director || (who.me !== null && who.me === msg.on_air);
  (msg.presenters || []).forEach(function (p) {
    const li = document.createElement("li");
    li.className = "presenter";
    li.setAttribute("data-presenter", p.id);
    li.setAttribute("data-state", p.state || "offline");
    const name = document.createElement("strong");
    name.textContent = (p.name || p.id) + (p.lead ? " ★" : "") + (p.id === who.me ? " (" + t("presenter_me") + ")" : "");
    const org = document.createElement("span");
    org.className = "muted small";
    org.textContent = p.organisation || "";
    const pill = document.createElement("span");
    pill.className = "status-pill presenter-state";
    pill.setAttribute("data-state", p.state === "on_air" ? "live" : p.state === "standby" ? "waiting" : "ended");
    pill.textContent = t("presenter_state_" + (p.state || "offline"));
    li.append(name, " ", org, " ", pill);
    if (who.monitors) showMonitor(li, who, p);
    if (mayCut && p.state === "standby") {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn btn-primary presenter-cut";
      button.textContent = t("presenter_go_on_air");
      button.addEventListener("click", function () { cutTo(who, p, button); });
      li.append(" ", button);
    }
    list.appendChild(li);
  });
}

/** @param {Director} who @param {PresenterWire} p @param {HTMLButtonElement} button */
async function cutTo(who, p, button) {
  button.disabled = true;
  try {
    await apiRequest("/api/sessions/" + encodeURIComponent(who.sid) + "/on_air", who.token,
      { method: "POST", body: { presenter: p.id } });
    toast(t("presenter_cut_sent", { name: p.name || p.id }));
  } catch (err) {
    button.disabled = false;
    toast(t("error_generic", { message: err.message || err }));
  }
}

/**
 * A small live preview of a publishing presenter (their own picture, muted), kept across
 * redraws; stopped when they go offline.
 * @param {HTMLElement} li @param {Director} who @param {PresenterWire} p
 */
function showMonitor(li, who, p) {
  const monitors = /** @type {Map<string, Monitor>} */ (who.monitors);
  let monitor = monitors.get(p.id);
  if (p.state !== "standby" && p.state !== "on_air") {
    if (monitor) {
      monitor.whep.stop();
      monitor.pc.close();
      monitors.delete(p.id);
    }
    return;
  }
  if (!monitor) {
    const video = document.createElement("video");
    video.className = "presenter-preview";
    video.muted = true;
    video.playsInline = true;
    video.autoplay = true;
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = function (ev) {
      if (ev.track.kind === "video") video.srcObject = new MediaStream([ev.track]);
    };
    const url = "/preview/" + encodeURIComponent(who.sid) + "/" + encodeURIComponent(p.id);
    monitor = { video: video, pc: pc, whep: new WhxSession(url, who.token) };
    monitors.set(p.id, monitor);
    monitor.whep.start(pc, { iceWaitMs: 0 }).catch(function (err) {
      console.warn("lopso: preview failed", p.id, err);
    });
  }
  li.append(monitor.video);
  monitor.video.play().catch(function () {}); // moved in the page: playing again
}
