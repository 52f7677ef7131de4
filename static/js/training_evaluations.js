/* Training page, evaluations: sets (from a built version or a JSONL upload), runs with their progress,
   and the comparison per target as a table and charts (the vendored Chart.js, colours from relay.css). */
(function () {
  "use strict";
  const R = window.Relay, el = R.el;
  if (!document.getElementById("training")) return;
  if (R.training) start(); else document.addEventListener("relay:training-ready", start, { once: true });

  function start() {
    const T = R.training, API = T.api, POLL_MS = 800;
    const choices = R.jsonData("choices-data") || {};
    const setForm = document.getElementById("set-form"), runForm = document.getElementById("run-form");
    const charts = [];
    let sets = [], shown = null, timer = null;

    T.checkboxes(document.getElementById("run-targets"), "targets", choices.targets || []);
    (choices.agents || []).forEach(function (a) {
      document.getElementById("run-agent").append(el("option", { value: a.name, text: a.title, selected: a.name === "general" }));
    });

    /* ---- evaluation sets ---- */
    setForm.addEventListener("change", function (event) {
      if (event.target.name !== "source") return;
      const upload = event.target.value === "upload";
      document.getElementById("set-file-field").hidden = !upload;
      document.getElementById("set-version-field").hidden = upload;
    });

    async function loadVersions() {
      const select = document.getElementById("set-version");
      let rows = [];
      try { rows = T.results(await R.api(API + "versions/")); } catch (e) { return; }
      const usable = rows.filter(function (v) { return v.state === "done" && !v.withdrawn && v.rows; });
      select.replaceChildren();
      if (!usable.length) select.append(el("option", { value: "", text: "(no built version with rows yet)" }));
      usable.forEach(function (v) {
        select.append(el("option", { value: v.id, text: v.dataset_name + " · version " + v.number + " (" + v.rows + " rows)" }));
      });
    }
    document.addEventListener("relay:versions", loadVersions);

    setForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      T.clearMessages(setForm);
      const name = setForm.elements.name.value.trim();
      const upload = setForm.querySelector('input[name="source"]:checked').value === "upload";
      let request;
      if (upload) {
        const file = document.getElementById("set-file").files[0];
        if (!file) { setForm.querySelector('[data-field="file"]').textContent = "Choose a JSONL file."; return; }
        const body = new FormData();
        body.append("name", name);
        body.append("file", file);
        request = R.api(API + "evaluation-sets/upload/", { method: "POST", body: body });
      } else {
        const version = setForm.elements.dataset_version.value;
        request = R.api(API + "evaluation-sets/", { method: "POST", json: { name: name, dataset_version: version ? Number(version) : null } });
      }
      try {
        const created = await request;
        document.getElementById("set-form-ok").textContent = "Created “" + created.name + "” with " + created.items_count + " items.";
        setForm.elements.name.value = "";
        loadSets(created.id);
      } catch (e) { T.showErrors(setForm, e, "set-form-error"); }
    });

    async function loadSets(select) {
      try { sets = T.results(await R.api(API + "evaluation-sets/?limit=100")); } catch (e) { return; }
      const body = document.getElementById("set-body"), choose = document.getElementById("run-set");
      body.replaceChildren();
      choose.replaceChildren();
      if (!sets.length) {
        body.append(el("tr", {}, [el("td", { colspan: "5", class: "muted", text: "No evaluation sets yet." })]));
        choose.append(el("option", { value: "", text: "(create an evaluation set first)" }));
      }
      sets.forEach(function (s) {
        body.append(el("tr", {}, [
          el("td", { text: s.name }), el("td", { text: s.source === "upload" ? "upload" : "dataset version" }),
          el("td", { text: String(s.items_count) }), el("td", { text: String(s.references_count) }),
          el("td", {}, [el("button", { type: "button", class: "small danger", "data-delete-set": s.id, "aria-label": "Delete evaluation set " + s.name, text: "Delete" })]),
        ]));
        choose.append(el("option", { value: s.id, text: s.name, selected: s.id === select }));
      });
    }
    document.getElementById("set-body").addEventListener("click", async function (event) {
      const button = event.target.closest("[data-delete-set]");
      if (!button || !window.confirm("Delete this evaluation set and its evaluations?")) return;
      try {
        await R.api(API + "evaluation-sets/" + button.dataset.deleteSet + "/", { method: "DELETE" });
        loadSets();
        loadEvaluations();
      } catch (e) { document.getElementById("evaluation-error").textContent = e.message; }
    });

    /* ---- evaluations ---- */
    runForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      T.clearMessages(runForm);
      const targets = T.checked(runForm, "targets");
      if (!targets.length) { runForm.querySelector('[data-field="targets"]').textContent = "Choose at least one model to evaluate."; return; }
      const set = runForm.elements.evaluation_set.value;
      try {
        const started = await R.api(API + "evaluations/", { method: "POST", json: {
          evaluation_set: set ? Number(set) : null, targets: targets, agent: runForm.elements.agent.value,
          max_tokens: Number(runForm.elements.max_tokens.value || 512) } });
        await loadEvaluations();
        show(started.id);
      } catch (e) { T.showErrors(runForm, e, "run-form-error"); }
    });

    function setName(id) {
      const found = sets.find(function (s) { return s.id === id; });
      return found ? found.name : "#" + id;
    }
    function running(e) { return e.state === "queued" || e.state === "running"; }

    async function loadEvaluations() {
      let rows;
      try { rows = T.results(await R.api(API + "evaluations/?limit=50")); } catch (e) {
        document.getElementById("evaluation-error").textContent = e.message; return;
      }
      const body = document.getElementById("evaluation-body");
      body.replaceChildren();
      if (!rows.length) body.append(el("tr", {}, [el("td", { colspan: "5", class: "muted", text: "No evaluations yet." })]));
      rows.forEach(function (e) {
        body.append(el("tr", { "data-evaluation-id": e.id }, [
          el("td", { text: String(e.id) }), el("td", { text: setName(e.evaluation_set) }),
          el("td", { class: "small", text: e.targets.join(", ") }),
          el("td", { text: e.state.replace(/_/g, " ") }),
          el("td", {}, [el("button", { type: "button", class: "small", "data-show": e.id, "aria-label": "Show evaluation " + e.id, text: "Show" })]),
        ]));
      });
    }
    document.getElementById("evaluation-body").addEventListener("click", function (event) {
      const button = event.target.closest("[data-show]");
      if (button) show(Number(button.dataset.show));
    });

    async function show(id) {
      shown = id;
      clearTimeout(timer);
      document.getElementById("comparison-card").hidden = false;
      document.getElementById("comparison-heading").textContent = "Evaluation " + id;
      let evaluation;
      try { evaluation = await R.api(API + "evaluations/" + id + "/"); } catch (e) {
        document.getElementById("evaluation-error").textContent = e.message; return;
      }
      if (shown !== id) return;
      const box = document.getElementById("evaluation-progress");
      box.dataset.state = evaluation.state;
      box.replaceChildren(el("p", { class: "small muted", text: "State: " + evaluation.state.replace(/_/g, " ") +
        (evaluation.api_key ? " · charged to key " + evaluation.api_key : "") }));
      if (running(evaluation)) {
        box.append(T.progress("Evaluation " + id, evaluation.processed, evaluation.total, evaluation.progress));
        timer = setTimeout(function () { show(id); }, POLL_MS);
      } else {
        loadEvaluations();
        if (evaluation.state === "failed" && evaluation.message) box.append(el("p", { class: "error", text: evaluation.message }));
      }
      let report;
      try { report = await R.api(API + "evaluations/" + id + "/comparison/"); } catch (e) { return; }
      if (shown !== id) return;
      const budget = document.getElementById("evaluation-budget");
      budget.hidden = !report.stopped_by_budget;
      budget.textContent = report.stopped_by_budget ? "Stopped by a budget after " + report.finished + " of " + report.total +
        " runs; the figures below cover the runs it finished." + (report.message ? " " + report.message : "") : "";
      table(report.targets);
      draw(report.targets);
    }

    function share(value) { return value === null || value === undefined ? "—" : (value * 100).toFixed(1) + "%"; }
    function score(value) { return value === null || value === undefined ? "—" : value.toFixed(2); }
    function ms(value) { return value === null || value === undefined ? "—" : value + " ms"; }
    function money(value) { return value === null || value === undefined ? "—" : R.usd(value); }

    function table(targets) {
      const body = document.getElementById("comparison-body");
      body.replaceChildren();
      targets.forEach(function (t) {
        body.append(el("tr", { "data-target": t.target }, [
          el("th", { scope: "row", text: t.target }),
          el("td", { text: t.finished + " / " + t.items }),
          el("td", { text: share(t.agreement.exact_match) }), el("td", { text: share(t.agreement.f1) }),
          el("td", { text: score(t.quality.mean) }), el("td", { text: score(t.quality.p50) }),
          el("td", { text: ms(t.latency_ms.p50) }), el("td", { text: ms(t.latency_ms.p95) }),
          el("td", { text: money(t.cost.total) }), el("td", { text: money(t.cost.per_item) }),
        ]));
      });
    }

    /* ---- charts (static/js/charts.js paints them in the theme's colours) ---- */
    const palette = ["#2563eb", "#16a34a", "#f59e0b", "#7c3aed"];
    function specs(targets) {
      const labels = targets.map(function (t) { return t.target; });
      const value = function (v) { return v === null || v === undefined ? null : v; };
      return {
        quality: { type: "bar", data: { labels: labels, datasets: [
          { label: "Quality mean", data: targets.map(function (t) { return value(t.quality.mean); }), backgroundColor: palette[0], borderRadius: 4 },
          { label: "Exact match", data: targets.map(function (t) { return value(t.agreement.exact_match); }), backgroundColor: palette[1], borderRadius: 4 },
          { label: "F1", data: targets.map(function (t) { return value(t.agreement.f1); }), backgroundColor: palette[2], borderRadius: 4 },
        ] }, options: { scales: { y: { beginAtZero: true, max: 1 } } } },
        cost: { type: "bar", data: { labels: labels, datasets: [
          { label: "Cost per item (USD)", data: targets.map(function (t) { return t.cost.per_item === null ? null : Number(t.cost.per_item); }), backgroundColor: palette[3], borderRadius: 4 },
        ] }, options: { plugins: { legend: { display: false }, tooltip: { callbacks: { label: function (c) { return R.usd(c.raw); } } } },
          scales: { y: { beginAtZero: true, ticks: { callback: R.usd } } } } },
      };
    }
    function draw(targets) {
      if (!window.Chart) return;
      charts.splice(0).forEach(function (chart) { chart.destroy(); });
      const made = specs(targets);
      document.querySelectorAll("#comparison-charts canvas[data-chart]").forEach(function (canvas) {
        const spec = made[canvas.dataset.chart];
        spec.options = Object.assign({ responsive: true, maintainAspectRatio: false, plugins: { legend: {} } }, spec.options);
        spec.options.plugins = Object.assign({ legend: {} }, spec.options.plugins);
        charts.push(window.Relay.charts.draw(canvas, spec));
        canvas.dataset.drawn = "true";
      });
    }

    loadVersions();
    loadSets().then(loadEvaluations);
  }
})();
