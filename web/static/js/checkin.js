// Participant check-in from a phone (3G, cheap Android): one small form, one POST.
import { $, errorText, loadStrings, readPageConfig, setText, t, wireLangSwitch } from "./i18n.js";

/** POST JSON with the page's token; the answer body, or an Error carrying status and code. */
async function postJson(url, token, body) {
  const resp = await fetch(url, {
    method: "POST",
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = {};
  try { data = await resp.json(); } catch (e) { data = {}; }
  if (resp.ok) return data;
  const info = (data && data.error) || {};
  const err = new Error(info.message || ("HTTP " + resp.status));
  err.status = resp.status;
  err.code = info.code || "";
  throw err;
}

function main() {
  loadStrings();
  wireLangSwitch();
  const page = readPageConfig();
  const url = page.checkin_api || page.checkin_api_url ||
    "/api/sessions/" + encodeURIComponent(page.sid) + "/checkins";
  $("form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    submit(page, url);
  });
}

async function submit(page, url) {
  const name = $("name").value.trim().slice(0, 100);
  const ident = $("ident").value.trim().slice(0, 40);
  const result = $("result");
  result.removeAttribute("data-kind");
  if (!name) {
    setText(result, t("checkin_name_missing"));
    $("name").focus();
    return;
  }
  const body = { name: name };
  if (ident) body.ident = ident;
  $("submit").disabled = true;
  setText(result, t("sending"));
  try {
    const answer = await postJson(url, page.token, body);
    const duplicate = answer && (answer.created === false || answer.duplicate === true);
    result.setAttribute("data-kind", duplicate ? "warn" : "ok");
    setText(result, t(duplicate ? "checkin_duplicate" : "checkin_ok", { name: name }));
  } catch (err) {
    result.setAttribute("data-kind", "error");
    if (err.code === "token_revoked") {
      showRevoked();
      return;
    }
    if (err.status === 409 || err.code === "duplicate" || err.code === "checkin_duplicate") {
      setText(result, t("checkin_duplicate", { name: name }));
    } else if (err.status === 429) {
      setText(result, t("error_rate_limited"));
    } else if (!err.status) {
      setText(result, t("error_offline"));
    } else {
      setText(result, errorText(err));
    }
  } finally {
    $("submit").disabled = false;
  }
}

/** The hall's link was replaced: the form cannot work any more; say what to do. */
function showRevoked() {
  $("form").hidden = true;
  $("revoked").hidden = false;
  setText($("revoked-title"), t("link_revoked_title"));
  setText($("revoked-detail"), t("link_revoked_detail"));
}

main();
