// CSV files the organisers open in a spreadsheet. No DOM code.

/** Starts of a cell that Excel or LibreOffice would run as a formula (CSV injection). */
const FORMULA_STARTS = ["=", "+", "-", "@", "\t", "\r"];

/**
 * The text of a cell; one a spreadsheet would run as a formula gets a leading apostrophe
 * (the same rule as the server's exports, server/exports.py `_csv_text`).
 * @param {unknown} value
 * @returns {string}
 */
export function csvText(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return FORMULA_STARTS.indexOf(text.charAt(0)) >= 0 ? "'" + text : text;
}

/**
 * Rows as CSV text for Excel: UTF-8 BOM, every cell quoted and formula-escaped, CRLF lines.
 * @param {unknown[][]} rows
 * @returns {string}
 */
export function csvDocument(rows) {
  const cell = function (v) { return '"' + csvText(v).replace(/"/g, '""') + '"'; };
  return "\ufeff" + rows.map(function (r) { return r.map(cell).join(","); }).join("\r\n") + "\r\n";
}
