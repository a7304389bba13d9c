/* budgetlimiter dashboard: read-only, polls JSON endpoints every 2 s. No dependencies. */
"use strict";
(function () {
  var POLL_MS = 2000;
  var SVG = "http://www.w3.org/2000/svg";
  var TOKEN_KEY = "budgetlimiter.token";
  var state = { org: "", selected: "", nodes: {}, rows: {}, structure: "", states: {},
                timer: null, store: null, trendKey: "", trendAt: 0 };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }

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

  function label(l) { return l.metric.replace(/_/g, " ") + " / " + l.period + (l.kind === "rate" ? " (rate)" : ""); }
  function num(v) { var n = parseFloat(v); return isFinite(n) ? n : 0; }
  function fmt(l, v) { return l.metric === "cost" ? "$" + v : String(v); }

  // one limit: an SVG bar (used solid, reserved hatched, limit = full width)
  function limitRow(key) {
    var row = el("div", "limit");
    row.dataset.key = key;
    var name = el("span", "lname");
    var bar = svg("svg", { "class": "bar", viewBox: "0 0 100 10", preserveAspectRatio: "none",
                           role: "img", focusable: "false" });
    var title = svg("title"); bar.appendChild(title);
    bar.appendChild(svg("rect", { "class": "track", x: 0, y: 0, width: 100, height: 10, rx: 2 }));
    var used = svg("rect", { "class": "used", x: 0, y: 0, width: 0, height: 10, rx: 2 });
    var res = svg("rect", { "class": "res", x: 0, y: 0, width: 0, height: 10 });
    bar.appendChild(used); bar.appendChild(res);
    var nums = el("span", "nums");
    row.appendChild(name); row.appendChild(bar); row.appendChild(nums);
    row._parts = { name: name, bar: bar, title: title, used: used, res: res, nums: nums };
    return row;
  }
  // a rate limit's bar is its bucket: taken of burst (its limit is the rate per period)
  function capacity(l) { return l.burst !== null && l.burst !== undefined ? l.burst : l.limit; }
  function ofText(l) {
    return l.kind === "rate" ? fmt(l, l.burst) + " (burst; " + l.limit + " " + l.period + ")"
                             : fmt(l, l.limit);
  }
  function updateLimit(row, l) {
    var p = row._parts, lim = num(capacity(l)), u = num(l.used), r = num(l.reserved);
    var wu = lim > 0 ? Math.min(100, 100 * u / lim) : (u > 0 ? 100 : 0);
    var wr = lim > 0 ? Math.min(100 - wu, 100 * r / lim) : 0;
    row.className = "limit state-" + l.state;
    p.name.textContent = label(l);
    p.used.setAttribute("width", wu.toFixed(2));
    p.res.setAttribute("x", wu.toFixed(2));
    p.res.setAttribute("width", wr.toFixed(2));
    var text = "used " + fmt(l, l.used) + " + reserved " + fmt(l, l.reserved) + " of " +
      ofText(l) + " (" + l.percent + "%, " + l.state.replace("_", " ") + ")";
    p.bar.setAttribute("aria-label", label(l) + ": " + text);
    p.title.textContent = text;
    p.nums.textContent = fmt(l, l.used) + " + " + fmt(l, l.reserved) + " / " + fmt(l, capacity(l)) +
      " · " + l.percent + "%";
  }

  function nodeName(n) {
    if (n.agent) return "agent " + n.agent;
    if (n.user) return "user " + n.user;
    if (n.team) return "team " + n.team;
    return "org " + state.org;
  }

  function buildTree(scopes) {
    var root = $("tree");
    root.textContent = "";
    state.nodes = {}; state.rows = {};
    var lists = {};
    scopes.forEach(function (n, i) {
      var li = el("li", "node level-" + n.level);
      li.dataset.scope = n.scope;
      var head = el("div", "head");
      var btn = el("button", "pick", nodeName(n));
      btn.type = "button";
      btn.title = n.scope;
      btn.setAttribute("aria-label", "Show trend of " + n.scope);
      btn.addEventListener("click", function () { select(n); });
      head.appendChild(btn);
      head.appendChild(el("span", "badge"));
      li.appendChild(head);
      var limits = el("div", "limits");
      li.appendChild(limits);
      var agents = el("ul", "agents");
      agents.setAttribute("aria-label", "agents of " + n.scope);
      var kids = el("ul", "children");
      kids.setAttribute("aria-label", "teams and users under " + n.scope);
      li.appendChild(agents); li.appendChild(kids);
      lists[n.scope] = { agents: agents, kids: kids };
      state.nodes[n.scope] = { li: li, limits: limits, badge: head.lastChild };
      var parent = n.parent && lists[n.parent];
      if (!parent) root.appendChild(li);
      else (n.agent ? parent.agents : parent.kids).appendChild(li);
      if (i === 0 && !state.selected) state.selected = n.scope;
    });
    Object.keys(lists).forEach(function (k) {
      if (!lists[k].agents.children.length) lists[k].agents.remove();
      if (!lists[k].kids.children.length) lists[k].kids.remove();
    });
  }

  function renderScopes(scopes) {
    var structure = scopes.map(function (n) {
      return n.scope + "|" + n.limits.map(function (l) { return l.kind + l.metric + l.period; }).join(",");
    }).join(";");
    if (structure !== state.structure) { buildTree(scopes); state.structure = structure; }
    var changes = [], worst = { ok: 0, soft_exceeded: 0, blocked: 0 };
    scopes.forEach(function (n) {
      var node = state.nodes[n.scope]; if (!node) return;
      var nodeState = "ok";
      n.limits.forEach(function (l) {
        var key = n.scope + "|" + l.kind + "|" + l.metric + "|" + l.period;
        var row = state.rows[key];
        if (!row) { row = limitRow(key); state.rows[key] = row; node.limits.appendChild(row); }
        updateLimit(row, l);
        worst[l.state] = (worst[l.state] || 0) + 1;
        if (l.state === "blocked") nodeState = "blocked";
        else if (l.state === "soft_exceeded" && nodeState === "ok") nodeState = "soft_exceeded";
        if (state.states[key] && state.states[key] !== l.state) {
          changes.push(n.scope + " " + label(l) + " is now " + l.state.replace("_", " "));
        }
        state.states[key] = l.state;
      });
      if (!n.limits.length) node.limits.textContent = "no limits";
      node.li.className = "node level-" + n.level + " state-" + nodeState +
        (n.scope === state.selected ? " selected" : "");
      node.badge.textContent = n.limits.length ? nodeState.replace("_", " ") : "";
      node.badge.className = "badge " + (n.limits.length ? nodeState : "");
    });
    return { changes: changes, counts: worst };
  }

  function renderTop(rows) {
    var body = $("top").tBodies[0];
    body.textContent = "";
    if (!rows.length) {
      var tr = el("tr"); var td = el("td", "muted", "no usage yet"); td.colSpan = 5;
      tr.appendChild(td); body.appendChild(tr); return;
    }
    rows.forEach(function (l) {
      var tr = el("tr", "state-" + l.state);
      tr.appendChild(el("td", "scope", l.scope));
      tr.appendChild(el("td", null, label(l)));
      tr.appendChild(el("td", "num", fmt(l, l.used) + " / " + fmt(l, capacity(l))));
      tr.appendChild(el("td", "num", l.percent));
      tr.appendChild(el("td", null, l.state.replace("_", " ")));
      body.appendChild(tr);
    });
  }

  function renderAlerts(doc) {
    var box = $("alerts");
    box.textContent = "";
    if (!doc.store) { box.appendChild(el("p", "muted", "no durable store (start the sidecar with --db)")); return; }
    if (doc.alerts_error) { box.appendChild(el("p", "error", "alert log unavailable: " + doc.alerts_error)); return; }
    if (!doc.alerts || !doc.alerts.length) { box.appendChild(el("p", "muted", "no alerts")); return; }
    var t = el("table", "data");
    var cap = el("caption", "sr-only", "Threshold alerts and their delivery state"); t.appendChild(cap);
    var head = el("tr");
    ["When", "Scope", "Limit", "Threshold", "Sink", "Delivery", "Attempts"].forEach(function (h) {
      var th = el("th", null, h); th.scope = "col"; head.appendChild(th);
    });
    var thead = el("thead"); thead.appendChild(head); t.appendChild(thead);
    var body = el("tbody");
    doc.alerts.forEach(function (a) {
      var tr = el("tr", "delivery-" + a.state);
      tr.appendChild(el("td", null, new Date(a.occurred_ms).toISOString().replace("T", " ").slice(0, 19) + "Z"));
      tr.appendChild(el("td", "scope", a.scope));
      tr.appendChild(el("td", null, a.metric + " / " + a.period + " " + a.period_id));
      tr.appendChild(el("td", "num", a.threshold + "%"));
      tr.appendChild(el("td", null, a.sink));
      var st = el("td", "dstate " + a.state, a.state);
      if (a.last_error) st.title = a.last_error;
      tr.appendChild(st);
      tr.appendChild(el("td", "num", a.attempts));
      body.appendChild(tr);
    });
    t.appendChild(body); box.appendChild(t);
  }

  // trend chart: inline SVG bars with axis labels
  function isoDay(d) { return d.toISOString().slice(0, 10); }
  function loadTrend(force) {
    if (!state.org || !state.selected) return;
    var box = $("trend");
    $("detail-scope").textContent = "of " + state.selected;
    if (state.store === false) {
      box.textContent = ""; box.appendChild(el("p", "muted", "no durable store: trends need the sidecar's --db"));
      state.trendKey = ""; return;
    }
    var metric = $("trend-metric").value, gran = $("trend-gran").value;
    var key = [state.selected, metric, gran].join("|");
    if (!force && key === state.trendKey && Date.now() - state.trendAt < 30000) return;
    state.trendKey = key; state.trendAt = Date.now();
    var days = { day: 30, week: 7 * 26, month: 365 }[gran];
    var to = new Date(), from = new Date(to.getTime() - days * 86400000);
    var qs = new URLSearchParams({ org: state.org, by: "trend", scope: state.selected, metric: metric,
                                   granularity: gran, from: isoDay(from), to: isoDay(to) });
    api("/v1/usage?" + qs.toString()).then(function (doc) {
      if (key !== state.trendKey) return;
      drawTrend(box, doc.series || [], metric, gran);
    }).catch(function (err) {
      box.textContent = "";
      box.appendChild(el("p", err.code === "store_unavailable" ? "muted" : "error",
        err.code === "store_unavailable" ? "no durable store: " + err.message : "trend unavailable: " + err.message));
    });
  }
  function drawTrend(box, series, metric, gran) {
    box.textContent = "";
    var W = 600, H = 200, L = 52, B = 24, T = 10;
    var vals = series.map(function (p) { return num(p.value); });
    var max = Math.max.apply(null, [0].concat(vals)) || 1;
    var total = vals.reduce(function (a, b) { return a + b; }, 0);
    var s = svg("svg", { "class": "trend", viewBox: "0 0 " + W + " " + H, role: "img" });
    var desc = metric.replace(/_/g, " ") + " per " + gran + " for " + state.selected + ", " +
      series.length + " periods, total " + (metric === "cost" ? "$" + total.toFixed(6) : total) +
      ", peak " + (metric === "cost" ? "$" : "") + max;
    s.setAttribute("aria-label", desc);
    var title = svg("title"); title.textContent = desc; s.appendChild(title);
    [0, 0.5, 1].forEach(function (f) {
      var y = T + (H - T - B) * (1 - f);
      s.appendChild(svg("line", { "class": "grid", x1: L, x2: W, y1: y, y2: y }));
      var t = svg("text", { "class": "axis", x: L - 4, y: y + 4, "text-anchor": "end" });
      t.textContent = metric === "cost" ? "$" + (max * f).toPrecision(2) : String(Math.round(max * f));
      s.appendChild(t);
    });
    var n = Math.max(1, series.length), bw = (W - L) / n;
    series.forEach(function (p, i) {
      var h = (H - T - B) * num(p.value) / max;
      var r = svg("rect", { "class": "tbar", x: L + i * bw + 1, y: T + (H - T - B) - h,
                            width: Math.max(1, bw - 2), height: h });
      var tt = svg("title"); tt.textContent = p.period + ": " + p.value; r.appendChild(tt);
      s.appendChild(r);
    });
    [0, series.length - 1].forEach(function (i) {
      if (i < 0 || !series[i]) return;
      var t = svg("text", { "class": "axis", x: i === 0 ? L : W, y: H - 6, "text-anchor": i === 0 ? "start" : "end" });
      t.textContent = series[i].period; s.appendChild(t);
    });
    box.appendChild(s);
    box.appendChild(el("p", "muted small", desc));
  }

  function select(n) {
    state.selected = n.scope;
    Object.keys(state.nodes).forEach(function (k) {
      state.nodes[k].li.classList.toggle("selected", k === n.scope);
    });
    $("pol-team").value = n.team || ""; $("pol-user").value = n.user || "";
    if (n.agent) { $("pol-agent").value = n.agent; loadPolicy(); }
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

  function poll() {
    clearTimeout(state.timer);
    if (!state.org) return;
    api("/v1/ui/tree?org=" + encodeURIComponent(state.org)).then(function (doc) {
      showAuth(false);
      state.store = doc.store;
      var r = renderScopes(doc.scopes);
      renderTop(doc.top); renderAlerts(doc);
      var when = new Date(doc.generated_at * 1000).toLocaleTimeString();
      var msg = "Updated " + when + ": " + doc.scopes.length + " scopes, " + (r.counts.blocked || 0) +
        " blocked, " + (r.counts.soft_exceeded || 0) + " soft exceeded.";
      if (r.changes.length) msg = r.changes.join("; ") + ". " + msg;
      setStatus(msg);
      document.body.classList.remove("stale");
      loadTrend(false);
    }).catch(function (err) {
      document.body.classList.add("stale");
      if (err.status !== 401 && err.status !== 403) setStatus("Update failed: " + err.message + " (retrying)");
    }).then(function () { state.timer = setTimeout(poll, POLL_MS); });
  }

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
    if (!state.org) { setStatus("Enter an organisation to show."); $("org-input").focus(); return; }
    poll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
