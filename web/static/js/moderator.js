// Moderator view: totals, a wall of site tiles grouped by commune, help requests, questions,
// messages and exports. Built for the province wall (5,000 tiles): a `sites` snapshot builds
// the wall once; each `sites_update` touches only the tiles and communes that changed, and the
// time spent per update is kept in window.lopso.metrics.
import { Channel, apiRequest } from "./protocol.js";
import { $, clock, loadStrings, readPageConfig, setText, t, toast, wireLangSwitch } from "./i18n.js";

const PROBLEM_STATUS = { reconnecting: 1, offline: 1, stalled: 1, connecting: 1 };
const PROBLEM_QUALITY = { poor: 1, lost: 1 };

/** The tile wall: Map code → tile, Map commune → group, and the active filter. */
class Wall {
  /** @param {HTMLElement} root @param {string} lang */
  constructor(root, lang) {
    this.root = root;
    this.lang = lang;
    /** @type {Map<string, {site: any, el: HTMLElement, name: HTMLElement, hc: HTMLElement, q: HTMLElement, key: string}>} */
    this.tiles = new Map();
    /** @type {Map<string, {el: HTMLElement, box: HTMLElement, stats: HTMLElement, codes: string[]}>} */
    this.communes = new Map();
    this.filter = { text: "", status: "", quality: "" };
    this.onSelect = null;
  }

  /** Rebuild everything from a full snapshot. */
  snapshot(sites) {
    this.tiles.clear();
    this.communes.clear();
    this.root.textContent = "";
    const collator = new Intl.Collator(this.lang === "en" ? "en" : "vi", { numeric: true });
    const sorted = sites.slice().sort(function (a, b) {
      return collator.compare(String(a.commune || ""), String(b.commune || "")) ||
        collator.compare(String(a.name || ""), String(b.name || ""));
    });
    const frag = document.createDocumentFragment();
    for (const site of sorted) this.addTile(site, frag);
    this.root.appendChild(frag);
    for (const name of this.communes.keys()) this.refreshCommune(name);
    this.applyFilter();
  }

  /** Apply changed sites only. @returns {number} tiles touched */
  update(sites) {
    const touched = new Set();
    for (const site of sites) {
      const tile = this.tiles.get(site.code);
      if (tile) {
        const merged = Object.assign({}, tile.site, site);
        this.patchTile(tile, merged);
        this.filterTile(tile);
      } else {
        this.addTile(site, null);
        this.filterTile(this.tiles.get(site.code));
      }
      touched.add(this.communeOf(site.code));
    }
    touched.forEach((name) => { this.refreshCommune(name); this.filterCommune(name); });
    return sites.length;
  }

  communeOf(code) {
    const tile = this.tiles.get(code);
    return tile ? String(tile.site.commune || "") : "";
  }

  group(name, frag) {
    let g = this.communes.get(name);
    if (g) return g;
    const el = document.createElement("section");
    el.className = "commune";
    const head = document.createElement("header");
    const h = document.createElement("h3");
    h.textContent = name || t("mod_no_commune");
    const stats = document.createElement("span");
    stats.className = "commune-stats";
    head.appendChild(h);
    head.appendChild(stats);
    const box = document.createElement("div");
    box.className = "tiles";
    el.appendChild(head);
    el.appendChild(box);
    (frag || this.root).appendChild(el);
    g = { el: el, box: box, stats: stats, codes: [] };
    this.communes.set(name, g);
    return g;
  }

  addTile(site, frag) {
    const g = this.group(String(site.commune || ""), frag);
    const el = document.createElement("button");
    el.type = "button";
    el.className = "tile";
    el.setAttribute("data-code", site.code);
    const name = document.createElement("span");
    name.className = "tile-name";
    const hc = document.createElement("span");
    hc.className = "tile-hc";
    const q = document.createElement("span");
    q.className = "tile-q";
    el.appendChild(name);
    el.appendChild(hc);
    el.appendChild(q);
    el.addEventListener("click", () => { if (this.onSelect) this.onSelect(site.code); });
    // The tooltip is built when a pointer arrives, not on every update (5,000 tiles).
    el.addEventListener("mouseenter", () => { el.title = tileTitle(this.tiles.get(site.code).site, this.lang); });
    g.box.appendChild(el);
    g.codes.push(site.code);
    const tile = { site: {}, el: el, name: name, hc: hc, q: q, key: "" };
    this.tiles.set(site.code, tile);
    this.patchTile(tile, site);
  }

  /** Write only what changed into the tile's DOM. */
  patchTile(tile, site) {
    const old = tile.site;
    tile.site = site;
    tile.key = (site.name + " " + site.code + " " + (site.commune || "")).toLowerCase();
    const el = tile.el;
    if (old.status !== site.status) el.setAttribute("data-status", site.status || "never_joined");
    if (old.quality !== site.quality) el.setAttribute("data-quality", site.quality || "none");
    const help = site.help_open > 0;
    if (help) el.setAttribute("data-help", String(site.help_open));
    else if (old.help_open > 0) el.removeAttribute("data-help");
    if (old.name !== site.name) setText(tile.name, shortName(site.name));
    setText(tile.hc, t("mod_tile_people", { n: typeof site.headcount === "number" ? site.headcount : "–" }));
    setText(tile.q, qualityFigure(site));
  }

  refreshCommune(name) {
    const g = this.communes.get(name);
    if (!g) return;
    let playing = 0;
    let connected = 0;
    let people = 0;
    for (const code of g.codes) {
      const s = this.tiles.get(code).site;
      if (s.status === "playing") playing += 1;
      if (s.status !== "offline" && s.status !== "never_joined") connected += 1;
      people += s.headcount || 0;
    }
    setText(g.stats, t("mod_commune_stats", { playing: playing, connected: connected,
      expected: g.codes.length, people: people }));
    g.el.setAttribute("data-trouble", String(connected - playing > 0 || connected < g.codes.length));
  }

  setFilter(filter) {
    this.filter = filter;
    this.applyFilter();
  }

  matches(site, key) {
    const f = this.filter;
    if (f.text && key.indexOf(f.text) < 0) return false;
    if (f.quality && site.quality !== f.quality) return false;
    if (!f.status) return true;
    if (f.status === "problem") return !!(PROBLEM_STATUS[site.status] || PROBLEM_QUALITY[site.quality] || site.help_open > 0);
    if (f.status === "help") return site.help_open > 0;
    return site.status === f.status;
  }

  filterTile(tile) {
    const show = this.matches(tile.site, tile.key);
    if (tile.el.hidden === show) tile.el.hidden = !show;
  }

  filterCommune(name) {
    const g = this.communes.get(name);
    let any = false;
    for (const code of g.codes) {
      if (!this.tiles.get(code).el.hidden) { any = true; break; }
    }
    if (g.el.hidden === any) g.el.hidden = !any;
  }

  applyFilter() {
    for (const tile of this.tiles.values()) this.filterTile(tile);
    for (const name of this.communes.keys()) this.filterCommune(name);
  }

  shownCount() {
    let n = 0;
    for (const tile of this.tiles.values()) if (!tile.el.hidden) n += 1;
    return n;
  }
}

/** "Nhà văn hóa thôn Đông" → "thôn Đông": the tile is small, the prefix is on every site. */
function shortName(name) {
  return String(name || "").replace(/^(Nhà văn hóa|Nhà văn hoá|NVH)\s+/i, "");
}

function qualityFigure(site) {
  if (site.status !== "playing" && site.status !== "reconnecting") return "";
  if (typeof site.loss_pct === "number" && site.loss_pct >= 1) return site.loss_pct.toFixed(0) + "%";
  if (typeof site.kbps === "number" && site.kbps > 0) return site.kbps + "k";
  return "";
}

function tileTitle(site, lang) {
  const parts = [site.name + " (" + site.code + ")", site.commune || "", t("state_" + site.status)];
  if (site.quality) parts.push(t("quality_" + site.quality));
  if (site.since) parts.push(t("mod_since", { time: clock(site.since, lang) }));
  return parts.filter(Boolean).join(" · ");
}

// ---- page --------------------------------------------------------------------------------

function main() {
  loadStrings();
  wireLangSwitch();
  const page = readPageConfig();
  const wall = new Wall($("wall"), page.lang);
  const metrics = { updates: 0, lastMs: 0, maxMs: 0, totalMs: 0, tiles: 0 };
  const state = { page: page, wall: wall, selected: "", totals: {}, live: false, metrics: metrics,
    channel: new Channel(page.ws_url), help: new Map() };
  window.lopso = {
    get state() { return state.channel.state; },
    get totals() { return state.totals; },
    get live() { return state.live; },
    metrics: metrics,
    site: function (code) { const tile = wall.tiles.get(code); return tile ? tile.site : null; },
    tileCount: function () { return wall.tiles.size; },
    // Tests and load drills feed server messages straight in (e.g. a 5,000-site snapshot).
    feed: function (msg) { state.channel.emit(msg.type, msg); },
  };
  wall.onSelect = function (code) { select(state, code); };
  wireChannel(state);
  wireControls(state);
  state.channel.connect();
}

function measured(state, fn) {
  const start = performance.now();
  fn();
  const ms = performance.now() - start;
  const m = state.metrics;
  m.updates += 1;
  m.lastMs = ms;
  m.totalMs += ms;
  if (ms > m.maxMs) m.maxMs = ms;
}

function wireChannel(state) {
  const ch = state.channel;
  ch.on("state", function (s) {
    if (s !== "open") setLiveBadge(state, "reconnecting");
  });
  ch.on("welcome", function (msg) {
    state.live = !!msg.live;
    setLiveBadge(state);
  });
  ch.on("live", function (msg) {
    state.live = !!msg.live;
    setLiveBadge(state);
  });
  ch.on("class_ended", function () { setLiveBadge(state, "ended"); });
  ch.on("sites", function (msg) {
    measured(state, function () {
      const empty = $("wall-empty");
      if (empty) empty.remove(); // a reconnect brings a new snapshot: only the first removes it
      state.wall.snapshot(msg.sites || []);
      fillCommuneTargets(state);
      showTotals(state, msg.totals);
      afterChange(state, msg.sites || []);
    });
  });
  ch.on("sites_update", function (msg) {
    measured(state, function () {
      state.wall.update(msg.sites || []);
      showTotals(state, msg.totals);
      afterChange(state, msg.sites || []);
    });
  });
  ch.on("help", function (msg) { addHelp(state, msg); });
  ch.on("question", function (msg) { addQuestion(state, msg); });
}

function setLiveBadge(state, override) {
  const el = $("live-state");
  const s = override || (state.live ? "playing" : "waiting");
  el.setAttribute("data-state", s);
  const key = { playing: "mod_live", waiting: "mod_not_live", reconnecting: "state_reconnecting",
    ended: "site_ended" }[s];
  setText(el, t(key));
}

function showTotals(state, totals) {
  if (!totals) return;
  state.totals = totals;
  const fmt = function (n) { return Number(n || 0).toLocaleString(state.page.lang === "en" ? "en" : "vi"); };
  setText($("t-expected"), fmt(totals.expected));
  setText($("t-connected"), fmt(totals.connected));
  setText($("t-playing"), fmt(totals.playing));
  setText($("t-people"), fmt(totals.people));
  setText($("t-help"), fmt(totals.help_open));
  setText($("shown-count"), t("mod_shown", { shown: state.wall.shownCount(), total: state.wall.tiles.size }));
}

function afterChange(state, sites) {
  for (const s of sites) {
    if (s.code === state.selected) showDetail(state);
    if (!(s.help_open > 0)) dropHelpOf(state, s.code);
  }
}

// ---- detail ------------------------------------------------------------------------------

function select(state, code) {
  state.selected = code;
  showDetail(state);
  $("detail").hidden = false;
}

function showDetail(state) {
  const tile = state.wall.tiles.get(state.selected);
  if (!tile) return;
  const s = tile.site;
  const lang = state.page.lang;
  setText($("detail-name"), s.name);
  const rows = [
    [t("field_code"), s.code],
    [t("field_commune"), s.commune || ""],
    [t("field_status"), t("state_" + s.status) + (s.since ? " · " + t("mod_since", { time: clock(s.since, lang) }) : "")],
    [t("field_headcount"), fmtNum(s.headcount) + " / " + t("field_peak") + " " + fmtNum(s.peak_headcount)],
    [t("field_quality"), s.quality ? t("quality_" + s.quality) : "–"],
    ["RTT", fmtNum(s.rtt_ms, " ms")],
    [t("loss"), fmtNum(s.loss_pct, " %")],
    [t("field_bitrate"), fmtNum(s.kbps, " kbit/s")],
    [t("field_rejoins"), fmtNum(s.rejoins)],
    [t("field_help_open"), fmtNum(s.help_open)],
  ];
  const dl = $("detail-fields");
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

function fmtNum(v, unit) {
  return typeof v === "number" ? String(Math.round(v * 10) / 10) + (unit || "") : "–";
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
  } catch (err) {
    btn.disabled = false;
    toast(t("error_generic", { message: err.message || err }));
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
  for (const [id, entry] of state.help) if (entry.site === code) dropHelp(state, id);
}

function addQuestion(state, msg) {
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
      toast(t("error_generic", { message: err.message || err }));
    }
  });
  li.appendChild(btn);
}

// ---- messages and commands ---------------------------------------------------------------

function fillCommuneTargets(state) {
  const select = $("msg-target");
  while (select.options.length > 1) select.remove(1);
  const names = Array.from(state.wall.communes.keys()).filter(Boolean).sort();
  const group = document.createElement("optgroup");
  group.label = t("field_commune");
  for (const name of names) {
    const opt = document.createElement("option");
    opt.value = "commune:" + name;
    opt.textContent = name;
    group.appendChild(opt);
  }
  select.appendChild(group);
}

function targetSite(state, code) {
  const select = $("msg-target");
  let opt = select.querySelector("option[data-site]");
  if (!opt) {
    opt = document.createElement("option");
    opt.setAttribute("data-site", "1");
    select.insertBefore(opt, select.options[1] || null);
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
    setText(result, t("error_generic", { message: err.message || err }));
  }
}

async function reconnectSite(state) {
  if (!state.selected) return;
  try {
    await state.channel.call({ type: "command", site: state.selected, action: "reconnect" });
    toast(t("mod_reconnect_sent"));
  } catch (err) {
    toast(t("error_generic", { message: err.message || err }));
  }
}

/** The class's links (one per site) as a CSV the organisers can send to each hall. */
async function downloadLinks(state) {
  let links;
  try {
    links = await apiRequest(state.page.links_url, state.page.token);
  } catch (err) {
    toast(t("error_generic", { message: err.message || err }));
    return;
  }
  const rows = [["code", "name", "commune", "url"]];
  for (const s of links.sites || []) rows.push([s.code, s.name, s.commune || "", s.url]);
  rows.push(["lecturer", t("studio_title"), "", links.lecturer ? links.lecturer.url : ""]);
  rows.push(["moderator", t("mod_title"), "", links.moderator ? links.moderator.url : ""]);
  const quote = function (v) { return '"' + String(v).replace(/"/g, '""') + '"'; };
  const text = "\ufeff" + rows.map(function (r) { return r.map(quote).join(","); }).join("\r\n") + "\r\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  a.download = "lopso-" + state.page.sid + "-links.csv";
  document.body.appendChild(a);
  a.click();
  setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function wireControls(state) {
  let timer = 0;
  const refilter = function () {
    state.wall.setFilter({
      text: $("search").value.trim().toLowerCase(),
      status: $("filter-status").value,
      quality: $("filter-quality").value,
    });
    setText($("shown-count"), t("mod_shown", { shown: state.wall.shownCount(), total: state.wall.tiles.size }));
  };
  $("search").addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refilter, 150);
  });
  $("filter-status").addEventListener("change", refilter);
  $("filter-quality").addEventListener("change", refilter);
  $("form-message").addEventListener("submit", function (ev) { ev.preventDefault(); sendMessage(state); });
  $("detail-close").addEventListener("click", function () { $("detail").hidden = true; state.selected = ""; });
  $("detail-message").addEventListener("click", function () { targetSite(state, state.selected); });
  $("detail-reconnect").addEventListener("click", function () { reconnectSite(state); });
  if ($("export-links")) $("export-links").addEventListener("click", function () { downloadLinks(state); });
}

main();
