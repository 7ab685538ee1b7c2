// Moderator page: province totals, the wall (wall.js), filters and search, one-click drill-down
// into a site (REST), alerts and the incident log, help requests, the question queue, messages
// to a site / a commune / all, reconnect commands and exports. The time spent on each server
// batch (script + style + layout, measured in the page) is kept in window.lopso.metrics.
import { csvDocument } from "./csv.js";
import { Channel, apiRequest, setCsrfToken } from "./protocol.js";
import {
  $, clock, dateTime, errorText, formatNumber, formatPercent, loadStrings, readPageConfig, setText, t, toast,
  wireLangSwitch,
} from "./i18n.js";
import { renderPresenters } from "./presenters.js";
import { WALL_CLASSES, Wall } from "./wall.js";
import { wireRecording } from "./recording-box.js";

const ALERT_KINDS = ["not_joined", "offline", "poor", "help"];
const ALERT_LIST_MAX = 30;
const INCIDENT_LIST_MAX = 100;
const INCIDENTS_KEPT = 1000;
const DETAIL_REFRESH_MS = 5000;

function main() {
  loadStrings();
  wireLangSwitch();
  const page = readPageConfig();
  setCsrfToken(page.csrf); // opened from /admin: signed in, no token
  const wall = new Wall($("wall"), page.lang);
  const metrics = { updates: 0, lastMs: 0, maxMs: 0, totalMs: 0, samples: [], sites: 0 };
  const state = { page: page, wall: wall, selected: "", totals: {}, live: false, ended: false, metrics: metrics,
    channel: new Channel(page.ws_url), help: new Map(), questions: new Map(), alerts: new Map(), incidents: [], incidentMap: new Map(),
    detail: null, detailAt: 0, detailTimer: 0, alertsDirty: false, monitors: new Map() };
  window.lopso = {
    get state() { return state.channel.state; },
    get totals() { return state.totals; },
    get live() { return state.live; },
    get ended() { return state.ended; },
    get presenters() { return state.presenters || null; },
    previewFrames: function (id) {
      const m = state.monitors.get(id);
      return m && m.video.getVideoPlaybackQuality ? m.video.getVideoPlaybackQuality().totalVideoFrames : 0;
    },
    get counts() { return Object.assign({}, wall.counts); },
    metrics: metrics,
    site: function (code) { const tile = wall.tiles.get(code); return tile ? tile.site : null; },
    tileClass: function (code) { const tile = wall.tiles.get(code); return tile ? tile.klass : null; },
    tileCount: function () { return wall.tiles.size; },
    openAlerts: function () { return Array.from(state.alerts.values()); },
    incidents: function () { return state.incidents.slice(); },
    detail: function () { return state.detail; },
    // Tests and drills may feed server messages straight in (e.g. a 5,000-site snapshot).
    feed: function (msg) { state.channel.emit(msg.type, msg); },
  };
  if ($("starts-at")) setText($("starts-at"), dateTime($("starts-at").getAttribute("data-iso"), page.lang));
  wall.onSelect = function (code) { select(state, code); };
  wireChannel(state);
  wireControls(state);
  wireRecording(page, state.channel);
  state.channel.connect();
}

/** Run `fn` and the style + layout it causes; keep the time as one batch's main-thread cost. */
function measured(state, fn, sites) {
  const start = performance.now();
  fn();
  void document.body.offsetHeight; // style and layout now, inside the measurement
  const ms = performance.now() - start;
  const m = state.metrics;
  m.updates += 1;
  m.lastMs = ms;
  m.totalMs += ms;
  m.sites += sites;
  if (ms > m.maxMs) m.maxMs = ms;
  m.samples.push(ms);
  if (m.samples.length > 600) m.samples.shift();
}

/** Each presenter's state, with a "Lên sóng" button for those on standby. */
function showPresenters(state, msg) {
  state.presenters = msg;
  renderPresenters($("presenter-list"), msg, {
    sid: state.page.sid, token: state.page.token, me: null, director: true,
    monitors: state.monitors,
  });
}

function wireChannel(state) {
  const ch = state.channel;
  ch.on("state", function (s) {
    if (s !== "open") setLiveBadge(state, "reconnecting");
  });
  ch.on("welcome", function (msg) {
    state.live = !!msg.live;
    if (msg.ended) showEnded(state);
    else setLiveBadge(state);
    showPresenters(state, msg);
  });
  ch.on("presenters", function (msg) { showPresenters(state, msg); });
  ch.on("live", function (msg) {
    state.live = !!msg.live;
    setLiveBadge(state);
  });
  ch.on("class_ended", function () { showEnded(state); });
  ch.on("sites", function (msg) {
    const sites = msg.sites || [];
    measured(state, function () {
      const empty = $("wall-empty");
      if (empty) empty.remove(); // a reconnect brings a new snapshot: only the first removes it
      state.wall.snapshot(sites);
      fillCommunes(state);
      state.alerts.clear();
      state.incidentMap.clear();
      takeAlerts(state, msg.incidents || [], true);
      takeAlerts(state, msg.alerts || [], false);
      showTotals(state, msg.totals);
      afterChange(state, sites);
      drawAlerts(state);
    }, sites.length);
    state.metrics.snapshotMs = state.metrics.lastMs;
  });
  ch.on("sites_update", function (msg) {
    const sites = msg.sites || [];
    measured(state, function () {
      state.wall.update(sites);
      if (msg.alerts && msg.alerts.length) takeAlerts(state, msg.alerts, false);
      showTotals(state, msg.totals);
      afterChange(state, sites);
      if (state.alertsDirty) drawAlerts(state);
    }, sites.length);
  });
  ch.on("help", function (msg) { addHelp(state, msg); });
  ch.on("question", function (msg) { addQuestion(state, msg); });
  ch.on("question_closed", function (msg) { closeQuestion(state, msg.question_id); });
  // On connect: every open question and help request in one message, oldest first.
  ch.on("backlog", function (msg) {
    for (const q of msg.questions || []) addQuestion(state, q);
    for (const h of msg.help || []) addHelp(state, h);
  });
}

/** The class has ended (here or elsewhere): badge, tiles and alerts say so, no reload needed. */
function showEnded(state) {
  state.ended = true;
  state.live = false;
  setLiveBadge(state);
  state.wall.setEnded();
  state.alerts.clear(); // nothing is still to be done about a hall of an ended class
  drawAlerts(state);
  showTotals(state);
  $("end-class").disabled = true;
  $("panel-end").hidden = true;
}

function setLiveBadge(state, override) {
  const el = $("live-state");
  const s = state.ended ? "ended" : override || (state.live ? "playing" : "waiting");
  el.setAttribute("data-state", s);
  const key = { playing: "mod_live", waiting: "mod_not_live", reconnecting: "state_reconnecting",
    ended: "site_ended" }[s];
  setText(el, t(key));
}

function fmt(state, n) {
  return formatNumber(Number(n || 0), 0);
}

function showTotals(state, totals) {
  if (totals) state.totals = totals;
  const tot = state.totals;
  setText($("t-expected"), fmt(state, tot.expected));
  setText($("t-connected"), fmt(state, tot.connected));
  setText($("t-playing"), fmt(state, tot.playing));
  setText($("t-people"), fmt(state, tot.people));
  setText($("t-help"), fmt(state, tot.help_open));
  const counts = state.wall.counts;
  for (const k of WALL_CLASSES) setText($("c-" + k), fmt(state, counts[k]));
  setText($("shown-count"), t("mod_shown", { shown: fmt(state, state.wall.shownCount()),
    total: fmt(state, state.wall.tiles.size) }));
}

function afterChange(state, sites) {
  for (const s of sites) {
    if (s.code === state.selected) refreshDetail(state, false);
    if (!(s.help_open > 0)) dropHelpOf(state, s.code);
  }
}

// ---- alerts and incident log --------------------------------------------------------------

/** Take alerts (opened or resolved) into the open set and the incident log. */
function takeAlerts(state, alerts, logOnly) {
  const log = state.incidentMap;
  for (const a of alerts) {
    if (!logOnly) {
      if (a.open && !state.ended) state.alerts.set(a.id, a);
      else state.alerts.delete(a.id);
    }
    log.set(a.id, a);
  }
  state.incidents = Array.from(log.values()).sort(function (x, y) {
    return x.since < y.since ? 1 : x.since > y.since ? -1 : 0;
  });
  for (const gone of state.incidents.splice(INCIDENTS_KEPT)) log.delete(gone.id);
  state.alertsDirty = true;
  if (state.wall.filter.alert) applyFilters(state);
}

function drawAlerts(state) {
  state.alertsDirty = false;
  const byKind = {};
  for (const k of ALERT_KINDS) byKind[k] = 0;
  for (const a of state.alerts.values()) byKind[a.kind] = (byKind[a.kind] || 0) + 1;
  for (const k of ALERT_KINDS) setText($("a-" + k), fmt(state, byKind[k]));
  setText($("alert-count"), fmt(state, state.alerts.size));
  const open = Array.from(state.alerts.values()).sort(function (x, y) {
    return x.opened_at < y.opened_at ? 1 : x.opened_at > y.opened_at ? -1 : 0;
  });
  drawAlertList(state, $("alert-list"), open.slice(0, ALERT_LIST_MAX), false);
  drawAlertList(state, $("incident-list"), state.incidents.slice(0, INCIDENT_LIST_MAX), true);
}

function drawAlertList(state, list, alerts, withEnd) {
  list.textContent = "";
  if (!alerts.length) {
    const li = document.createElement("li");
    li.className = "feed-empty";
    li.textContent = t("none_yet");
    list.appendChild(li);
    return;
  }
  const frag = document.createDocumentFragment();
  for (const a of alerts) frag.appendChild(alertItem(state, a, withEnd));
  list.appendChild(frag);
}

function alertItem(state, a, withEnd) {
  const lang = state.page.lang;
  const li = document.createElement("li");
  li.className = a.open ? "alert-open" : "alert-resolved";
  li.setAttribute("data-kind", a.kind);
  li.setAttribute("data-site", a.site);
  const head = document.createElement("button");
  head.type = "button";
  head.className = "link-button";
  head.textContent = clock(a.since, lang) + " · " + t("alert_" + a.kind) + " · " + siteLabel(state, a.site);
  head.addEventListener("click", function () { select(state, a.site); });
  li.appendChild(head);
  if (withEnd) {
    const p = document.createElement("p");
    p.className = "small muted";
    p.textContent = a.open ? t("mod_alert_open") : t("mod_alert_resolved", { time: clock(a.resolved_at, lang) });
    li.appendChild(p);
  }
  return li;
}

// ---- filters -------------------------------------------------------------------------------

function applyFilters(state) {
  const kind = $("filter-alert").value;
  let alertSites = null;
  if (kind) {
    alertSites = new Set();
    for (const a of state.alerts.values()) if (a.kind === kind) alertSites.add(a.site);
  }
  state.wall.setFilter({
    text: $("search").value.trim().toLowerCase(),
    status: $("filter-status").value,
    quality: $("filter-quality").value,
    commune: $("filter-commune").value,
    help: $("filter-help").checked,
    alert: alertSites,
  });
  showTotals(state);
}

function fillCommunes(state) {
  const names = Array.from(state.wall.communes.keys()).filter(Boolean);
  const filter = $("filter-commune");
  const keep = filter.value;
  while (filter.options.length > 1) filter.remove(1);
  const target = $("msg-target");
  const keepTarget = target.value;
  const groups = target.querySelectorAll("optgroup");
  for (let i = 0; i < groups.length; i++) groups[i].remove();
  const group = document.createElement("optgroup");
  group.label = t("field_commune");
  for (const name of names) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    filter.appendChild(opt);
    const to = document.createElement("option");
    to.value = "commune:" + name;
    to.textContent = name;
    group.appendChild(to);
  }
  target.appendChild(group);
  target.value = keepTarget; // a hall chosen for a message stays chosen across snapshots
  if (target.selectedIndex < 0) target.value = "all";
  if (keep && state.wall.communes.has(keep)) filter.value = keep;
}

// ---- drill-down ------------------------------------------------------------------------------

function select(state, code) {
  if (!state.wall.tiles.has(code)) return;
  state.selected = code;
  state.detail = null;
  state.wall.select(code);
  $("detail").hidden = false;
  $("detail-more").textContent = "";
  refreshDetail(state, true);
  const tile = state.wall.tiles.get(code);
  tile.el.scrollIntoView({ block: "nearest" });
}

/** Live fields at once; the ledger-derived record from the REST drill-down, at most every 5 s. */
function refreshDetail(state, force) {
  const tile = state.wall.tiles.get(state.selected);
  if (!tile) return;
  showLive(state, tile.site);
  const due = force || Date.now() - state.detailAt > DETAIL_REFRESH_MS;
  if (!due) {
    if (!state.detailTimer) {
      state.detailTimer = setTimeout(function () { state.detailTimer = 0; refreshDetail(state, true); },
        DETAIL_REFRESH_MS);
    }
    return;
  }
  state.detailAt = Date.now();
  const code = state.selected;
  const url = "/api/sessions/" + encodeURIComponent(state.page.sid) + "/sites/" + encodeURIComponent(code);
  apiRequest(url, state.page.token).then(function (body) {
    if (state.selected !== code) return;
    state.detail = body;
    showRecord(state, body);
  }).catch(function (err) {
    setText($("detail-more"), errorText(err));
  });
}

function fieldRows(dl, rows) {
  dl.textContent = "";
  for (const row of rows) {
    const dt = document.createElement("dt");
    dt.textContent = row[0];
    const dd = document.createElement("dd");
    dd.textContent = row[1];
    dl.appendChild(dt);
    dl.appendChild(dd);
  }
}

function showLive(state, s) {
  const lang = state.page.lang;
  setText($("detail-name"), s.name);
  $("detail").setAttribute("data-wall", state.wall.tiles.get(s.code).klass);
  fieldRows($("detail-fields"), [
    [t("field_code"), s.code],
    [t("field_commune"), s.commune || ""],
    [t("field_status"), t("state_" + s.status) + (s.since ? " · " + t("mod_since", { time: clock(s.since, lang) }) : "")],
    [t("field_headcount"), fmtNum(s.headcount) + " / " + t("field_peak") + " " + fmtNum(s.peak_headcount)],
    [t("field_quality"), s.quality ? t("quality_" + s.quality) : "–"],
    ["RTT", fmtNum(s.rtt_ms, " ms")],
    [t("loss"), formatPercent(s.loss_pct)],
    [t("field_bitrate"), fmtNum(s.kbps, " kbit/s")],
    [t("field_rejoins"), fmtNum(s.rejoins)],
    [t("site_media_label"), t("site_media_" + (s.media_mode === "audio_only" ? "audio_only" : "auto"))],
    [t("field_path"), s.path ? t("path_" + s.path) : "–"],
    [t("field_checkins"), fmtNum(s.checkins)],
    [t("field_help_open"), fmtNum(s.help_open)],
  ]);
}

function section(title) {
  const box = document.createElement("section");
  box.className = "detail-section";
  const h = document.createElement("h3");
  h.textContent = title;
  box.appendChild(h);
  return box;
}

function lines(box, items, render) {
  const ul = document.createElement("ul");
  ul.className = "detail-list";
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = t("none_yet");
    ul.appendChild(li);
  }
  for (const item of items) {
    const li = document.createElement("li");
    const out = render(item, li);
    if (typeof out === "string") li.textContent = out;
    ul.appendChild(li);
  }
  box.appendChild(ul);
  return ul;
}

function showRecord(state, body) {
  const lang = state.page.lang;
  const r = body.record;
  const more = $("detail-more");
  more.textContent = "";
  const att = section(t("mod_detail_attendance"));
  const dl = document.createElement("dl");
  dl.className = "fields";
  fieldRows(dl, [
    [t("field_attendance"), t("attendance_" + r.status)],
    [t("field_first_join"), r.first_join ? clock(r.first_join, lang) : "–"],
    [t("field_last_leave"), r.last_leave ? clock(r.last_leave, lang) : (r.connected_now ? t("mod_still_here") : "–")],
    [t("field_connected"), t("mod_minutes", { n: fmtNum(r.connected_minutes) }) + " · " + formatPercent(r.connected_pct)],
    [t("field_page_open"), t("mod_minutes", { n: fmtNum(r.page_minutes) }) + " · " + formatPercent(r.page_pct)],
    [t("field_poor_time"), t("mod_minutes", { n: fmtNum(r.poor_seconds / 60) })],
    [t("field_headcounts"), [r.headcount.start, r.headcount.mid, r.headcount.end].map(function (v) { return fmtNum(v); }).join(" / ")],
  ]);
  att.appendChild(dl);
  more.appendChild(att);

  const iv = section(t("mod_detail_intervals", { n: r.intervals.length }));
  lines(iv, r.intervals, function (i) {
    return clock(i.start, lang) + " – " + (i.open ? t("mod_now") : clock(i.end, lang)) +
      " (" + t("mod_minutes", { n: fmtNum(i.seconds / 60) }) + ")";
  });
  more.appendChild(iv);

  const hc = section(t("mod_detail_headcounts"));
  lines(hc, body.headcounts.slice(-10).reverse(), function (h) {
    return clock(h.at, lang) + " · " + t("mod_tile_people", { n: h.count }) + " · " + t("phase_" + h.phase);
  });
  more.appendChild(hc);

  const ci = section(t("mod_detail_checkins", { n: body.checkins.count }));
  lines(ci, body.checkins.latest.slice(0, 10), function (c) {
    return clock(c.at, lang) + " · " + c.name + (c.by === "operator" ? " · " + t("mod_by_operator") : "");
  });
  more.appendChild(ci);

  const help = section(t("mod_help"));
  lines(help, body.help, function (h, li) {
    li.textContent = clock(h.at, lang) + " · " + t("help_" + h.reason) + (h.text ? " — " + h.text : "") +
      (h.resolved_at ? " · " + t("mod_alert_resolved", { time: clock(h.resolved_at, lang) }) : "");
    if (!h.resolved_at) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "btn btn-small";
      btn.textContent = t("mod_resolve");
      btn.setAttribute("data-help-id", h.help_id);
      btn.addEventListener("click", function () { resolveHelp(state, h, btn); });
      li.appendChild(btn);
    }
  });
  more.appendChild(help);

  const inc = section(t("mod_incidents"));
  lines(inc, body.incidents, function (a) {
    return clock(a.since, lang) + " · " + t("alert_" + a.kind) + " · " +
      (a.open ? t("mod_alert_open") : t("mod_alert_resolved", { time: clock(a.resolved_at, lang) }));
  });
  more.appendChild(inc);
}

function fmtNum(v, unit) {
  return typeof v === "number" ? formatNumber(v) + (unit || "") : "–";
}

// ---- help and questions ------------------------------------------------------------------

function siteLabel(state, code) {
  const tile = state.wall.tiles.get(code);
  return tile ? tile.site.name + (tile.site.commune ? " · " + tile.site.commune : "") : code;
}

function feedItem(list, head, text) {
  const empty = list.querySelector(".feed-empty");
  if (empty) empty.remove();
  const li = document.createElement("li");
  const strong = document.createElement("strong");
  strong.textContent = head;
  const p = document.createElement("p");
  p.textContent = text;
  li.appendChild(strong);
  li.appendChild(p);
  list.insertBefore(li, list.firstChild);
  return li;
}

function addHelp(state, msg) {
  if (state.help.has(msg.help_id)) return;
  const text = t("help_" + msg.reason) + (msg.text ? " — " + msg.text : "");
  const li = feedItem($("help-list"), clock(msg.at || Date.now() / 1000, state.page.lang) + " · " +
    siteLabel(state, msg.site), text);
  li.setAttribute("data-site", msg.site);
  li.className = "feed-alert";
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "btn btn-small";
  btn.textContent = t("mod_resolve");
  btn.addEventListener("click", function () { resolveHelp(state, msg, btn); });
  const show = document.createElement("button");
  show.type = "button";
  show.className = "btn btn-small";
  show.textContent = t("mod_show_site");
  show.addEventListener("click", function () { select(state, msg.site); });
  li.appendChild(show);
  li.appendChild(btn);
  state.help.set(msg.help_id, { li: li, site: msg.site });
  setText($("help-count"), state.help.size);
}

async function resolveHelp(state, msg, btn) {
  btn.disabled = true;
  try {
    await state.channel.call({ type: "resolve_help", site: msg.site, help_id: msg.help_id });
    dropHelp(state, msg.help_id);
    if (state.selected === msg.site) refreshDetail(state, true);
  } catch (err) {
    btn.disabled = false;
    toast(errorText(err));
  }
}

function dropHelp(state, id) {
  const entry = state.help.get(id);
  if (!entry) return;
  entry.li.remove();
  state.help.delete(id);
  setText($("help-count"), state.help.size);
}

function dropHelpOf(state, code) {
  if (!state.help.size) return;
  for (const [id, entry] of state.help) if (entry.site === code) dropHelp(state, id);
}

function addQuestion(state, msg) {
  if (state.questions.has(msg.question_id)) return;
  const li = feedItem($("question-list"), clock(msg.at || Date.now() / 1000, state.page.lang) + " · " +
    siteLabel(state, msg.site), msg.text || "");
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "btn btn-small";
  btn.textContent = t("mod_forward");
  btn.addEventListener("click", async function () {
    btn.disabled = true;
    try {
      await state.channel.call({ type: "forward_question", question_id: msg.question_id });
      btn.textContent = t("mod_forwarded");
    } catch (err) {
      btn.disabled = false;
      toast(errorText(err));
    }
  });
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.className = "btn btn-small";
  dismiss.textContent = t("mod_dismiss");
  dismiss.addEventListener("click", async function () {
    dismiss.disabled = true;
    try {
      await state.channel.call({ type: "dismiss_question", question_id: msg.question_id });
      closeQuestion(state, msg.question_id);
    } catch (err) {
      dismiss.disabled = false;
      toast(errorText(err));
    }
  });
  li.appendChild(btn);
  li.appendChild(dismiss);
  state.questions.set(msg.question_id, { li: li, forward: btn, dismiss: dismiss });
  setText($("question-count"), $("question-list").querySelectorAll("li:not(.feed-empty)").length);
}

/** A question was forwarded or dismissed (here or by another moderator): no more buttons. */
function closeQuestion(state, id) {
  const entry = state.questions.get(id);
  if (!entry) return;
  entry.dismiss.remove();
  entry.li.classList.add("feed-done");
}

// ---- messages and commands ---------------------------------------------------------------

function targetSite(state, code) {
  const select = $("msg-target");
  let opt = select.querySelector("option[data-site]");
  if (!opt) {
    opt = document.createElement("option");
    opt.setAttribute("data-site", "1");
    // After "all", before the communes' <optgroup>: options[1] may sit inside that group,
    // and inserting before a grandchild throws (the message then went to every hall).
    select.insertBefore(opt, select.children[1] || null);
  }
  opt.value = "site:" + code;
  opt.textContent = siteLabel(state, code);
  select.value = opt.value;
  $("msg-text").focus();
}

async function sendMessage(state) {
  const text = $("msg-text").value.trim().slice(0, 500);
  const target = $("msg-target").value;
  const result = $("msg-result");
  if (!text) return;
  let to = { all: true };
  if (target.indexOf("commune:") === 0) to = { commune: target.slice(8) };
  if (target.indexOf("site:") === 0) to = { site: target.slice(5) };
  setText(result, t("sending"));
  try {
    await state.channel.call({ type: "message", text: text, to: to });
    setText(result, t("mod_message_sent"));
    $("msg-text").value = "";
  } catch (err) {
    setText(result, errorText(err));
  }
}

async function endClass(state) {
  const button = $("end-confirm");
  button.disabled = true;
  setText($("end-result"), t("sending"));
  try {
    await apiRequest(state.page.end_url, state.page.token, { method: "POST" });
    showEnded(state); // the class_ended broadcast follows; either one is enough
  } catch (err) {
    setText($("end-result"), errorText(err));
  } finally {
    button.disabled = false;
  }
}

async function reconnectSite(state) {
  if (!state.selected) return;
  try {
    await state.channel.call({ type: "command", site: state.selected, action: "reconnect" });
    toast(t("mod_reconnect_sent"));
  } catch (err) {
    toast(errorText(err));
  }
}

/** The staff's links (moderator; lecturer for an admin) as a CSV: never to send to halls,
 * whose links are the "hall links" export. */
async function downloadStaffLinks(state) {
  let links;
  try {
    links = await apiRequest(state.page.links_url, state.page.token);
  } catch (err) {
    toast(errorText(err));
    return;
  }
  const rows = [["role", "name", "url"]];
  if (links.lecturer) rows.push(["lecturer", t("studio_title"), links.lecturer.url]);
  if (links.moderator) rows.push(["moderator", t("mod_title"), links.moderator.url]);
  const text = csvDocument(rows); // a hall named "=HYPERLINK(...)" stays text in Excel
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  a.download = "lopso-" + state.page.sid + "-staff-links.csv";
  document.body.appendChild(a);
  a.click();
  setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function wireControls(state) {
  let timer = 0;
  const refilter = function () { applyFilters(state); };
  $("search").addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refilter, 150);
  });
  for (const id of ["filter-status", "filter-quality", "filter-commune", "filter-alert", "filter-help"]) {
    $(id).addEventListener("change", refilter);
  }
  // Looking at one commune: a message goes to that commune unless the moderator picks otherwise.
  $("filter-commune").addEventListener("change", function () {
    const name = $("filter-commune").value;
    const target = $("msg-target");
    if (name) target.value = "commune:" + name;
    else if (target.value.indexOf("commune:") === 0) target.value = "all";
  });
  const legend = document.querySelectorAll("[data-filter-class]");
  for (let i = 0; i < legend.length; i++) {
    legend[i].addEventListener("click", function () {
      const k = legend[i].getAttribute("data-filter-class");
      $("filter-quality").value = $("filter-quality").value === k ? "" : k;
      refilter();
    });
  }
  const kinds = document.querySelectorAll("[data-filter-alert]");
  for (let i = 0; i < kinds.length; i++) {
    kinds[i].addEventListener("click", function () {
      const k = kinds[i].getAttribute("data-filter-alert");
      $("filter-alert").value = $("filter-alert").value === k ? "" : k;
      refilter();
    });
  }
  $("toggle-compact").addEventListener("click", function () { state.wall.setCompact(!state.wall.compact); });
  $("collapse-all").addEventListener("click", function () { state.wall.collapseAll(true); });
  $("expand-all").addEventListener("click", function () { state.wall.collapseAll(false); });
  $("wall").addEventListener("keydown", function (ev) {
    const name = ev.target.getAttribute && ev.target.getAttribute("data-commune-toggle");
    if ((ev.key === "Enter" || ev.key === " ") && name !== null) {
      ev.preventDefault();
      state.wall.toggle(name);
    }
  });
  $("form-message").addEventListener("submit", function (ev) { ev.preventDefault(); sendMessage(state); });
  $("detail-close").addEventListener("click", function () {
    $("detail").hidden = true;
    state.selected = "";
    state.wall.select("");
  });
  $("detail-message").addEventListener("click", function () { targetSite(state, state.selected); });
  $("detail-reconnect").addEventListener("click", function () { reconnectSite(state); });
  if ($("export-staff-links")) {
    $("export-staff-links").addEventListener("click", function () { downloadStaffLinks(state); });
  }
  $("end-class").addEventListener("click", function () {
    setText($("end-result"), "");
    $("panel-end").hidden = false;
    $("end-cancel").focus();
  });
  $("end-cancel").addEventListener("click", function () { $("panel-end").hidden = true; });
  $("end-confirm").addEventListener("click", function () { endClass(state); });
}

main();
