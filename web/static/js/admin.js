// The organiser page (/admin): the hall registry by commune, the CSV import with its preview,
// one hall added or edited, its key rotated; classes created, edited, ended, and their wall,
// report, exports, hall cards and hall links. Signed in by cookie: every change carries the
// session's CSRF token (protocol.js).
import { apiRequest, setCsrfToken } from "./protocol.js";
import { $, loadStrings, readPageConfig, setText, t, toast, wireLangSwitch } from "./i18n.js";

const ZONE = "Asia/Ho_Chi_Minh";
const ZONE_OFFSET = "+07:00"; // Viet Nam keeps no daylight saving time

/** @type {any} */
let page = {};
/** @type {any[]} */
let halls = [];
/** @type {any[]} */
let classes = [];
/** @type {string} the CSV text previewed, saved as is */
let previewed = "";

/** @param {string} tag @param {Record<string, any>} [attrs] @param {(Node|string)[]} [kids] */
function el(tag, attrs, kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids || []) node.append(kid);
  return node;
}

function locale() { return page.lang === "en" ? "en-GB" : "vi-VN"; }

/** @param {string|null} iso @returns {string} the weekday and date in Viet Nam */
function day(iso) {
  if (!iso) return "";
  return new Intl.DateTimeFormat(locale(), {
    timeZone: ZONE, weekday: "long", day: "2-digit", month: "2-digit", year: "numeric",
  }).format(new Date(iso));
}

/** @param {string|null} iso @returns {string} the time of day in Viet Nam */
function hour(iso) {
  if (!iso) return "";
  return new Intl.DateTimeFormat(locale(), { timeZone: ZONE, hour: "2-digit", minute: "2-digit" })
    .format(new Date(iso));
}

/** @param {string} iso @returns {{date: string, time: string}} in Viet Nam, for the form */
function localParts(iso) {
  const d = new Date(new Date(iso).getTime() + 7 * 3600 * 1000);
  const s = d.toISOString();
  return { date: s.slice(0, 10), time: s.slice(11, 16) };
}

/** @param {number} n */
function count(n) { return new Intl.NumberFormat(locale()).format(n); }

function communeNames() {
  return Array.from(new Set(halls.map(function (h) { return h.commune; }))).sort(
    function (a, b) { return a.localeCompare(b, "vi"); });
}

// --- halls ---------------------------------------------------------------------------------
async function loadHalls() {
  halls = (await apiRequest("/api/sites", "")).sites;
  setText($("hall-count"), "(" + count(halls.length) + ")");
  const names = communeNames();
  const filter = $("hall-commune-filter");
  const chosen = filter.value;
  filter.replaceChildren(el("option", { value: "", text: t("mod_commune_all") }));
  for (const name of names) filter.append(el("option", { value: name, text: name || t("admin_no_commune") }));
  filter.value = names.includes(chosen) ? chosen : "";
  const list = $("commune-names");
  if (list) list.replaceChildren(...names.map(function (n) { return el("option", { value: n }); }));
  renderHalls();
  renderCommunePicks();
}

function renderHalls() {
  const needle = $("hall-search").value.trim().toLocaleLowerCase("vi");
  const commune = $("hall-commune-filter").value;
  /** @type {Map<string, any[]>} */
  const groups = new Map();
  let shown = 0;
  for (const h of halls) {
    if (commune && h.commune !== commune) continue;
    const hay = [h.code, h.name, h.village, h.commune].join(" ").toLocaleLowerCase("vi");
    if (needle && !hay.includes(needle)) continue;
    if (!groups.has(h.commune)) groups.set(h.commune, []);
    groups.get(h.commune).push(h);
    shown += 1;
  }
  const open = Boolean(needle || commune) || groups.size <= 3;
  const parts = [];
  for (const name of Array.from(groups.keys()).sort(function (a, b) { return a.localeCompare(b, "vi"); })) {
    const rows = groups.get(name).map(hallRow);
    parts.push(el("details", { class: "commune-group", "data-commune": name, open: open }, [
      el("summary", { text: (name || t("admin_no_commune")) + " (" + count(rows.length) + ")" }),
      el("table", { class: "admin-table" }, [el("tbody", {}, rows)]),
    ]));
  }
  $("hall-registry").replaceChildren(...parts);
  setText($("hall-shown"), t("admin_hall_shown", { n: count(shown), total: count(halls.length) }));
}

/** @param {any} h */
function hallRow(h) {
  const actions = el("td", { class: "row-actions" });
  if (page.may_admin) {
    const edit = el("button", { type: "button", class: "btn btn-small", "data-edit": h.code, text: t("admin_edit") });
    edit.addEventListener("click", function () { editHall(h); });
    const rotate = el("button", { type: "button", class: "btn btn-small btn-warn", "data-rotate": h.code, text: t("admin_rotate") });
    rotate.addEventListener("click", function () { rotateHall(h); });
    actions.append(edit, " ", rotate);
  }
  return el("tr", { "data-code": h.code }, [
    el("td", { class: "mono", text: h.code }), el("td", { text: h.name }),
    el("td", { class: "muted", text: h.village }), actions,
  ]);
}

/** @param {any} h */
function editHall(h) {
  const form = $("hall-form");
  for (const key of ["code", "name", "village", "commune", "province"]) form.elements[key].value = h[key] || "";
  form.elements.code.readOnly = true;
  $("hall-form-box").open = true;
  form.elements.name.focus();
}

/** @param {any} h */
async function rotateHall(h) {
  if (!confirm(t("admin_rotate_confirm", { name: h.name }))) return;
  try {
    await apiRequest("/api/sites/" + encodeURIComponent(h.code) + "/rotate", "", { method: "POST" });
    toast(t("admin_rotated", { name: h.name }));
  } catch (e) {
    toast(String(/** @type {any} */ (e).message));
  }
}

async function saveHall(/** @type {SubmitEvent} */ ev) {
  ev.preventDefault();
  const form = $("hall-form");
  const body = {};
  for (const key of ["name", "village", "commune", "province"]) body[key] = form.elements[key].value.trim();
  const code = form.elements.code.value.trim();
  try {
    await apiRequest("/api/sites/" + encodeURIComponent(code), "", { method: "PUT", body: body });
    setText($("hall-result"), t("admin_hall_saved", { name: body.name }));
    resetHallForm();
    await loadHalls();
  } catch (e) {
    setText($("hall-result"), String(/** @type {any} */ (e).message));
  }
}

function resetHallForm() {
  const form = $("hall-form");
  form.reset();
  form.elements.code.readOnly = false;
}

// --- CSV import ----------------------------------------------------------------------------
async function previewCsv() {
  const file = $("csv-file").files[0];
  if (!file) { toast(t("admin_import_pick")); return; }
  previewed = await file.text();
  const resp = await fetch("/api/sites/preview", {
    method: "POST", credentials: "same-origin", body: previewed,
    headers: { "Content-Type": "text/csv", "X-CSRF-Token": page.csrf },
  });
  const body = await resp.json().catch(function () { return {}; });
  $("csv-preview").hidden = false;
  const problems = $("csv-problems");
  problems.replaceChildren();
  $("csv-rows").replaceChildren();
  if (!resp.ok) {
    $("csv-save").hidden = true;
    const list = body.problems || [{ line: 0, message: (body.error || {}).message || resp.statusText }];
    setText($("csv-summary"), t("admin_import_bad", { n: count(list.length) }));
    for (const p of list) {
      problems.append(el("li", { "data-line": p.line, text: t("admin_import_line", { line: p.line, message: p.message }) }));
    }
    return;
  }
  setText($("csv-summary"), t("admin_import_ok", {
    n: count(body.count), added: count(body.new), updated: count(body.updated),
    communes: count(Object.keys(body.communes).length),
  }));
  const head = el("tr", {}, ["code", "name", "village", "commune", "province"].map(function (k) {
    return el("th", { text: t("admin_hall_" + k) });
  }));
  const rows = body.sites.map(function (/** @type {any} */ s) {
    return el("tr", {}, [s.code, s.name, s.village, s.commune, s.province].map(function (v) { return el("td", { text: v }); }));
  });
  $("csv-rows").replaceChildren(el("thead", {}, [head]), el("tbody", {}, rows));
  $("csv-save").hidden = false;
}

async function saveCsv() {
  try {
    const reply = await apiRequest("/api/sites/import", "", { method: "POST", text: previewed });
    discardCsv();
    toast(t("admin_import_saved", { n: count(reply.imported) }));
    setText($("csv-summary"), "");
    await loadHalls();
  } catch (e) {
    setText($("csv-summary"), String(/** @type {any} */ (e).message));
  }
}

function discardCsv() {
  previewed = "";
  $("csv-preview").hidden = true;
  $("csv-save").hidden = true;
  $("csv-file").value = "";
}

// --- classes -------------------------------------------------------------------------------
function renderCommunePicks() {
  const box = $("class-communes");
  if (!box) return;
  const checked = new Set(Array.from(box.querySelectorAll("input:checked")).map(function (i) { return i.value; }));
  /** @type {Map<string, number>} */
  const counts = new Map();
  for (const h of halls) counts.set(h.commune, (counts.get(h.commune) || 0) + 1);
  box.replaceChildren(...communeNames().map(function (name) {
    return el("label", {}, [
      el("input", { type: "checkbox", name: "commune", value: name, checked: checked.has(name) }),
      " " + (name || t("admin_no_commune")) + " (" + count(counts.get(name) || 0) + ")",
    ]);
  }));
}

async function loadClasses() {
  classes = (await apiRequest("/api/sessions", "")).classes;
  const now = Date.now();
  const upcoming = [], past = [];
  for (const c of classes) {
    const done = c.ended_at || (c.ends_at && new Date(c.ends_at).getTime() < now);
    (done ? past : upcoming).push(c);
  }
  upcoming.reverse(); // soonest first
  $("classes-upcoming").replaceChildren(...(upcoming.length ? upcoming.map(classItem) : [el("li", { class: "muted", text: t("none_yet") })]));
  $("classes-past").replaceChildren(...(past.length ? past.map(classItem) : [el("li", { class: "muted", text: t("none_yet") })]));
}

/** @param {any} c */
function classCommunes(c) {
  const codes = new Set(c.site_codes);
  const mine = c.site_codes.length ? halls.filter(function (h) { return codes.has(h.code); }) : halls;
  /** @type {Map<string, number>} */
  const counts = new Map();
  for (const h of mine) counts.set(h.commune, (counts.get(h.commune) || 0) + 1);
  return counts;
}

/** @param {any} c */
function classItem(c) {
  const over = !c.started_at && c.ends_at && new Date(c.ends_at).getTime() < Date.now();
  const state = c.ended_at ? t("state_ended") :
    (c.started_at ? t("admin_class_started") : (over ? t("admin_class_missed") : t("state_waiting")));
  const communes = classCommunes(c);
  const halls_n = Array.from(communes.values()).reduce(function (a, b) { return a + b; }, 0);
  const actions = el("div", { class: "class-actions" }, [
    el("a", { class: "btn btn-small btn-primary", href: c.urls.wall, "data-open-wall": c.id, text: t("admin_open_wall") }),
    el("a", { class: "btn btn-small", href: c.urls.report_csv, download: true, text: t("admin_report") + " CSV" }),
    el("a", { class: "btn btn-small", href: c.urls.report_xlsx, download: true, text: "XLSX" }),
    el("a", { class: "btn btn-small", href: c.urls.report_json, target: "_blank", rel: "noopener", text: "JSON" }),
  ]);
  if (page.may_admin && !c.ended_at) {
    const edit = el("button", { type: "button", class: "btn btn-small", "data-edit-class": c.id, text: t("admin_edit") });
    edit.addEventListener("click", function () { editClass(c); });
    actions.append(edit);
  }
  if (!c.ended_at && !page.communes.length) { // a commune's moderator ends no one's class
    const end = el("button", { type: "button", class: "btn btn-small btn-danger", "data-end-class": c.id, text: t("admin_end") });
    end.addEventListener("click", function () { endClass(c); });
    actions.append(end);
  }
  const perCommune = Array.from(communes.keys()).sort(function (a, b) { return a.localeCompare(b, "vi"); }).map(function (name) {
    const q = "?commune=" + encodeURIComponent(name);
    return el("li", { "data-class-commune": name }, [
      el("strong", { text: (name || t("admin_no_commune")) + " (" + count(communes.get(name) || 0) + ")" }), " ",
      el("a", { href: c.urls.cards + q, target: "_blank", rel: "noopener", text: t("admin_cards") }), " · ",
      el("a", { href: c.urls.hall_links + q + "&format=text", target: "_blank", rel: "noopener", text: t("admin_links_text") }), " · ",
      el("a", { href: c.urls.hall_links + q + "&format=csv", download: true, text: t("admin_links_csv") }),
    ]);
  });
  return el("li", { class: "class-item", "data-class": c.id }, [
    el("div", { class: "class-head" }, [
      el("span", { class: "class-title", text: c.title }),
      el("span", { class: "class-when", text: day(c.starts_at) + " · " + hour(c.starts_at) + (c.ends_at ? "–" + hour(c.ends_at) : "") }),
      el("span", { class: "status-pill", text: state }),
      el("span", { class: "muted", text: c.video_codec + " · " + t("admin_class_halls", { n: count(halls_n), communes: count(communes.size) }) }),
    ]),
    actions,
    el("details", { class: "class-communes" }, [
      el("summary", { text: t("admin_class_links") }), el("ul", {}, perCommune),
    ]),
  ]);
}

/** @param {any} c */
function editClass(c) {
  const form = $("class-form");
  form.elements.sid.value = c.id;
  form.elements.title.value = c.title;
  const start = localParts(c.starts_at);
  form.elements.date.value = start.date;
  form.elements.time.value = start.time;
  form.elements.end.value = c.ends_at ? localParts(c.ends_at).time : "";
  form.elements.codec.value = c.video_codec;
  const communes = classCommunes(c);
  for (const box of form.querySelectorAll("input[name=commune]")) {
    box.checked = c.site_codes.length > 0 && communes.has(box.value);
  }
  setText($("class-submit"), t("admin_class_save"));
  setText($("class-form-note"), c.started_at ? t("admin_class_started_note") : "");
  $("class-form-box").open = true;
  form.elements.title.focus();
}

/** @param {any} c */
async function endClass(c) {
  if (!confirm(t("admin_end_confirm", { title: c.title }))) return;
  try {
    await apiRequest("/api/sessions/" + encodeURIComponent(c.id) + "/end", "", { method: "POST" });
    toast(t("admin_ended", { title: c.title }));
    await loadClasses();
  } catch (e) {
    toast(String(/** @type {any} */ (e).message));
  }
}

async function saveClass(/** @type {SubmitEvent} */ ev) {
  ev.preventDefault();
  const form = $("class-form");
  const picked = new Set(Array.from(form.querySelectorAll("input[name=commune]:checked")).map(function (i) { return i.value; }));
  if (!picked.size) { setText($("class-result"), t("admin_class_pick")); return; }
  const date = form.elements.date.value;
  const body = {
    title: form.elements.title.value.trim(),
    starts_at: date + "T" + form.elements.time.value + ":00" + ZONE_OFFSET,
    ends_at: form.elements.end.value ? date + "T" + form.elements.end.value + ":00" + ZONE_OFFSET : null,
    video_codec: form.elements.codec.value,
    site_codes: halls.filter(function (h) { return picked.has(h.commune); }).map(function (h) { return h.code; }),
  };
  const sid = form.elements.sid.value;
  try {
    if (sid) {
      const started = classes.some(function (c) { return c.id === sid && c.started_at; });
      if (started) { delete body.video_codec; delete body.site_codes; }
      await apiRequest("/api/sessions/" + encodeURIComponent(sid), "", { method: "PATCH", body: body });
    } else {
      await apiRequest("/api/sessions", "", { method: "POST", body: body });
    }
    setText($("class-result"), t("admin_class_saved", { title: body.title, n: count(body.site_codes ? body.site_codes.length : 0) }));
    resetClassForm();
    await loadClasses();
  } catch (e) {
    setText($("class-result"), String(/** @type {any} */ (e).message));
  }
}

function resetClassForm() {
  const form = $("class-form");
  form.reset();
  form.elements.sid.value = "";
  setText($("class-submit"), t("admin_class_create"));
  setText($("class-form-note"), "");
}

// --- start ---------------------------------------------------------------------------------
async function main() {
  loadStrings();
  wireLangSwitch();
  page = readPageConfig();
  setCsrfToken(page.csrf);
  $("hall-search").addEventListener("input", renderHalls);
  $("hall-commune-filter").addEventListener("change", renderHalls);
  if (page.may_admin) {
    $("csv-preview-btn").addEventListener("click", previewCsv);
    $("csv-save").addEventListener("click", saveCsv);
    $("csv-discard").addEventListener("click", discardCsv);
    $("hall-form").addEventListener("submit", saveHall);
    $("hall-cancel").addEventListener("click", function () { resetHallForm(); $("hall-form-box").open = false; });
    $("class-form").addEventListener("submit", saveClass);
    $("class-cancel").addEventListener("click", function () { resetClassForm(); $("class-form-box").open = false; });
  }
  await loadHalls();
  await loadClasses();
  window.lopso = { ready: true };
}

main().catch(function (e) { toast(String(e && e.message || e)); });
