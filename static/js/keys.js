/* API keys page: create (secret shown once), revoke, rotate through /api/v1/keys/. */
(function () {
  "use strict";
  const R = window.Relay, el = R.el;
  const body = document.getElementById("keys-body");
  const form = document.getElementById("key-form");
  const status = document.getElementById("keys-status");
  const panel = document.getElementById("secret-panel");
  let keys = R.jsonData("keys-data") || [];

  function date(value) { return value ? new Date(value).toLocaleDateString() : "—"; }

  function keyState(key) {
    if (key.revoked_at) return ["revoked", "Revoked " + date(key.revoked_at)];
    if (key.expires_at && new Date(key.expires_at) <= new Date()) return ["expired", "Expired"];
    return ["active", "Active"];
  }

  function render() {
    body.replaceChildren();
    document.getElementById("no-keys").hidden = keys.length > 0;
    keys.forEach(function (key) {
      const [state, label] = keyState(key);
      const actions = el("td", { class: "actions" });
      if (state === "active") {
        actions.append(
          el("button", { type: "button", class: "small", "data-action": "rotate", "aria-label": "Rotate " + key.name, text: "Rotate", onclick: function () { rotate(key); } }),
          el("button", { type: "button", class: "small danger", "data-action": "revoke", "aria-label": "Revoke " + key.name, text: "Revoke", onclick: function () { revoke(key); } }));
      }
      body.append(el("tr", { "data-key-id": key.id, "data-state": state }, [
        el("td", { text: key.name }),
        el("td", {}, [el("code", { text: key.prefix.slice(0, 10) + "…", title: key.prefix })]),
        el("td", { class: "scopes", text: key.scopes.map(function (s) { return s.replace(/^use_|_agent$/g, ""); }).join(", ") || "—" }),
        el("td", { text: key.expires_at ? date(key.expires_at) : "never" }),
        el("td", { text: date(key.last_used_at) }),
        el("td", {}, [el("span", { class: "pill pill-" + state, text: label })]),
        actions,
      ]));
    });
  }

  function replace(key) {
    const index = keys.findIndex(function (k) { return k.id === key.id; });
    if (index >= 0) keys[index] = key; else keys.unshift(key);
    render();
  }

  function showSecret(issued) {
    document.getElementById("secret-name").textContent = issued.name;
    document.getElementById("secret-value").value = issued.key;
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
    document.getElementById("secret-value").select();
  }

  document.getElementById("secret-dismiss").addEventListener("click", function () {
    document.getElementById("secret-value").value = "";
    panel.hidden = true;
  });

  function clearErrors() {
    form.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (i) { i.removeAttribute("aria-invalid"); });
    document.getElementById("key-form-error").textContent = "";
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    clearErrors();
    const data = new FormData(form);
    const name = (data.get("name") || "").trim();
    if (!name) {
      form.querySelector('[data-field="name"]').textContent = "Give the key a name, so you can tell your keys apart.";
      document.getElementById("key-name").setAttribute("aria-invalid", "true");
      document.getElementById("key-name").focus();
      return;
    }
    const payload = { name: name, scopes: data.getAll("scopes"), allowed_agents: data.getAll("allowed_agents") };
    if (data.get("expires_days")) payload.expires_days = Number(data.get("expires_days"));
    if (data.get("requests_per_minute")) payload.requests_per_minute = Number(data.get("requests_per_minute"));
    try {
      const issued = await R.api("/api/v1/keys/", { method: "POST", json: payload });
      showSecret(issued);
      delete issued.key;
      replace(issued);
      form.reset();
      status.textContent = "Created " + issued.name + ".";
    } catch (e) {
      Object.entries(e.fields || {}).forEach(function ([field, messages]) {
        const slot = form.querySelector('[data-field="' + field + '"]');
        if (slot) slot.textContent = [].concat(messages).join(" ");
      });
      document.getElementById("key-form-error").textContent = e.message;
    }
  });

  async function revoke(key) {
    if (!window.confirm("Revoke " + key.name + "? Programs using it stop working at once.")) return;
    try {
      replace(await R.api("/api/v1/keys/" + key.id + "/revoke/", { method: "POST" }));
      // Keys minted through this one were revoked with it: show them as they are now.
      if (keys.some(function (k) { return k.parent === key.id; })) {
        keys = (await R.api("/api/v1/keys/?limit=500")).results;
        render();
      }
      status.textContent = "Revoked " + key.name + ".";
    } catch (e) { status.textContent = e.message; }
  }

  async function rotate(key) {
    if (!window.confirm("Rotate " + key.name + "? The current secret stops working at once.")) return;
    try {
      const issued = await R.api("/api/v1/keys/" + key.id + "/rotate/", { method: "POST" });
      showSecret(issued);
      delete issued.key;
      replace(issued);
      status.textContent = "Rotated " + key.name + ": update the programs that use it.";
    } catch (e) { status.textContent = e.message; }
  }

  render();
})();
