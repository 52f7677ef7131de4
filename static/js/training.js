/* Training page: consent, datasets and their built versions, through /api/v1/training/.
   Evaluations are static/js/training_evaluations.js; both share Relay.training. */
(function () {
  "use strict";
  const R = window.Relay, el = R.el;
  const root = document.getElementById("training");
  if (!root) return;
  const API = "/api/v1/training/";
  const POLL_MS = 800;
  const choices = R.jsonData("choices-data") || {};
  const isAdmin = root.dataset.isAdmin === "1", canExport = root.dataset.canExport === "1";
  let consent = R.jsonData("consent-data") || { enabled: false };
  let selectedDataset = null;
  const polls = {};

  function results(body) { return Array.isArray(body) ? body : (body && body.results) || []; }
  function when(text) { return text ? new Date(text).toLocaleString() : ""; }
  function count(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  /* ---- consent ---- */
  function showConsent() {
    const state = document.getElementById("consent-state");
    state.textContent = consent.enabled ? "On" : "Off";
    state.className = "pill " + (consent.enabled ? "pill-on" : "pill-off");
    document.getElementById("consent-text").textContent = consent.enabled
      ? "Your organization's conversations may be used to build training datasets: answers, quality scores, feedback and tool calls, with personal data and secrets redacted."
      : "Your organization's conversations are not used for training. Nothing can be built until an organization admin turns this on.";
    document.getElementById("consent-changed").textContent = consent.changed_at
      ? "Last changed " + when(consent.changed_at) + (consent.changed_by ? " by " + consent.changed_by : "") + "." : "";
    const toggle = document.getElementById("consent-toggle");
    if (toggle) toggle.textContent = consent.enabled ? "Turn training off" : "Turn training on";
  }
  const toggle = document.getElementById("consent-toggle");
  if (toggle && isAdmin) {
    toggle.addEventListener("click", async function () {
      document.getElementById("consent-error").textContent = "";
      toggle.disabled = true;
      try {
        consent = await R.api(API + "consent", { method: "PUT", json: { enabled: !consent.enabled } });
        showConsent();
        if (selectedDataset) showVersions(selectedDataset);  // downloads open and close with consent
      } catch (e) {
        document.getElementById("consent-error").textContent = e.message;
      } finally { toggle.disabled = false; }
    });
  }

  /* ---- form helpers (shared with the evaluations script) ---- */
  function clearMessages(form) {
    form.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (i) { i.removeAttribute("aria-invalid"); });
    form.querySelectorAll(".error[role=alert], .ok").forEach(function (p) { p.textContent = ""; });
  }
  function showErrors(form, error, generalId) {
    Object.entries(error.fields || {}).forEach(function ([field, messages]) {
      const slot = form.querySelector('[data-field="' + field + '"]');
      const text = [].concat(messages).map(function (m) { return typeof m === "string" ? m : JSON.stringify(m); }).join(" ");
      if (slot) slot.textContent = text;
      const input = form.querySelector('[name="' + field + '"]');
      if (input) input.setAttribute("aria-invalid", "true");
    });
    document.getElementById(generalId).textContent = error.message;
  }
  function checkboxes(container, name, items) {
    items.forEach(function (item) {
      const value = typeof item === "string" ? item : item.name;
      const label = typeof item === "string" ? item : (item.title || item.name);
      container.append(el("label", { class: "check" }, [el("input", { type: "checkbox", name: name, value: value }), " ", el("span", { text: label })]));
    });
  }
  function checked(form, name) {
    return [...form.querySelectorAll('input[name="' + name + '"]:checked')].map(function (i) { return i.value; });
  }
  function progress(label, processed, total, fraction) {
    const bar = el("progress", { max: "100", value: String(Math.round((fraction || 0) * 100)), "aria-label": label });
    const text = el("span", { class: "small", text: total ? processed + " / " + total : "waiting to start" });
    return el("div", { class: "progress-line" }, [bar, " ", text]);
  }

  /* ---- datasets ---- */
  const form = document.getElementById("dataset-form");
  checkboxes(document.getElementById("dataset-agents"), "agents", choices.agents || []);
  checkboxes(document.getElementById("dataset-models"), "models", choices.models || []);
  checkboxes(document.getElementById("dataset-statuses"), "statuses", choices.statuses || []);
  (choices.users || []).forEach(function (u) { document.getElementById("dataset-users").append(el("option", { value: u.id, text: u.name })); });
  (choices.teams || []).forEach(function (t) { document.getElementById("dataset-teams").append(el("option", { value: t.id, text: t.name })); });
  (choices.feedback || []).forEach(function (f) { document.getElementById("dataset-feedback").append(el("option", { value: f, text: f })); });

  function selectedIds(select) { return [...select.selectedOptions].map(function (o) { return Number(o.value); }); }
  function isoOrNull(value) { return value ? new Date(value).toISOString() : null; }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    clearMessages(form);
    const name = form.elements.name.value.trim();
    if (!name) {
      form.querySelector('[data-field="name"]').textContent = "Give the dataset a name.";
      form.elements.name.setAttribute("aria-invalid", "true");
      form.elements.name.focus();
      return;
    }
    const payload = {
      name: name, description: form.elements.description.value.trim(),
      agents: checked(form, "agents"), models: checked(form, "models"), statuses: checked(form, "statuses"),
      users: selectedIds(form.elements.users), teams: selectedIds(form.elements.teams),
      start: isoOrNull(form.elements.start.value), end: isoOrNull(form.elements.end.value),
      min_quality: form.elements.min_quality.value === "" ? null : Number(form.elements.min_quality.value),
      feedback: form.elements.feedback.value,
      include_cached: form.elements.include_cached.checked, include_failed: form.elements.include_failed.checked,
      include_evaluation: form.elements.include_evaluation.checked,
      validation_percent: Number(form.elements.validation_percent.value || 0),
    };
    try {
      const created = await R.api(API + "datasets/", { method: "POST", json: payload });
      document.getElementById("dataset-form-ok").textContent = "Created “" + created.name + "”. Build it to get a version.";
      form.reset();
      loadDatasets();
    } catch (e) { showErrors(form, e, "dataset-form-error"); }
  });

  function summary(d) {
    const parts = [];
    if (d.agents.length) parts.push("agents: " + d.agents.join(", "));
    if (d.models.length) parts.push("models: " + d.models.join(", "));
    if (d.users.length) parts.push(count(d.users.length, "user"));
    if (d.teams.length) parts.push(count(d.teams.length, "team"));
    if (d.start || d.end) parts.push((d.start ? when(d.start) : "…") + " – " + (d.end ? when(d.end) : "…"));
    if (d.min_quality !== null) parts.push("quality ≥ " + d.min_quality);
    if (d.feedback !== "any") parts.push("feedback: " + d.feedback);
    if (d.statuses.length) parts.push("statuses: " + d.statuses.join(", "));
    ["cached", "failed", "evaluation"].forEach(function (k) { if (d["include_" + k]) parts.push("with " + k); });
    return parts.length ? parts.join("; ") : "everything";
  }

  async function loadDatasets() {
    const body = document.getElementById("dataset-body");
    let rows;
    try { rows = results(await R.api(API + "datasets/?limit=100")); } catch (e) {
      document.getElementById("dataset-error").textContent = e.message; return;
    }
    body.replaceChildren();
    if (!rows.length) body.append(el("tr", {}, [el("td", { colspan: "4", class: "muted", text: "No datasets yet." })]));
    rows.forEach(function (d) {
      body.append(el("tr", { "data-dataset-id": d.id }, [
        el("td", {}, [el("strong", { text: d.name }), d.description ? el("div", { class: "small muted", text: d.description }) : null]),
        el("td", { class: "small", text: summary(d) }),
        el("td", { text: String(d.versions) }),
        el("td", {}, [el("div", { class: "row-actions" }, [
          el("button", { type: "button", class: "small primary", "data-build": d.id, "aria-label": "Build " + d.name, text: "Build" }),
          el("button", { type: "button", class: "small", "data-versions": d.id, "aria-label": "Versions of " + d.name, text: "Versions" }),
          el("button", { type: "button", class: "small danger", "data-delete": d.id, "aria-label": "Delete " + d.name, text: "Delete" }),
        ])]),
      ]));
    });
  }

  root.addEventListener("click", async function (event) {
    const build = event.target.closest("[data-build]"), list = event.target.closest("[data-versions]");
    const remove = event.target.closest("[data-delete]");
    const error = document.getElementById("dataset-error");
    if (build) {
      error.textContent = "";
      build.disabled = true;
      try {
        await R.api(API + "datasets/" + build.dataset.build + "/build/", { method: "POST" });
        await showVersions(build.dataset.build);
        loadDatasets();
      } catch (e) {
        error.textContent = e.code === "training_consent_required" ? "Training consent is off: " + e.message : e.message;
      } finally { build.disabled = false; }
    } else if (list) {
      showVersions(list.dataset.versions);
    } else if (remove) {
      const row = remove.closest("tr");
      if (!window.confirm("Delete this dataset with all its versions and files?")) return;
      try {
        await R.api(API + "datasets/" + remove.dataset.delete + "/", { method: "DELETE" });
        if (String(selectedDataset) === remove.dataset.delete) document.getElementById("version-card").hidden = true;
        row.remove();
        loadDatasets();
      } catch (e) { error.textContent = e.message; }
    }
  });

  /* ---- versions ---- */
  function versionNode(v) {
    const node = el("li", { class: "version", id: "version-" + v.id, "data-state": v.state });
    const head = el("div", { class: "version-head" }, [
      el("strong", { text: "Version " + v.number }),
      el("span", { class: "pill " + (v.withdrawn ? "pill-warn" : v.state === "done" ? "pill-on" : "pill-off"),
        text: v.withdrawn ? "withdrawn" : v.state }),
      el("span", { class: "small muted", text: when(v.created_at) }),
    ]);
    node.append(head);
    if (v.state === "queued" || v.state === "running") {
      node.append(progress("Build of version " + v.number, v.processed, v.total, v.progress));
      return node;
    }
    if (v.message) node.append(el("p", { class: v.state === "failed" ? "error" : "muted", text: v.message }));
    if (v.state !== "done") return node;
    if (v.withdrawn) node.append(el("p", { class: "banner warn", text: "Withdrawn " + when(v.withdrawn_at) + ": " + (v.withdrawn_reason || "a conversation in it was deleted") + ". It can no longer be downloaded." }));
    const redactions = Object.entries(v.redactions || {}).filter(function ([, n]) { return n; })
      .map(function ([kind, n]) { return kind.replace(/_/g, " ") + " " + n; }).join(", ") || "none";
    const facts = [
      ["Rows", v.rows + " (train " + v.train_rows + ", validation " + v.validation_rows + ")"],
      ["Duplicates removed", v.exact_duplicates + " exact, " + v.near_duplicates + " near"],
      ["Redactions", redactions],
      ["Content SHA-256", v.content_sha256 || "—"],
    ];
    node.append(el("dl", {}, facts.flatMap(function ([term, value]) {
      return [el("dt", { text: term }), el("dd", { class: term.startsWith("Content") ? "hash" : null, text: value, "data-fact": term })];
    })));
    if (canExport && v.download_formats.length && v.rows) {
      node.append(el("div", { class: "downloads" }, v.download_formats.map(function (fmt) {
        return el("a", { href: API + "versions/" + v.id + "/download/?format=" + fmt, download: "", text: "Download " + fmt + " JSONL" });
      })));
    } else if (!canExport && v.rows && !v.withdrawn) {
      node.append(el("p", { class: "small muted", text: "Downloads need the export_data permission." }));
    } else if (v.rows && !v.withdrawn) {
      node.append(el("p", { class: "small muted", "data-closed": "consent", text: "Downloads are closed while training consent is off; the version is kept." }));
    }
    return node;
  }

  function poll(id) {
    if (polls[id]) return;
    polls[id] = setTimeout(async function tick() {
      let v;
      try { v = await R.api(API + "versions/" + id + "/"); } catch (e) { delete polls[id]; return; }
      const old = document.getElementById("version-" + id);
      if (old) old.replaceWith(versionNode(v));
      if (v.state === "queued" || v.state === "running") polls[id] = setTimeout(tick, POLL_MS);
      else { delete polls[id]; loadDatasets(); document.dispatchEvent(new CustomEvent("relay:versions")); }
    }, POLL_MS);
  }

  async function showVersions(datasetId) {
    selectedDataset = datasetId;
    const card = document.getElementById("version-card"), list = document.getElementById("version-list");
    let rows;
    try { rows = results(await R.api(API + "versions/?dataset=" + datasetId)); } catch (e) {
      document.getElementById("dataset-error").textContent = e.message; return;
    }
    const name = rows.length ? rows[0].dataset_name : "";
    document.getElementById("version-heading").textContent = "Versions" + (name ? " of " + name : "");
    list.replaceChildren();
    if (!rows.length) list.append(el("li", { class: "muted", text: "Not built yet: press Build." }));
    rows.sort(function (a, b) { return b.number - a.number; }).forEach(function (v) {
      list.append(versionNode(v));
      if (v.state === "queued" || v.state === "running") poll(v.id);
    });
    card.hidden = false;
  }

  showConsent();
  loadDatasets();
  R.training = { api: API, results: results, clearMessages: clearMessages, showErrors: showErrors,
    checkboxes: checkboxes, checked: checked, progress: progress, when: when };
  document.dispatchEvent(new CustomEvent("relay:training-ready"));
})();
