// bmsfw dashboard: live regions without a page reload (no third-party code).
// An element <div data-refresh="URL" data-interval-s="2"> is replaced every few seconds
// by the server-rendered (and server-escaped) fragment at URL. A session that ended
// answers 401: the page reloads, which leads to the sign-in page.
(function () {
  "use strict";
  function start(el) {
    var every = 1000 * Number(el.getAttribute("data-interval-s") || "2");
    function tick() {
      fetch(el.getAttribute("data-refresh"), {
        headers: { "X-Bmsfw-Fragment": "1" },
        credentials: "same-origin",
        redirect: "error",
      })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          // Do not replace a form the user is typing into.
          var busy = el.contains(document.activeElement) && document.activeElement.tagName === "INPUT";
          if (html !== null && !busy) { el.innerHTML = html; }
        })
        .catch(function () { /* network hiccup: the next tick tries again */ })
        .finally(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(start);
  });
})();
