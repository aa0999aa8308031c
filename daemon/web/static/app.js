// cutoutd status page: draws the 48-hour chart and keeps the page current by polling
// /api/overview (no reload). No inline script: the page's CSP allows only 'self'.
(function () {
  "use strict";
  var POLL_MS = 5000;
  var chart = null;

  function chartData(hourly) {
    return [hourly.t, hourly.succeeded, hourly.failed];
  }

  function drawChart(data) {
    var box = document.getElementById("chart");
    if (!box || typeof uPlot === "undefined") return;
    var bars = uPlot.paths.bars({ size: [0.7, 40] });
    var options = {
      width: Math.max(box.clientWidth, 280),
      height: 220,
      scales: { x: { time: true } },
      legend: { show: true },
      series: [
        {},
        { label: "succeeded", stroke: "#1f7a3a", fill: "rgba(31,122,58,0.35)", paths: bars, points: { show: false } },
        { label: "failed", stroke: "#b3261e", fill: "rgba(179,38,30,0.45)", paths: bars, points: { show: false } }
      ],
      axes: [{}, { label: "images" }]
    };
    chart = new uPlot(options, chartData(data.hourly), box);
    window.addEventListener("resize", function () {
      chart.setSize({ width: Math.max(box.clientWidth, 280), height: 220 });
    });
  }

  function setText(selector, value) {
    var node = document.querySelector(selector);
    if (node && node.textContent !== String(value)) node.textContent = value;
  }

  function apply(data) {
    ["today", "week", "all"].forEach(function (span) {
      Object.keys(data.counts[span]).forEach(function (status) {
        setText('[data-count="' + span + "." + status + '"]', data.counts[span][status]);
      });
    });
    Object.keys(data.queue).forEach(function (key) {
      setText('[data-queue="' + key + '"]', data.queue[key]);
    });
    setText('[data-fact="last_poll"]', data.last_poll);
    setText('[data-fact="health"]', data.health);
    setText('[data-fact="submissions_today"]', data.submissions_today);
    var badge = document.getElementById("health");
    if (badge) {
      badge.textContent = data.healthy ? "healthy" : data.health;
      badge.className = "badge " + (data.healthy ? "ok" : "bad");
    }
    if (chart) chart.setData(chartData(data.hourly));
  }

  var newest = null;

  function refreshGrid(data) {
    var grid = document.querySelector('#results[data-live="1"]');
    if (!grid || data.newest_result === newest) return;
    var first = newest === null;
    newest = data.newest_result;
    if (first) return;
    fetch("/fragments/results?page=1", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { grid.innerHTML = html; })
      .catch(function () {});
  }

  var failuresKey = null;

  function refreshFailures(data) {
    var list = document.querySelector('#latest-failures[data-live="1"]');
    if (!list || data.failures_key === failuresKey) return;
    var first = failuresKey === null;
    failuresKey = data.failures_key;
    if (first) return;
    fetch("/fragments/failures", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { list.innerHTML = html; })
      .catch(function () {});
  }

  function poll() {
    fetch("/api/overview", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) { apply(data); refreshGrid(data); refreshFailures(data); })
      .catch(function () {})
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var embedded = document.getElementById("overview-data");
    if (embedded) {
      var data = JSON.parse(embedded.textContent);
      newest = data.newest_result;
      failuresKey = data.failures_key;
      drawChart(data);
    }
    if (document.getElementById("health")) window.setTimeout(poll, POLL_MS);
  });
})();
