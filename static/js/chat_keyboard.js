/* The chat without a mouse: a skip link to the message box, Escape stops a running answer, and the
   arrow keys move between conversations (Enter opens one: they are buttons). */
(function () {
  "use strict";
  const prompt = document.getElementById("prompt");
  const stop = document.getElementById("stop");
  const list = document.getElementById("conversation-list");
  if (!prompt || !list) return;

  const skip = document.getElementById("skip-to-prompt");
  if (skip) skip.addEventListener("click", function (event) {
    event.preventDefault();  // a fragment link only scrolls; the point is to type
    prompt.focus();
  });

  document.addEventListener("keydown", function (event) {
    // Escape already used (cancelling a rename, closing a menu) is not a Stop.
    if (event.key !== "Escape" || event.defaultPrevented || stop.hidden || stop.disabled) return;
    event.preventDefault();
    stop.click();
  });

  // Stop hides itself when the run ends: keep the keyboard in the message box, not on the page.
  stop.addEventListener("click", function () { prompt.focus(); });

  const MOVES = {
    ArrowDown: function (i) { return i + 1; }, ArrowUp: function (i) { return i - 1; },
    Home: function () { return 0; }, End: function (i, n) { return n - 1; },
  };
  list.addEventListener("keydown", function (event) {
    const move = MOVES[event.key], current = event.target.closest(".conversation");
    if (!move || !current || event.altKey || event.ctrlKey || event.metaKey) return;
    const buttons = [...list.querySelectorAll(".conversation")];
    const next = buttons[Math.max(0, Math.min(buttons.length - 1, move(buttons.indexOf(current), buttons.length)))];
    event.preventDefault();
    if (next) next.focus();
  });
})();
