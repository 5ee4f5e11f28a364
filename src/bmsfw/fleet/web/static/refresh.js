// bmsfw dashboard: live regions without a page reload (no third-party code).
// An element <div data-refresh="URL" data-interval-s="2"> is replaced by the
// server-rendered (and server-escaped) fragment at URL:
// - when the fleet event stream (/ui/events, Server-Sent Events) says something
//   changed (a device's state, a campaign's status, check-ins), at once;
// - otherwise every few seconds; while the stream is open only every 30 s, as a
//   safety net.
// A session that ended answers 401: the page reloads, which leads to the sign-in page.
// Without JavaScript every page still works; it just does not refresh by itself.
(function () {
  "use strict";
  var live = false;
  var regions = [];

  function refresh(el) {
    return fetch(el.getAttribute("data-refresh"), {
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
      .catch(function () { /* network hiccup: the next event or tick tries again */ });
  }

  function poll(el) {
    var every = 1000 * Number(el.getAttribute("data-interval-s") || "2");
    function tick() {
      refresh(el).finally(function () { setTimeout(tick, live ? 30000 : every); });
    }
    setTimeout(tick, every);
  }

  var pending = null;
  function soon() {
    // Several events in a burst: one refresh of each region.
    if (pending === null) {
      pending = setTimeout(function () { pending = null; regions.forEach(refresh); }, 250);
    }
  }

  function listen() {
    if (!window.EventSource || regions.length === 0) { return; }
    var source = new EventSource(document.body.getAttribute("data-events"));
    source.onopen = function () { live = true; document.documentElement.setAttribute("data-live", "sse"); };
    source.onerror = function () { live = false; document.documentElement.setAttribute("data-live", "poll"); };
    ["device", "campaign", "check-ins"].forEach(function (kind) {
      source.addEventListener(kind, soon);
    });
  }

  // The new-campaign form: "this targets N devices in M sites; K are offline", fetched
  // (server-rendered) as the selector changes. The CSRF token never goes into the URL.
  function preview(box) {
    var form = box.closest("form");
    var timer = null;
    function update() {
      var query = new URLSearchParams();
      new FormData(form).forEach(function (value, name) {
        if (name !== "csrf" && typeof value === "string") { query.append(name, value); }
      });
      fetch(box.getAttribute("data-preview") + "?" + query.toString(), {
        headers: { "X-Bmsfw-Fragment": "1" }, credentials: "same-origin", redirect: "error",
      })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); return null; }
          return r.text();
        })
        .then(function (html) { if (html !== null) { box.innerHTML = html; } })
        .catch(function () { /* keep the last preview */ });
    }
    form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(update, 300); });
    form.addEventListener("change", function () { clearTimeout(timer); timer = setTimeout(update, 100); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-preview]").forEach(preview);
    regions = Array.prototype.slice.call(document.querySelectorAll("[data-refresh]"));
    regions.forEach(poll);
    if (document.body.hasAttribute("data-events")) { listen(); }
  });
})();
