// The usage page's charts, drawn with uPlot (vendored: uplot.iife.min.js, MIT, uplot.LICENSE)
// from the JSON the server put in #usage-data: {x: [unix s], grain, series: [{label, spend, tokens}]}.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("usage-data").textContent);
  const palette = ["#1f4fd1", "#e8743b", "#19a979", "#945ecf", "#ed4a7b", "#13a4b4", "#bf8b12", "#6c8893", "#525df4"];
  const money = (v) => v == null ? "" : v === 0 ? "$0" : "$" + (v >= 1 ? v.toFixed(2) : String(Number(v.toPrecision(2))));
  const count = (v) => v == null ? "" : v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : String(Math.round(v));

  function draw(element) {
    const field = element.dataset.series;
    const format = element.dataset.unit === "usd" ? money : count;
    if (!data.series.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "No usage in this range.";
      element.appendChild(empty);
      return null;
    }
    const options = {
      width: element.clientWidth,
      height: 240,
      series: [
        { value: (u, v) => v == null ? "" : new Date(v * 1000).toISOString().slice(0, data.grain === "hour" ? 16 : 10).replace("T", " ") },
        ...data.series.map((s, i) => ({
          label: s.label,
          stroke: palette[i % palette.length],
          fill: palette[i % palette.length] + "22",
          width: 2,
          points: { show: data.x.length <= 31 },
          value: (u, v) => format(v),
        })),
      ],
      axes: [
        { stroke: "#647086", grid: { stroke: "#eef0f4" } },
        {
          stroke: "#647086",
          grid: { stroke: "#eef0f4" },
          values: (u, ticks) => ticks.map(format),
          // Wide enough for the longest tick label ("$0.000015"), at about 7 px a character.
          size: (u, values) => 16 + 7 * Math.max(3, ...(values || []).map((v) => v.length)),
        },
      ],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      legend: { live: true },
      cursor: { points: { size: 6 } },
    };
    const values = [data.x, ...data.series.map((s) => s[field])];
    return new uPlot(options, values, element);
  }

  const charts = Array.from(document.querySelectorAll(".chart[data-series]")).map((el) => [el, draw(el)]);
  let pending = 0;
  window.addEventListener("resize", () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => {
      for (const [element, chart] of charts) {
        if (chart) chart.setSize({ width: element.clientWidth, height: 240 });
      }
    });
  });
})();
