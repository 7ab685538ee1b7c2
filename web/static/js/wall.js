// The moderator's wall of site tiles: province (totals by class) → commune (collapsible
// groups) → site (one small tile). Built for 5,000 tiles: a `sites` snapshot builds the DOM
// once; each `sites_update` touches only the changed tiles, their communes' counters and the
// province counters (kept incrementally, never recounted over 5,000 sites).
import { clock, formatNumber, setText, t } from "./i18n.js";

/** Tile classes, best first: the colour of a tile and the keys of the counters. */
export const WALL_CLASSES = ["good", "non_optimal", "poor", "lost", "waiting", "connecting",
  "no_media", "offline", "never_joined", "ended"];
const CONNECTING = { connecting: 1, reconnecting: 1, stalled: 1, error: 1 };
/** Page statuses that mean "no picture yet": with no media seen by the server, "no_media". */
const STARTING = { connecting: 1, error: 1 };
const MEDIA = { playing: 1, reconnecting: 1, stalled: 1 };

/**
 * One colour per tile, from status and quality: never joined, offline, waiting (connected,
 * class not live), page open with no media (the page is connecting or in error and the
 * server sends its player nothing: `media` false), connecting (recovering), else the quality.
 * Once the class has ended, every hall that joined is "ended" (never joined stays so).
 * @param {any} site @param {boolean} [ended] @returns {string}
 */
export function wallClass(site, ended) {
  const status = site.status || "never_joined";
  if (status === "never_joined") return status;
  if (ended) return "ended";
  if (status === "offline" || status === "waiting") return status;
  if (STARTING[status] && site.media === false) return "no_media";
  if (MEDIA[status] && site.quality) return site.quality;
  if (CONNECTING[status]) return "connecting";
  return "good"; // playing, no quality report yet
}

function emptyCounts() {
  const c = { total: 0, help: 0, people: 0, connected: 0 };
  for (const k of WALL_CLASSES) c[k] = 0;
  return c;
}

function addCounts(counts, site, klass, sign) {
  counts.total += sign;
  counts[klass] += sign;
  if (site.help_open > 0) counts.help += sign;
  if (typeof site.headcount === "number") counts.people += sign * site.headcount;
  if (klass !== "offline" && klass !== "never_joined" && klass !== "ended") counts.connected += sign;
}

/** "Nhà văn hóa thôn Đông" → "thôn Đông": the tile is small, the prefix is on every site. */
export function shortName(name) {
  return String(name || "").replace(/^(Nhà văn hóa|Nhà văn hoá|NVH)\s+/i, "");
}

export class Wall {
  /** @param {HTMLElement} root @param {string} lang */
  constructor(root, lang) {
    this.root = root;
    this.lang = lang;
    /** @type {Map<string, any>} code → {site, klass, el, name, hc, key, commune} */
    this.tiles = new Map();
    /** @type {Map<string, any>} commune → {el, box, head, stats, bar, codes, counts} */
    this.communes = new Map();
    this.counts = emptyCounts();
    this.shown = 0;
    this.filter = { text: "", status: "", quality: "", commune: "", help: false, alert: null };
    this.compact = false;
    this.ended = false;
    this.onSelect = null;
    this.selected = "";
    root.addEventListener("click", (ev) => this.onClick(ev));
  }

  /** One listener for 5,000 tiles and 100 headers. */
  onClick(ev) {
    let el = ev.target;
    while (el && el !== this.root) {
      const code = el.getAttribute && el.getAttribute("data-code");
      if (code) { if (this.onSelect) this.onSelect(code); return; }
      const commune = el.getAttribute && el.getAttribute("data-commune-toggle");
      if (commune !== null && commune !== undefined) { this.toggle(commune); return; }
      el = el.parentNode;
    }
  }

  /** Rebuild everything from a full snapshot. */
  snapshot(sites) {
    this.tiles.clear();
    this.communes.clear();
    this.counts = emptyCounts();
    this.shown = 0;
    this.root.textContent = "";
    const collator = new Intl.Collator(this.lang === "en" ? "en" : "vi", { numeric: true });
    const sorted = sites.slice().sort(function (a, b) {
      return collator.compare(String(a.commune || ""), String(b.commune || "")) ||
        collator.compare(String(a.name || ""), String(b.name || ""));
    });
    this.setCompact(sites.length > 300);
    const frag = document.createDocumentFragment();
    for (const site of sorted) this.addTile(site, frag);
    this.root.appendChild(frag);
    this.communes.forEach((g) => this.drawCommune(g));
    this.applyFilter();
  }

  /** Apply changed sites only. @returns {number} tiles touched */
  update(sites) {
    const touched = new Set();
    for (const site of sites) {
      const tile = this.tiles.get(site.code);
      if (tile) {
        this.patchTile(tile, Object.assign({}, tile.site, site));
        this.filterTile(tile);
        touched.add(tile.commune);
      } else {
        const g = this.addTile(site, null);
        this.filterTile(this.tiles.get(site.code));
        touched.add(g);
      }
    }
    touched.forEach((g) => { this.drawCommune(g); this.filterCommune(g); });
    return sites.length;
  }

  /** The class has ended: every tile and counter shows it, without a new snapshot. */
  setEnded() {
    if (this.ended) return;
    this.ended = true;
    for (const tile of this.tiles.values()) {
      this.patchTile(tile, tile.site);
      this.filterTile(tile);
    }
    this.communes.forEach((g) => { this.drawCommune(g); this.filterCommune(g); });
  }

  setCompact(on) {
    this.compact = !!on;
    this.root.setAttribute("data-compact", String(this.compact));
  }

  group(name, frag) {
    let g = this.communes.get(name);
    if (g) return g;
    const el = document.createElement("section");
    el.className = "commune";
    const head = document.createElement("header");
    head.setAttribute("data-commune-toggle", name);
    head.setAttribute("role", "button");
    head.setAttribute("aria-expanded", "true");
    head.tabIndex = 0;
    const h = document.createElement("h3");
    h.textContent = name || t("mod_no_commune");
    const bar = document.createElement("span");
    bar.className = "commune-bar";
    const stats = document.createElement("span");
    stats.className = "commune-stats";
    head.appendChild(h);
    head.appendChild(bar);
    head.appendChild(stats);
    const box = document.createElement("div");
    box.className = "tiles";
    el.appendChild(head);
    el.appendChild(box);
    (frag || this.root).appendChild(el);
    g = { name: name, el: el, box: box, head: head, stats: stats, bar: bar, codes: [],
      counts: emptyCounts(), collapsed: false, drawn: "" };
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
    el.appendChild(name);
    el.appendChild(hc);
    // The tooltip is built when a pointer arrives, not on every update (5,000 tiles).
    el.addEventListener("mouseenter", () => { el.title = tileTitle(this.tiles.get(site.code).site, this.lang); });
    g.box.appendChild(el);
    g.codes.push(site.code);
    this.shown += 1; // a new button is shown until the filter says otherwise
    const tile = { site: {}, klass: "", el: el, name: name, hc: hc, key: "", commune: g };
    this.tiles.set(site.code, tile);
    this.patchTile(tile, site);
    return g;
  }

  /** Write only what changed into the tile's DOM, and move the counters. */
  patchTile(tile, site) {
    const old = tile.site;
    const klass = wallClass(site, this.ended);
    if (tile.klass) {
      addCounts(this.counts, old, tile.klass, -1);
      addCounts(tile.commune.counts, old, tile.klass, -1);
    }
    addCounts(this.counts, site, klass, 1);
    addCounts(tile.commune.counts, site, klass, 1);
    tile.site = site;
    const el = tile.el;
    if (tile.klass !== klass) el.setAttribute("data-wall", klass);
    tile.klass = klass;
    if (old.status !== site.status) el.setAttribute("data-status", site.status || "never_joined");
    if (site.help_open > 0) el.setAttribute("data-help", String(site.help_open));
    else if (old.help_open > 0) el.removeAttribute("data-help");
    const audio = site.media_mode === "audio_only"; // the hall's own choice, not a fault
    if (audio !== (old.media_mode === "audio_only")) {
      if (audio) el.setAttribute("data-media", "audio_only");
      else el.removeAttribute("data-media");
    }
    if (old.name !== site.name || old.code !== site.code || audio !== (old.media_mode === "audio_only")) {
      tile.key = (site.name + " " + site.code + " " + (site.commune || "")).toLowerCase();
      setText(tile.name, shortName(site.name));
      // Small tiles show no text: the label says who it is, and the sound-only choice.
      el.setAttribute("aria-label", site.name + " (" + site.code + ")" +
        (audio ? " · " + t("site_media_audio_only") : ""));
    }
    if (old.path !== site.path) { // UDP is the normal way; TCP and TURN are fallbacks worth a mark
      if (site.path === "tcp" || site.path === "turn") el.setAttribute("data-path", site.path);
      else el.removeAttribute("data-path");
    }
    if (old.headcount !== site.headcount) {
      setText(tile.hc, typeof site.headcount === "number" ? t("mod_tile_people", { n: formatNumber(site.headcount, 0) }) : "");
    }
  }

  drawCommune(g) {
    const c = g.counts;
    setText(g.stats, t("mod_commune_stats", { playing: formatNumber(c.good + c.non_optimal + c.poor + c.lost, 0),
      connected: formatNumber(c.connected, 0), expected: formatNumber(c.total, 0), people: formatNumber(c.people, 0) }));
    // A bar of the tile classes present: readable even when the group is collapsed.
    if (!g.chips) g.chips = this.makeChips(g.bar);
    for (const k of WALL_CLASSES) this.setChip(g.chips[k], c[k], String(c[k]));
    this.setChip(g.chips.help, c.help, "⚑ " + c.help);
    const trouble = String(c.offline + c.poor + c.lost + c.no_media + c.help > 0);
    if (g.el.getAttribute("data-trouble") !== trouble) g.el.setAttribute("data-trouble", trouble);
  }

  makeChips(bar) {
    const chips = {};
    for (const k of WALL_CLASSES.concat(["help"])) {
      const chip = document.createElement("span");
      chip.className = k === "help" ? "chip chip-help" : "chip";
      if (k !== "help") chip.setAttribute("data-wall", k);
      chip.hidden = true;
      bar.appendChild(chip);
      chips[k] = chip;
    }
    return chips;
  }

  setChip(chip, n, text) {
    if (chip.hidden !== !n) chip.hidden = !n;
    if (n) setText(chip, text);
  }

  toggle(name, collapsed) {
    const g = this.communes.get(name);
    if (!g) return;
    g.collapsed = collapsed === undefined ? !g.collapsed : !!collapsed;
    g.box.hidden = g.collapsed;
    g.el.setAttribute("data-collapsed", String(g.collapsed));
    g.head.setAttribute("aria-expanded", String(!g.collapsed));
  }

  collapseAll(collapsed) {
    this.communes.forEach((g) => this.toggle(g.name, collapsed));
  }

  setFilter(filter) {
    this.filter = Object.assign({}, this.filter, filter);
    this.applyFilter();
  }

  matches(tile) {
    const f = this.filter;
    const site = tile.site;
    if (f.commune && tile.commune.name !== f.commune) return false;
    if (f.text && tile.key.indexOf(f.text) < 0) return false;
    if (f.help && !(site.help_open > 0)) return false;
    if (f.alert && !f.alert.has(site.code)) return false;
    if (f.quality && tile.klass !== f.quality) return false;
    if (!f.status) return true;
    if (f.status === "problem") {
      return tile.klass === "poor" || tile.klass === "lost" || tile.klass === "offline" ||
        tile.klass === "connecting" || tile.klass === "no_media" || site.help_open > 0;
    }
    if (f.status === "connected") return tile.klass !== "offline" && tile.klass !== "never_joined";
    return site.status === f.status;
  }

  filterTile(tile) {
    const show = this.matches(tile);
    if (tile.el.hidden === show) {
      tile.el.hidden = !show;
      this.shown += show ? 1 : -1;
    }
  }

  filterCommune(g) {
    let any = false;
    for (const code of g.codes) {
      if (!this.tiles.get(code).el.hidden) { any = true; break; }
    }
    if (g.el.hidden === any) g.el.hidden = !any;
  }

  applyFilter() {
    for (const tile of this.tiles.values()) this.filterTile(tile);
    this.communes.forEach((g) => this.filterCommune(g));
  }

  /** Tiles the filter shows (kept as tiles are shown and hidden). */
  shownCount() {
    return this.shown;
  }

  /** Mark the selected tile (one at a time). */
  select(code) {
    const before = this.tiles.get(this.selected);
    if (before) before.el.removeAttribute("aria-pressed");
    this.selected = code;
    const tile = this.tiles.get(code);
    if (tile) {
      tile.el.setAttribute("aria-pressed", "true");
      if (tile.commune.collapsed) this.toggle(tile.commune.name, false);
    }
  }
}

function tileTitle(site, lang) {
  const parts = [site.name + " (" + site.code + ")", site.commune || "", t("state_" + site.status)];
  if (site.quality) parts.push(t("quality_" + site.quality));
  if (site.media === false && site.status !== "never_joined" && site.status !== "offline") {
    parts.push(t("wall_no_media"));
  }
  if (typeof site.headcount === "number") parts.push(t("mod_tile_people", { n: formatNumber(site.headcount, 0) }));
  if (site.media_mode === "audio_only") parts.push(t("site_media_audio_only"));
  if (site.path) parts.push(t("path_" + site.path));
  if (site.since) parts.push(t("mod_since", { time: clock(site.since, lang) }));
  return parts.filter(Boolean).join(" · ");
}
