// The moderator page's recording box: the class's recording (state, start, duration, size)
// with a download link, refreshed every REFRESH_MS, and the server's `recording` message
// (the recording was refused or stopped, e.g. a full disk) shown at once.
import { apiRequest } from "./protocol.js";
import { $, clock, setText, t } from "./i18n.js";

const REFRESH_MS = 30000;

/** @param {any} page @param {any} channel */
export function wireRecording(page, channel) {
  if (!page.recording_url) return;
  const refresh = function () { load(page); };
  channel.on("recording", function (msg) {
    showProblem(msg.problem);
    refresh();
  });
  channel.on("class_ended", function () { setTimeout(refresh, 3000); });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

async function load(page) {
  let info;
  try {
    info = await apiRequest(page.recording_url, page.token);
  } catch (e) {
    return; // none yet (404) or the network: the box keeps what it shows
  }
  const fields = $("recording-fields");
  fields.textContent = "";
  const rows = [
    [t("field_attendance"), t("mod_recording_state_" + info.state)],
    [t("mod_recording_start"), clock(info.started_at, page.lang)],
    [t("mod_recording_duration"), duration(info.duration_s)],
    [t("mod_recording_size"), megabytes(info.size_bytes)],
  ];
  for (const [label, value] of rows) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    setText(dt, label);
    setText(dd, value);
    fields.append(dt, dd);
  }
  if (info.problem) showProblem(info.problem);
  const link = $("recording-download");
  link.href = info.download + "?token=" + encodeURIComponent(page.token);
  link.hidden = !info.segments;
}

function showProblem(problem) {
  const el = $("recording-problem");
  setText(el, t("mod_recording_problem_" + (problem || "error")));
  el.hidden = false;
}

/** @param {number} s @returns {string} h:mm:ss */
function duration(s) {
  const total = Math.round(s || 0);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  return h + ":" + String(m).padStart(2, "0") + ":" + String(sec).padStart(2, "0");
}

/** @param {number} bytes @returns {string} */
function megabytes(bytes) {
  return ((bytes || 0) / 1048576).toFixed(1) + " MB";
}
