// PaaSTech: live updates only. Every page works without this file; with it, pages that
// name a stream (data-stream on <body>) follow the project's log over EventSource:
// the log tab appends lines, and pages with [data-live] parts refresh them when the
// platform notes a deployment change, and show build output as it comes.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-stream");
  if (!url || !window.EventSource) return;
  var MAX_LINES = 2000;
  var log = document.getElementById("log");
  var progress = document.getElementById("progress");
  var progressLog = document.getElementById("progress-log");
  var state = document.getElementById("log-state");
  var timer = null;

  function append(pre, line) {
    var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.appendChild(document.createTextNode(line + "\n"));
    while (pre.childNodes.length > MAX_LINES) pre.removeChild(pre.firstChild);
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  // Re-fetch this page and swap in its live parts (same ids), leaving the rest alone.
  function refresh() {
    fetch(location.pathname, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next) el.replaceWith(document.importNode(next, true));
        });
      })
      .catch(function () {});
  }

  var source = new EventSource(url);
  source.onopen = function () { if (state) state.textContent = "Live: new lines appear as they come."; };
  source.onerror = function () { if (state) state.textContent = "Reconnecting…"; };
  source.onmessage = function (event) {
    var line = event.data;
    if (log) append(log, line);
    if (progressLog && / build: /.test(line)) {
      progress.hidden = false;
      append(progressLog, line.replace(/^\S+ build: /, ""));
    }
    if (/ paastech: /.test(line) && document.querySelector("[data-live]")) {
      if (/ is live$| failed: /.test(line) && progress) progress.hidden = true;
      clearTimeout(timer);
      timer = setTimeout(refresh, 250);
    }
  };
})();
