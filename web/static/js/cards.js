// Hall cards: print them (the browser's own print, A4, one commune per sheet), and copy a
// commune's text block of short links to paste into its Zalo group.
import { $, errorText, loadStrings, t, wireLangSwitch } from "./i18n.js";

/** Copy `text`; the clipboard API needs a secure context, else the selected textarea is copied. */
async function copyText(area) {
  try {
    await navigator.clipboard.writeText(area.value);
  } catch (err) {
    area.select();
    if (!document.execCommand("copy")) throw err;
  }
}

function main() {
  loadStrings();
  wireLangSwitch();
  if ($("print-cards")) $("print-cards").addEventListener("click", function () { window.print(); });
  const buttons = document.querySelectorAll(".copy-links");
  for (let i = 0; i < buttons.length; i++) {
    const button = buttons[i];
    button.addEventListener("click", async function () {
      const result = button.parentNode.querySelector(".copy-result");
      try {
        await copyText($(button.getAttribute("data-target")));
        result.textContent = t("cards_copied");
      } catch (err) {
        result.textContent = errorText(err);
      }
    });
  }
  window.lopso = { ready: true };
}

main();
