/* Light, dark or the system's choice. Loaded without defer in <head> so data-theme is on <html> before
   the first paint (CSP forbids an inline script). The key and values are the Django admin's own
   (admin/js/theme.js: localStorage "theme" = "auto" | "light" | "dark"), so the console and the
   admin always agree. The stylesheets read html[data-theme] and, for "auto", prefers-color-scheme. */
(function () {
  "use strict";
  const MODES = ["auto", "light", "dark"];
  const LABELS = { auto: "system", light: "light", dark: "dark" };
  const ICONS = { auto: "i-sun-moon", light: "i-sun", dark: "i-moon" };
  const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

  function stored() {
    let mode = null;
    try { mode = window.localStorage.getItem("theme"); } catch (e) { /* storage blocked: follow the system */ }
    return MODES.includes(mode) ? mode : "auto";
  }

  function effective(mode) {
    return mode === "auto" ? (systemDark.matches ? "dark" : "light") : mode;
  }

  // A vendored dark stylesheet (highlight.js's github-dark) cannot read data-theme: its media does.
  function sheets(mode) {
    const media = { auto: "(prefers-color-scheme: dark)", light: "not all", dark: "all" }[mode];
    document.querySelectorAll('link[data-theme-sheet="dark"]').forEach(function (link) { link.media = media; });
  }

  function apply(mode) {
    document.documentElement.dataset.theme = mode;
    sheets(mode);
    document.querySelectorAll("[data-theme-toggle]").forEach(label);
    // Pages with canvases (Chart.js) repaint their colours on this event.
    document.dispatchEvent(new CustomEvent("relay:theme", { detail: { mode: mode, theme: effective(mode) } }));
  }

  // The admin's order: from "auto" to the opposite of what the system shows, then the other, then back.
  function next(mode) {
    const order = systemDark.matches ? ["auto", "light", "dark"] : ["auto", "dark", "light"];
    return order[(order.indexOf(mode) + 1) % order.length];
  }

  function label(button) {
    const mode = stored();
    const icon = button.querySelector(".i");
    if (icon) icon.className = "i " + ICONS[mode];
    button.setAttribute("aria-label", "Colour theme: " + LABELS[mode] + " (switch to " + LABELS[next(mode)] + ")");
    button.title = "Colour theme: " + LABELS[mode];
    button.dataset.mode = mode;
  }

  function choose(mode) {
    try { window.localStorage.setItem("theme", mode); } catch (e) { /* not remembered, still applied */ }
    apply(mode);
  }

  document.documentElement.dataset.theme = stored();
  systemDark.addEventListener("change", function () { apply(stored()); });
  // Another tab (or the admin) changed it: follow.
  window.addEventListener("storage", function (event) { if (event.key === "theme") apply(stored()); });
  document.addEventListener("DOMContentLoaded", function () {
    sheets(stored());
    document.querySelectorAll("[data-theme-toggle]").forEach(function (button) {
      label(button);
      button.addEventListener("click", function () { choose(next(stored())); });
    });
  });
  window.RelayTheme = { current: function () { return effective(stored()); }, choose: choose };
})();
