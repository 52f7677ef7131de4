/* Chart.js in the console's colour theme: text and grid colours come from relay.css's variables,
   and every chart a page registers repaints when the theme changes (theme.js's relay:theme). */
(function () {
  "use strict";
  if (!window.Chart) return;
  let charts = [];

  function colours() {
    const css = getComputedStyle(document.documentElement);
    const read = function (name) { return css.getPropertyValue(name).trim(); };
    return { text: read("--chart-text"), grid: read("--chart-grid"), card: read("--card") };
  }

  function paint(chart, colors) {
    Object.values(chart.options.scales || {}).forEach(function (scale) {
      scale.ticks.color = colors.text;
      scale.grid.color = colors.grid;
      if (scale.border) scale.border.color = colors.grid;
    });
    chart.options.plugins.legend.labels.color = colors.text;
    chart.data.datasets.forEach(function (set) { if (chart.config.type === "doughnut") set.borderColor = colors.card; });
    chart.update("none");
  }

  function setDefaults(colors) {
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.animation = false;
    Chart.defaults.color = colors.text;
    Chart.defaults.borderColor = colors.grid;
  }

  // A new chart on `canvas`, painted in the current theme and repainted with it.
  function draw(canvas, spec) {
    const chart = new Chart(canvas, spec);
    charts.push(chart);
    paint(chart, colours());
    return chart;
  }

  setDefaults(colours());
  document.addEventListener("relay:theme", function () {
    const colors = colours();
    setDefaults(colors);
    charts = charts.filter(function (chart) { return chart.canvas; });  // a destroyed chart has none
    charts.forEach(function (chart) { paint(chart, colors); });
  });
  window.Relay.charts = { draw: draw };
})();
