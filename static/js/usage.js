/* Usage page: charts from the figures the page carries (json_script "usage-data"). */
(function () {
  "use strict";
  const data = window.Relay.jsonData("usage-data");
  const select = document.querySelector("[data-autosubmit]");
  if (select) select.addEventListener("change", function () { select.form.submit(); });
  document.querySelectorAll(".bar > span[data-width]").forEach(function (bar) {
    bar.style.width = Math.min(100, Number(bar.dataset.width)) + "%";
  });
  if (!data || !window.Chart) return;
  const palette = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const money = window.Relay.usd;  /* the one display rule (static/js/money.js) */
  const specs = {
    daily: function (f) {
      return { type: "bar", data: { labels: f.daily.map(function (d) { return d.date; }),
        datasets: [{ label: "Cost (USD)", data: f.daily.map(function (d) { return Number(d.cost); }), backgroundColor: palette[0], borderRadius: 4 }] },
        options: { plugins: { legend: { display: false }, tooltip: { callbacks: { label: function (c) { return money(c.raw); } } } },
          scales: { y: { beginAtZero: true, ticks: { callback: money } } } } };
    },
    by_model: function (f) { return pie(f.by_model, "model"); },
    by_agent: function (f) {
      return { type: "bar", data: { labels: f.by_agent.map(function (r) { return r.agent; }),
        datasets: [{ label: "Cost (USD)", data: f.by_agent.map(function (r) { return Number(r.cost); }), backgroundColor: palette.slice(1), borderRadius: 4 }] },
        options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { callback: money } } } } };
    },
    by_tool: function (f) {
      return { type: "bar", data: { labels: f.by_tool.map(function (r) { return r.tool; }),
        datasets: [{ label: "Calls", data: f.by_tool.map(function (r) { return r.calls; }), backgroundColor: palette[4], borderRadius: 4 }] },
        options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } } };
    },
  };
  function pie(rows, field) {
    return { type: "doughnut", data: { labels: rows.map(function (r) { return r[field]; }),
      datasets: [{ data: rows.map(function (r) { return Number(r.cost); }), backgroundColor: palette }] },
      options: { plugins: { legend: { position: "right" }, tooltip: { callbacks: { label: function (c) { return c.label + ": " + money(c.raw); } } } } } };
  }

  document.querySelectorAll("[data-figures]").forEach(function (section) {
    const figures = data[section.dataset.figures];
    if (!figures) return;
    section.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      const spec = specs[canvas.dataset.chart](figures);
      spec.options = Object.assign({ responsive: true, maintainAspectRatio: false }, spec.options);
      window.Relay.charts.draw(canvas, spec);
    });
  });
})();
