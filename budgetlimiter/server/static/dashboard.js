/* budgetlimiter dashboard: read-only, polls JSON endpoints every 2 s. No dependencies.
   Formatting and ordering helpers: dashboard-format.js (BLF); charts: dashboard-charts.js (BLC);
   DOM helpers, the scope tree and the header counts: dashboard-tree.js (BLT). */
"use strict";
(function () {
  var F = window.BLF, C = window.BLC, T = window.BLT;
  var el = T.el, scopeText = T.scopeText, scopeEl = T.scopeEl, amountEl = T.amountEl, label = T.label,
      stateText = T.stateText, capacity = T.capacity;
  var POLL_MS = 2000;
  var TOKEN_KEY = "budgetlimiter.token";
  var state = { org: "", zone: "UTC", selected: "", nodes: {}, rows: {}, structure: "", order: "",
                states: {}, timer: null, store: null, trendKey: "", trendAt: 0, trend: null,
                attention: "", counts: "", forecastSig: "", now: new Date() };

  function $(id) { return document.getElementById(id); }

  // token: ?token= once, then sessionStorage; never left in the address bar
  var params = new URLSearchParams(location.search);
  if (params.get("token")) {
    try { sessionStorage.setItem(TOKEN_KEY, params.get("token")); } catch (e) { /* private mode */ }
    params.delete("token");
    var q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + location.hash);
  }
  function token() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }

  function api(path) {
    var headers = { "Accept": "application/json" };
    var t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (r.status === 401 || r.status === 403) { showAuth(true); }
        if (!r.ok) {
          var err = new Error(body.detail || body.title || ("HTTP " + r.status));
          err.status = r.status; err.code = body.code; throw err;
        }
        return body;
      });
    });
  }

  function orgFromUrl() {
    var m = location.pathname.match(/^\/ui\/org\/([^/]+)\/?$/);
    if (m) return decodeURIComponent(m[1]);
    return params.get("org") || "";
  }

  function showAuth(on) { $("auth").hidden = !on; if (on) setStatus("Unauthorized: enter a read token."); }
  function setStatus(text) { if ($("status").textContent !== text) $("status").textContent = text; }



  function renderTop(rows) {
    var body = $("top").tBodies[0];
    body.textContent = "";
    if (!rows.length) {
      var tr = el("tr"); var td = el("td", "muted", "no usage yet"); td.colSpan = 4;
      tr.appendChild(td); body.appendChild(tr); return;
    }
    rows.slice().sort(function (a, b) {
      return F.compare({ u: F.urgency([a]), name: a.scope }, { u: F.urgency([b]), name: b.scope });
    }).forEach(function (l) {
      var tr = el("tr", "state-" + l.state);
      tr.appendChild(scopeEl("td", "scope", l.scope));
      tr.appendChild(el("td", "lim", label(l)));
      var used = el("td", "num");
      used.appendChild(amountEl(l.metric, l.used)); used.appendChild(document.createTextNode(" / "));
      used.appendChild(amountEl(l.metric, capacity(l)));
      tr.appendChild(used);
      tr.appendChild(el("td", "num", F.percent(l.percent) + " " + stateText(l.state)));
      body.appendChild(tr);
    });
  }

  function renderAlerts(doc) {
    var box = $("alerts");
    box.textContent = "";
    if (!doc.store) { box.appendChild(el("p", "muted", "no durable store (start the sidecar with --db)")); return; }
    if (doc.alerts_error) { box.appendChild(el("p", "error", "alert log unavailable: " + doc.alerts_error)); return; }
    if (!doc.alerts || !doc.alerts.length) { box.appendChild(el("p", "muted", "no alerts")); return; }
    var t = el("table", "data alerts");
    t.appendChild(el("caption", "sr-only", "Threshold alerts and their delivery state"));
    var head = el("tr");
    ["When", "Scope and alert", "Delivery"].forEach(function (h) {
      var th = el("th", null, h); th.scope = "col"; head.appendChild(th);
    });
    var thead = el("thead"); thead.appendChild(head); t.appendChild(thead);
    var body = el("tbody");
    doc.alerts.slice().sort(function (a, b) { return b.occurred_ms - a.occurred_ms; }).forEach(function (a) {
      var tr = el("tr", "delivery-" + a.state);
      var when = el("td", "when"); when.appendChild(T.timeEl(new Date(a.occurred_ms).toISOString(), state.zone, F.stamp));
      tr.appendChild(when);
      var what = el("td", "what");
      what.appendChild(scopeEl("span", "scope", a.scope));
      var lim = el("span", "line", a.metric.replace(/_/g, " ") + " / " + a.period + " ≥ " + a.threshold + "%");
      lim.title = "period " + a.period_id;
      what.appendChild(lim);
      tr.appendChild(what);
      var st = el("td", "dstate " + a.state);
      st.appendChild(el("span", "line", a.state));
      var sink = el("span", "line sink");
      sink.appendChild(el("span", "seg", a.sink));  // a sink name wraps whole, like a scope part
      sink.appendChild(document.createTextNode(" · " + a.attempts + (a.attempts === 1 ? " try" : " tries")));
      st.appendChild(sink);
      if (a.last_error) st.title = a.last_error;
      tr.appendChild(st);
      body.appendChild(tr);
    });
    t.appendChild(body);
    // narrow screens show each row as a block (CSS); explicit roles keep it a table for
    // screen readers, which drop the table semantics of display: block
    t.setAttribute("role", "table");
    [].forEach.call(t.querySelectorAll("tr"), function (r) { r.setAttribute("role", "row"); });
    [].forEach.call(t.querySelectorAll("th"), function (c) { c.setAttribute("role", "columnheader"); });
    [].forEach.call(t.querySelectorAll("td"), function (c) { c.setAttribute("role", "cell"); });
    box.appendChild(t);
  }

  // trend: the org's calendar days (the durable ledger counts usage per local day)
  var SPANS = { day: [30, "the last 30 days"], week: [7 * 26, "the last 26 weeks"], month: [365, "the last 12 months"] };
  function loadTrend(force) {
    if (!state.org || !state.selected) return;
    var box = $("trend");
    $("detail-scope").textContent = "of ";
    $("detail-scope").className = "scope";
    scopeText($("detail-scope"), state.selected);
    if (state.store === false) {
      box.textContent = ""; box.appendChild(el("p", "muted", "no durable store: trends need the sidecar's --db"));
      state.trendKey = ""; state.trend = null; return;
    }
    var metric = $("trend-metric").value, gran = $("trend-gran").value;
    var key = [state.selected, metric, gran].join("|");
    if (!force && key === state.trendKey && Date.now() - state.trendAt < 30000) return;
    state.trendKey = key; state.trendAt = Date.now();
    var today = F.localDay(state.now, state.zone);
    var from = F.dayString(F.dayNumber(today) - SPANS[gran][0] + 1);
    var qs = new URLSearchParams({ org: state.org, by: "trend", scope: state.selected, metric: metric,
                                   granularity: gran, from: from, to: today });
    api("/v1/usage?" + qs.toString()).then(function (doc) {
      if (key !== state.trendKey) return;
      state.trend = { series: doc.series || [], metric: metric, gran: gran, scope: state.selected };
      drawTrend();
      state.forecastSig = ""; renderForecast();
    }).catch(function (err) {
      box.textContent = ""; state.trend = null;
      box.appendChild(el("p", err.code === "store_unavailable" ? "muted" : "error",
        err.code === "store_unavailable" ? "no durable store: " + err.message : "trend unavailable: " + err.message));
    });
  }
  function drawTrend() {
    var t = state.trend; if (!t) return;
    C.drawTrend($("trend"), t.series, { metric: t.metric, gran: t.gran, scope: t.scope, span: SPANS[t.gran][1],
      xTitle: t.gran + "s in " + state.zone });
  }
  // the selected scope's budgets to their period end (needs the forecast field of the tree)
  function renderForecast() {
    var node = state.nodes[state.selected], box = $("forecast");
    if (!node) return;
    var limits = node.data.limits.filter(function (l) { return l.kind === "budget"; });
    var sig = JSON.stringify([state.selected, state.zone, box.clientWidth, limits.map(function (l) {
      return [l.used, l.taken, l.limit, l.forecast]; })]);
    if (sig === state.forecastSig) return;
    state.forecastSig = sig;
    box.textContent = "";
    var has = limits.filter(function (l) { return "forecast" in l; });
    if (!has.length) { box.appendChild(el("p", "muted", "no forecast from this server")); return; }
    var drawn = 0;
    has.forEach(function (l) {
      if (!l.forecast) { box.appendChild(el("p", "muted", label(l) + ": too little data to forecast")); return; }
      var t = state.trend, daily = t && t.gran === "day" && t.metric === l.metric && t.scope === state.selected ? t.series : null;
      if (C.drawForecast(box, l, { zone: state.zone, now: state.now, label: label(l), daily: daily })) drawn++;
    });
    if (!drawn && !box.children.length) box.appendChild(el("p", "muted", "no budget with a forecast"));
  }

  function select(n) {
    state.selected = n.scope;
    Object.keys(state.nodes).forEach(function (k) {
      state.nodes[k].li.classList.toggle("selected", k === n.scope);
    });
    $("pol-team").value = n.team || ""; $("pol-user").value = n.user || "";
    if (n.agent) { $("pol-agent").value = n.agent; loadPolicy(); }
    state.forecastSig = ""; renderForecast();
    loadTrend(true);
  }

  function loadPolicy() {
    var box = $("policy");
    var qs = new URLSearchParams({ org: state.org, agent: $("pol-agent").value.trim() });
    if ($("pol-team").value.trim()) qs.set("team", $("pol-team").value.trim());
    if ($("pol-user").value.trim()) qs.set("user", $("pol-user").value.trim());
    api("/v1/policy/effective?" + qs.toString()).then(function (doc) {
      box.textContent = "";
      var pre = el("pre", "json", JSON.stringify(doc, null, 2));
      pre.tabIndex = 0; pre.setAttribute("aria-label", "effective policy JSON");
      box.appendChild(pre);
    }).catch(function (err) { box.textContent = ""; box.appendChild(el("p", "error", err.message)); });
  }

  function setZone(zone) {
    if (zone === state.zone && $("zone").dataset.zone) return;
    state.zone = zone;  // each limit row re-renders when the zone changes (it is in its signature)
    $("zone").dataset.zone = zone;
    var off = F.offset(state.now, zone);
    $("zone").textContent = "Times in " + zone + (off ? " (" + off + ")" : "") + ", the org's time zone";
  }

  function poll() {
    clearTimeout(state.timer);
    if (!state.org) return;
    api("/v1/ui/tree?org=" + encodeURIComponent(state.org)).then(function (doc) {
      showAuth(false);
      state.store = doc.store;
      state.now = new Date(doc.generated_at * 1000);
      setZone(doc.timezone || "UTC");
      var r = tree.renderScopes(doc.scopes);
      renderTop(doc.top); renderAlerts(doc);
      var msg = "Updated " + F.clock(state.now, state.zone) + ": " + doc.scopes.length + " scopes, " +
        r.counts.blocked.length + " blocked, " + r.counts.soft_exceeded.length + " soft exceeded" +
        (r.forecasts ? ", " + r.counts.forecast.length + " forecast to exceed." : ".");
      if (r.changes.length) msg = r.changes.join("; ") + ". " + msg;
      setStatus(msg);
      document.body.classList.remove("stale");
      renderForecast();
      loadTrend(false);
    }).catch(function (err) {
      document.body.classList.add("stale");
      if (err.status !== 401 && err.status !== 403) setStatus("Update failed: " + err.message + " (retrying)");
    }).then(function () { state.timer = setTimeout(poll, POLL_MS); });
  }

  var tree = T.Tree(state, function (n) { select(n); });

  function start() {
    state.org = orgFromUrl();
    $("org-input").value = state.org;
    $("org-title").textContent = state.org ? "· " + state.org : "";
    if (state.org) document.title = "budgetlimiter · " + state.org;
    $("org-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var org = $("org-input").value.trim(); if (!org) return;
      location.href = "/ui/org/" + encodeURIComponent(org);
    });
    $("token-form").addEventListener("submit", function (e) {
      e.preventDefault();
      try { sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim()); } catch (x) { /* ignore */ }
      $("token-input").value = ""; showAuth(false); setStatus("Loading…"); poll();
    });
    $("policy-form").addEventListener("submit", function (e) { e.preventDefault(); loadPolicy(); });
    $("trend-metric").addEventListener("change", function () { loadTrend(true); });
    $("trend-gran").addEventListener("change", function () { loadTrend(true); });
    var resize = null;
    window.addEventListener("resize", function () {
      clearTimeout(resize);
      resize = setTimeout(function () { drawTrend(); renderForecast(); }, 150);
    });
    if (!state.org) { setStatus("Enter an organisation to show."); $("org-input").focus(); return; }
    poll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
