/* Chat header: keep the open conversation out of training builds, or let it back in
   (/api/v1/training/conversations/{id}/exclusion; the chat lists only the user's own conversations). */
(function () {
  "use strict";
  const R = window.Relay;
  const button = document.getElementById("training-exclusion");
  if (!button) return;
  const state = R.el("span", { class: "small muted training-state", id: "training-state", role: "status" });
  button.after(state);
  let current = null, excluded = false;

  function show() {
    button.hidden = !current;
    state.hidden = !current;
    button.textContent = excluded ? "Include in training" : "Exclude from training";
    button.setAttribute("aria-pressed", String(excluded));
    state.textContent = current ? (excluded ? "Excluded from training" : "") : "";
    button.title = excluded ? "Let this conversation back into future training datasets"
      : "Keep this conversation out of every future training dataset";
  }
  function path() { return "/api/v1/training/conversations/" + current + "/exclusion"; }

  document.addEventListener("relay:conversation", async function (event) {
    const id = event.detail.id || null;
    if (id === current) return;
    current = id;
    excluded = false;
    show();
    if (!id) return;
    try {
      const found = await R.api(path());
      if (current === id) { excluded = found.excluded; show(); }
    } catch (e) { if (current === id) { current = null; show(); } }
  });

  button.addEventListener("click", async function () {
    if (!current) return;
    button.disabled = true;
    try {
      const found = await R.api(path(), { method: excluded ? "DELETE" : "POST" });
      excluded = found.excluded;
      show();
    } catch (e) {
      state.hidden = false;
      state.textContent = e.message;
    } finally { button.disabled = false; }
  });
  show();
})();
