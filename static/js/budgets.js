/* Budgets page (admins): set a budget through POST /api/v1/costs/budget, with its messages. */
(function () {
  "use strict";
  const R = window.Relay, el = R.el;
  const form = document.getElementById("budget-form");
  if (!form) return;
  const budgets = R.jsonData("budgets-data") || [];
  const targets = R.jsonData("targets-data") || {};
  const scope = document.getElementById("budget-scope");
  const target = document.getElementById("budget-target");

  document.querySelectorAll(".bar > span[data-width]").forEach(function (bar) {
    bar.style.width = Math.min(100, Number(bar.dataset.width)) + "%";
  });

  function fillTargets(selected) {
    const options = targets[scope.value] || [];
    document.getElementById("target-field").hidden = scope.value === "organization";
    target.replaceChildren();
    if (!options.length && scope.value !== "organization") target.append(el("option", { value: "", text: "(none to choose from)" }));
    options.forEach(function (o) {
      target.append(el("option", { value: o.id, text: o.name, selected: String(o.id) === String(selected) }));
    });
  }
  scope.addEventListener("change", function () { fillTargets(); });

  function clearMessages() {
    form.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (i) { i.removeAttribute("aria-invalid"); });
    document.getElementById("budget-form-error").textContent = "";
    document.getElementById("budget-form-ok").textContent = "";
  }

  function thresholds(text) {
    const parts = text.split(/[\s,;]+/).filter(Boolean);
    const numbers = parts.map(Number);
    if (numbers.some(function (n) { return !Number.isInteger(n) || n < 1 || n > 100; })) return null;
    return numbers;
  }

  function fieldError(field, message) {
    const slot = form.querySelector('[data-field="' + field + '"]');
    if (slot) slot.textContent = message;
    const input = form.querySelector('[name="' + field + '"]');
    if (input) input.setAttribute("aria-invalid", "true");
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    clearMessages();
    const limit = document.getElementById("budget-limit").value.trim();
    const alertAt = thresholds(document.getElementById("budget-thresholds").value);
    let invalid = false;
    if (!limit) { fieldError("limit_usd", "Enter a limit in US dollars, e.g. 25.00."); invalid = true; }
    if (alertAt === null) { fieldError("alert_thresholds", "Thresholds are whole percentages from 1 to 100, e.g. 50, 80, 100."); invalid = true; }
    if (scope.value !== "organization" && !target.value) { fieldError("target", "Choose what this budget applies to."); invalid = true; }
    if (invalid) { form.querySelector("[aria-invalid]").focus(); return; }
    const payload = {
      scope: scope.value, period: document.getElementById("budget-period").value, limit_usd: limit,
      hard: document.getElementById("budget-hard").checked, alert_thresholds: alertAt,
    };
    if (scope.value !== "organization") payload.target = Number(target.value);
    try {
      const saved = await R.api("/api/v1/costs/budget", { method: "POST", json: payload });
      document.getElementById("budget-form-ok").textContent = "Saved the " + saved.period + " budget of " + saved.target_name + ": " + R.usd(saved.limit_usd) + ". Reloading…";
      setTimeout(function () { window.location.reload(); }, 600);
    } catch (e) {
      Object.entries(e.fields || {}).forEach(function ([field, messages]) { fieldError(field, [].concat(messages).join(" ")); });
      document.getElementById("budget-form-error").textContent = e.message;
    }
  });

  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-edit]");
    if (!button) return;
    const budget = budgets.find(function (b) { return String(b.id) === button.dataset.edit; });
    if (!budget) return;
    clearMessages();
    scope.value = budget.scope;
    fillTargets(budget.target);
    document.getElementById("budget-period").value = budget.period;
    document.getElementById("budget-limit").value = budget.limit_usd;
    document.getElementById("budget-hard").checked = budget.hard;
    document.getElementById("budget-thresholds").value = (budget.alert_thresholds || []).join(", ");
    document.getElementById("budget-form-heading").textContent = "Edit budget";
    document.getElementById("budget-limit").focus();
  });

  fillTargets();
})();
