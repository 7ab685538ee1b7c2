// Strings and small page helpers shared by every page script.
// The server renders the string catalogue of the page's language into #i18n (the same
// web/static/i18n/<lang>.json it uses for server-rendered text) and the page's config into
// #page-config, so no page needs an extra request on a slow link.

/** @type {Record<string, string>} */
let strings = {};

/** Load the catalogue rendered into the page (call once at start). */
export function loadStrings() {
  const el = document.getElementById("i18n");
  try {
    strings = el ? JSON.parse(el.textContent || "{}") : {};
  } catch (e) {
    strings = {};
  }
  return strings;
}

/**
 * Translate `key`, replacing {name} placeholders from `vars`. A missing key shows itself,
 * so a gap in a catalogue is visible rather than blank.
 * @param {string} key @param {Record<string, any>} [vars] @returns {string}
 */
export function t(key, vars) {
  let text = Object.prototype.hasOwnProperty.call(strings, key) ? strings[key] : key;
  if (vars) {
    text = text.replace(/\{(\w+)\}/g, function (m, name) {
      return Object.prototype.hasOwnProperty.call(vars, name) ? String(vars[name]) : m;
    });
  }
  return text;
}

/** @returns {any} the page config the server rendered into #page-config */
export function readPageConfig() {
  const el = document.getElementById("page-config");
  try {
    return el ? JSON.parse(el.textContent || "{}") : {};
  } catch (e) {
    return {};
  }
}

/** Point every [data-lang-switch] link at this page in that language, keeping the token. */
export function wireLangSwitch() {
  const links = document.querySelectorAll("[data-lang-switch]");
  for (let i = 0; i < links.length; i++) {
    const a = links[i];
    const url = new URL(location.href);
    url.searchParams.set("lang", a.getAttribute("data-lang-switch"));
    a.setAttribute("href", url.pathname + url.search);
  }
}

/** @param {string} id @returns {any} */
export function $(id) {
  return document.getElementById(id);
}

/** Set an element's text only when it changed (cheap on big pages). */
export function setText(el, text) {
  const s = String(text);
  if (el && el.textContent !== s) el.textContent = s;
}

/** Format an ISO / epoch time as HH:MM in Asia/Ho_Chi_Minh. */
export function clock(value, lang) {
  if (value === null || value === undefined || value === "") return "";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (isNaN(d.getTime())) return "";
  try {
    return d.toLocaleTimeString(lang === "en" ? "en-GB" : "vi-VN",
      { hour: "2-digit", minute: "2-digit", timeZone: "Asia/Ho_Chi_Minh" });
  } catch (e) {
    return d.toISOString().slice(11, 16);
  }
}

/** The page's locale for numbers and dates: its <html lang> (the page's language). */
function pageLocale() {
  return document.documentElement.lang === "en" ? "en-GB" : "vi-VN";
}

/** @type {Record<string, Intl.NumberFormat>} */
const numberFormats = {};

function numberFormat(style, digits) {
  const key = pageLocale() + " " + style + " " + digits;
  if (!numberFormats[key]) {
    numberFormats[key] = new Intl.NumberFormat(pageLocale(), { style: style, maximumFractionDigits: digits });
  }
  return numberFormats[key];
}

/**
 * A number as the page's language writes it ("0,9", "1.234" in Vietnamese), at most `digits`
 * decimals (default 1); "–" when there is none.
 * @param {any} value @param {number} [digits] @returns {string}
 */
export function formatNumber(value, digits) {
  if (typeof value !== "number" || !isFinite(value)) return "–";
  return numberFormat("decimal", digits === undefined ? 1 : digits).format(value);
}

/**
 * A percentage given as 0–100, as the page's language writes it ("61,6%"); "–" when none.
 * @param {any} value @returns {string}
 */
export function formatPercent(value) {
  if (typeof value !== "number" || !isFinite(value)) return "–";
  return numberFormat("percent", 1).format(value / 100);
}

/** A time with its date in Asia/Ho_Chi_Minh: "08:00 ngày 03/12/2026" / "08:00, 03/12/2026". */
export function dateTime(value, lang) {
  const time = clock(value, lang);
  if (!time) return "";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  let date;
  try {
    date = d.toLocaleDateString(lang === "en" ? "en-GB" : "vi-VN",
      { day: "2-digit", month: "2-digit", year: "numeric", timeZone: "Asia/Ho_Chi_Minh" });
  } catch (e) {
    date = d.toISOString().slice(0, 10);
  }
  return t("date_time", { time: time, date: date });
}

/**
 * An error from the server or the network, in the page's language: the catalogue's sentence for
 * its code; else a generic one (the server's English message only on an English page).
 * @param {any} err @returns {string}
 */
export function errorText(err) {
  const code = err && err.code ? String(err.code) : "";
  if (code && Object.prototype.hasOwnProperty.call(strings, "error_" + code)) return strings["error_" + code];
  if (document.documentElement.lang === "en") {
    return t("error_generic", { message: (err && err.message) || String(err) });
  }
  return code ? t("error_with_code", { code: code }) : t("error_generic_title");
}

/** Show a short notice in #toast for a few seconds. */
export function toast(text, ms) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = text;
  el.hidden = false;
  clearTimeout(Number(el.getAttribute("data-timer") || 0));
  const timer = setTimeout(function () { el.hidden = true; }, ms || 4000);
  el.setAttribute("data-timer", String(timer));
}
