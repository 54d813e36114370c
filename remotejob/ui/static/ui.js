// Live updates: every element with data-live (and an id) is re-read from the same URL every 2 s,
// without reloading the page; paused while the tab is hidden or a field inside it has focus.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  function refresh() {
    if (document.hidden) { return schedule(); }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Remotejob-Live": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          if (old.contains(document.activeElement) && document.activeElement !== document.body) { return; }
          var replacement = fresh.getElementById(old.id);
          if (replacement) { old.replaceWith(document.importNode(replacement, true)); }
        });
      })
      .catch(function () { /* the server is restarting: try again next time */ })
      .finally(schedule);
  }
  function schedule() { window.setTimeout(refresh, PERIOD_MS); }
  if (document.querySelector("[data-live]")) { schedule(); }
})();
