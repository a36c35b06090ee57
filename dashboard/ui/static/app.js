// batuta dashboard: relative times, confirmations, and live updates over
// server-sent events (the server sends a page's <main> when it changed).
// Without this script pages still work and refresh themselves.
(function () {
  "use strict";

  function rel(ms) {
    var s = Math.round(Math.abs(ms) / 1000), out;
    if (s < 60) out = s + "s";
    else if (s < 3600) out = Math.floor(s / 60) + "m";
    else if (s < 172800) out = Math.floor(s / 3600) + "h" + (Math.floor(s / 60) % 60 ? " " + (Math.floor(s / 60) % 60) + "m" : "");
    else out = Math.floor(s / 86400) + "d";
    return ms >= 0 ? out + " ago" : "in " + out;
  }

  function times(root) {
    var now = Date.now();
    root.querySelectorAll("time.ago[datetime]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("datetime"));
      if (isNaN(t)) return;
      if (!el.dataset.abs) el.dataset.abs = el.textContent;
      el.textContent = rel(now - t);
      el.title = el.dataset.abs;
    });
  }

  document.addEventListener("submit", function (e) {
    var msg = (e.submitter && e.submitter.dataset.confirm) || e.target.dataset.confirm;
    if (msg && !window.confirm(msg)) e.preventDefault();
  });

  function live() {
    var path = document.body.dataset.live;
    if (path === undefined || !window.EventSource) return;
    var badge = document.getElementById("live");
    var main = document.getElementById("main");
    var version = document.body.dataset.version || "";
    var es = null;

    function set(state, text) {
      if (!badge) return;
      badge.dataset.state = state;
      badge.textContent = text;
    }

    // Swap only when the user is not typing in a form of <main>.
    function busy() {
      var a = document.activeElement;
      return a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName) && a.type !== "checkbox";
    }

    var pending = null;
    function swap(html) {
      if (busy()) { pending = html; return; }
      pending = null;
      var a = document.activeElement, focusID = a && main.contains(a) ? a.id : "";
      var open = [];
      main.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
      var checked = [];
      main.querySelectorAll("input[type=checkbox]:checked[id]").forEach(function (c) { checked.push(c.id); });
      var y = window.scrollY;
      main.innerHTML = html;
      open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
      checked.forEach(function (id) { var c = document.getElementById(id); if (c) c.checked = true; });
      if (focusID) { var f = document.getElementById(focusID); if (f) f.focus({ preventScroll: true }); }
      window.scrollTo(0, y);
      times(main);
    }
    document.addEventListener("focusout", function () {
      setTimeout(function () { if (pending !== null && !busy()) swap(pending); }, 0);
    });

    function connect() {
      es = new EventSource("events?path=" + encodeURIComponent(path) + "&v=" + encodeURIComponent(version));
      es.onopen = function () { set("live", "live"); };
      es.addEventListener("main", function (e) {
        version = e.lastEventId || version;
        swap(e.data);
      });
      es.addEventListener("gone", function () {
        es.close();
        set("down", "page gone");
      });
      es.onerror = function () { set("down", "reconnecting…"); };
    }
    connect();
    window.addEventListener("pagehide", function () { if (es) es.close(); });
  }

  times(document);
  setInterval(function () { times(document); }, 5000);
  live();
})();
