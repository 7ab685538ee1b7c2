// The landing page: only the language switch (no inline script: the page policy forbids it).
import { wireLangSwitch } from "./i18n.js";

wireLangSwitch();
window.lopso = { ready: true }; // tests wait for the page's script
