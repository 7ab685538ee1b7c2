// Replay of a class on the site page (?replay=1): the recording in one <video> with the
// browser's own controls (seekable: the server answers range requests), full screen, and
// every REPORT_EVERY_MS the seconds actually watched (playing, not paused or stalled) go to
// the attendance ledger as the site's replay minutes.
import { $, loadStrings, readPageConfig, setText, t, wireLangSwitch } from "./i18n.js";

const REPORT_EVERY_MS = 30000;
const MAX_REPORT_S = 120; // the server refuses more per report

class Replay {
  /** @param {any} page */
  constructor(page) {
    this.page = page;
    this.video = /** @type {HTMLVideoElement} */ ($("video"));
    this.unreported = 0; // seconds watched since the last report
    this.watched = 0; // seconds watched on this page
    this.lastTick = 0;
    this.reports = 0;
  }

  /** Count wall time while the video really plays. */
  tick(now) {
    const v = this.video;
    const playing = !v.paused && !v.ended && !v.seeking && v.readyState >= 3;
    if (playing && this.lastTick) {
      const dt = Math.min(5, (now - this.lastTick) / 1000);
      this.unreported += dt;
      this.watched += dt;
    }
    this.lastTick = now;
    setText($("watched"), t("replay_watched", { n: Math.floor(this.watched / 60) }));
  }

  async report(final) {
    const seconds = Math.min(MAX_REPORT_S, Math.round(this.unreported * 10) / 10);
    if (seconds < 1) return;
    this.unreported -= seconds;
    const body = JSON.stringify({ seconds: seconds });
    const headers = { "Content-Type": "application/json", Authorization: "Bearer " + this.page.token };
    try {
      const reply = await fetch(this.page.replay.report, { method: "POST", headers: headers, body: body, keepalive: !!final });
      if (reply.ok) this.reports += 1;
      else if (reply.status >= 500) this.unreported += seconds; // try again next time
    } catch (e) {
      this.unreported += seconds;
    }
  }
}

function main() {
  loadStrings();
  wireLangSwitch();
  const page = readPageConfig();
  const replay = new Replay(page);
  const video = replay.video;
  window.lopso = {
    get watched() { return replay.watched; },
    get reports() { return replay.reports; },
    report: function () { return replay.report(false); },
    video: video,
  };
  $("start").addEventListener("click", function () {
    video.play().catch(function () {});
    if (document.documentElement.requestFullscreen) {
      document.documentElement.requestFullscreen().catch(function () {});
    }
  });
  video.addEventListener("play", function () { $("start").hidden = true; });
  video.addEventListener("error", function () {
    $("card").hidden = false;
    $("start").hidden = true;
  });
  $("fullscreen").addEventListener("click", function () {
    if (document.fullscreenElement) document.exitFullscreen().catch(function () {});
    else document.documentElement.requestFullscreen().catch(function () {});
  });
  setInterval(function () { replay.tick(Date.now()); }, 1000);
  setInterval(function () { replay.report(false); }, REPORT_EVERY_MS);
  addEventListener("pagehide", function () { replay.report(true); });
}

main();
