// Refreshes every element with a data-src (the job table's rows, the counts by state)
// every 2 seconds from that URL (the same fragments the server renders into the page).
// An element holding the focus (a retry form's token being typed) is left alone. The page works without this script.
(function () {
  "use strict";
  var parts = Array.prototype.slice.call(document.querySelectorAll("[data-src]"));
  if (!parts.length) return;
  function refresh(el) {
    if (el.contains(document.activeElement)) return Promise.resolve();
    return fetch(el.getAttribute("data-src"), { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null && !el.contains(document.activeElement)) el.innerHTML = html; })
      .catch(function () {});
  }
  function tick() {
    Promise.all(parts.map(refresh)).then(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 2000);
})();
