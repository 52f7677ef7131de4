/* The chat's conversation list as a slide-out panel below 900px (static/css/layout-mobile.css).
   The "Conversations" button opens it over the chat; Escape, a tap outside, choosing a conversation or
   starting a new one closes it. Focus moves into the panel when it opens and back to the button when
   it closes, unless the chat already moved it somewhere useful (a new conversation focuses the prompt).
   Titles are truncated with an ellipsis on screen, so their full text is mirrored into title attributes. */
(function () {
  "use strict";
  const chat = document.getElementById("chat");
  const toggle = document.getElementById("side-toggle");
  const panel = document.getElementById("chat-side");
  if (!chat || !toggle || !panel) return;
  const narrow = window.matchMedia("(max-width: 899.98px)");
  const FOCUSABLE = "button:not([disabled]), input:not([disabled]), select, textarea, a[href], [tabindex]:not([tabindex='-1'])";

  function isOpen() { return chat.dataset.side === "open"; }

  function open() {
    chat.dataset.side = "open";
    toggle.setAttribute("aria-expanded", "true");
    // The panel becomes visible in this frame (visibility changes at once on opening), so it can take focus.
    const first = panel.querySelector(".conversation[aria-current='true']") || panel.querySelector(FOCUSABLE);
    if (first) first.focus();
  }

  function close() {
    if (!isOpen()) return;
    const active = document.activeElement;
    const focusWasInside = panel.contains(active) || active === document.body || active === null;
    delete chat.dataset.side;
    toggle.setAttribute("aria-expanded", "false");
    if (focusWasInside && narrow.matches) toggle.focus();
  }

  toggle.addEventListener("click", function () { if (isOpen()) close(); else open(); });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && isOpen() && !event.defaultPrevented) {
      // Escape inside the rename field cancels the rename (chat.js) and leaves the panel open.
      if (event.target.closest && event.target.closest(".c-rename-input")) return;
      close();
    }
  });

  // After chat.js has handled the same click (it listens on the list and the button themselves).
  document.addEventListener("click", function (event) {
    if (!isOpen()) return;
    const target = event.target;
    if (target.closest("#new-conversation") || target.closest("#conversation-list .conversation")) { close(); return; }
    if (!panel.contains(target) && !toggle.contains(target) && target.isConnected) close();
  });

  // Tabbing out of the open panel closes it: it would otherwise cover the chat the focus went to.
  panel.addEventListener("focusout", function (event) {
    const next = event.relatedTarget;
    if (isOpen() && next && !panel.contains(next) && next !== toggle) {
      delete chat.dataset.side;
      toggle.setAttribute("aria-expanded", "false");
    }
  });

  // Back on a wide screen the panel is the ordinary sidebar again.
  narrow.addEventListener("change", function () { if (!narrow.matches) close(); });

  /* Full titles for the ellipsised ones. */
  const heading = document.getElementById("conversation-title");
  const list = document.getElementById("conversation-list");

  function mirrorTitles() {
    if (heading && heading.title !== heading.textContent) heading.title = heading.textContent;
    if (!list) return;
    list.querySelectorAll(".c-title").forEach(function (span) {
      if (span.title !== span.textContent) span.title = span.textContent;
    });
  }
  mirrorTitles();
  const observer = new MutationObserver(mirrorTitles);
  if (heading) observer.observe(heading, { childList: true, characterData: true, subtree: true });
  if (list) observer.observe(list, { childList: true, subtree: true });
})();
