/* budgetlimiter dashboard, admin panel: edit a scope's limits (admin token) and read the audit
   log. A separate file from dashboard.js: it builds its own (closed) section and talks to
   GET/PUT /v1/limits/{scope} (If-Match: a concurrent change is refused, reload and retry) and
   GET /v1/audit. The token is the dashboard's (sessionStorage). */
"use strict";
(function () {
  var TOKEN_KEY = "budgetlimiter.token";
  var AUDIT_MS = 10000;
  var current = { scope: "", etag: "", doc: null };
  var timer = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function byId(id) { return document.getElementById(id); }
  function token() {
    var q = new URLSearchParams(location.search).get("token");
    if (q) return q;
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }
  function org() {
    var m = location.pathname.match(/^\/ui\/org\/([^/]+)\/?$/);
    if (m) return decodeURIComponent(m[1]);
    return new URLSearchParams(location.search).get("org") || "";
  }
  function call(method, path, body, extra) {
    var headers = { "Accept": "application/json" };
    var t = token();
    if (t) headers.Authorization = "Bearer " + t;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    Object.keys(extra || {}).forEach(function (k) { headers[k] = extra[k]; });
    return fetch(path, { method: method, headers: headers, cache: "no-store",
                         body: body === undefined ? undefined : JSON.stringify(body) })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (doc) {
          if (!r.ok) {
            var err = new Error(doc.detail || doc.title || ("HTTP " + r.status));
            err.status = r.status; throw err;
          }
          return { doc: doc, etag: r.headers.get("ETag") || "" };
        });
      });
  }
  function encodeScope(s) { return encodeURIComponent(s); }
  function say(text, kind) { var m = byId("adm-msg"); m.textContent = text; m.className = "msg " + (kind || ""); }

  function select(options, value) {
    var s = el("select");
    options.forEach(function (o) { var op = el("option", null, o); op.value = o; if (o === value) op.selected = true; s.appendChild(op); });
    return s;
  }

  function build() {
    var main = byId("main") || document.body;
    var section = el("section", "card admin-card");
    section.id = "admin";
    section.setAttribute("aria-labelledby", "adm-h");
    // closed until asked for: nothing is requested (and no token is needed) before that
    var card = el("details"); card.id = "adm-details";
    var summary = el("summary");
    var h = el("h2", null, "Limits and audit log"); h.id = "adm-h";
    h.style.display = "inline";
    summary.appendChild(h); card.appendChild(summary);
    section.appendChild(card);
    var form = el("form", "inline"); form.id = "adm-load";
    var scope = el("input"); scope.type = "text"; scope.autocomplete = "off"; scope.required = true;
    scope.value = org() ? "org:" + org() : "";
    scope.id = "adm-scope";
    var sl = el("label", null, "Scope"); sl.htmlFor = "adm-scope";
    form.appendChild(sl); form.appendChild(scope);
    var load = el("button", null, "Load limits"); load.type = "submit"; form.appendChild(load);
    card.appendChild(form);
    var msg = el("p", "msg"); msg.id = "adm-msg"; msg.setAttribute("role", "status"); msg.setAttribute("aria-live", "polite");
    card.appendChild(msg);
    var editor = el("form", "adm-form"); editor.id = "adm-editor"; editor.hidden = true;
    card.appendChild(editor);
    var ah = el("h3", null, "Audit log"); card.appendChild(ah);
    var wrap = el("div", "audit-wrap"); wrap.id = "adm-audit"; card.appendChild(wrap);
    main.appendChild(section);
    card.addEventListener("toggle", function () {
      if (card.open && !timer) { loadAudit(); timer = setInterval(loadAudit, AUDIT_MS); }
      if (!card.open && timer) { clearInterval(timer); timer = null; }
    });
    form.addEventListener("submit", function (ev) { ev.preventDefault(); loadScope(scope.value.trim()); });
    editor.addEventListener("submit", function (ev) { ev.preventDefault(); save(); });
  }

  function loadScope(scope) {
    if (!scope) return;
    say("Loading " + scope + "…");
    call("GET", "/v1/limits/" + encodeScope(scope)).then(function (res) {
      current = { scope: scope, etag: res.etag, doc: res.doc };
      renderEditor();
      say("Loaded " + scope + " (overrides version " + res.doc.version + ").", "ok");
    }).catch(function (e) { byId("adm-editor").hidden = true; say(e.message, "error"); });
  }

  function renderEditor() {
    var f = byId("adm-editor");
    f.textContent = "";
    var t = el("table", "data");
    var cap = el("caption", "sr-only", "Budgets of " + current.scope); t.appendChild(cap);
    var head = el("tr");
    ["Metric / period", "Amount", "Mode", "From", "Remove"].forEach(function (x) { var th = el("th", null, x); th.scope = "col"; head.appendChild(th); });
    var thead = el("thead"); thead.appendChild(head); t.appendChild(thead);
    var tb = el("tbody");
    current.doc.limits.forEach(function (l, i) {
      var tr = el("tr", l.origin.indexOf("override") === 0 ? "override" : "");
      tr.appendChild(el("td", null, l.metric + " / " + l.period));
      var amount = el("input", "amount"); amount.type = "text"; amount.value = l.amount;
      amount.id = "adm-amount-" + i; amount.setAttribute("aria-label", "Amount of " + l.metric + " per " + l.period);
      amount.dataset.metric = l.metric; amount.dataset.period = l.period; amount.dataset.orig = l.amount;
      amount.dataset.mode = l.mode; amount.dataset.override = l.origin.indexOf("override") === 0 ? "1" : "";
      var td = el("td"); td.appendChild(amount); tr.appendChild(td);
      tr.appendChild(el("td", null, l.mode));
      tr.appendChild(el("td", "origin", l.origin));
      var rm = el("input"); rm.type = "checkbox"; rm.id = "adm-remove-" + i;
      rm.setAttribute("aria-label", "Remove " + l.metric + " per " + l.period);
      var td2 = el("td"); td2.appendChild(rm); tr.appendChild(td2);
      tb.appendChild(tr);
    });
    t.appendChild(tb);
    f.appendChild(t);
    var add = el("div", "adm-row");
    var metric = select(["", "cost", "invocations", "input_tokens", "output_tokens", "total_tokens"], "");
    metric.id = "adm-new-metric";
    var period = select(["day", "minute", "hour", "week", "month"], "day"); period.id = "adm-new-period";
    var amount = el("input", "amount"); amount.type = "text"; amount.id = "adm-new-amount";
    [["Add limit: metric", metric], ["period", period], ["amount", amount]].forEach(function (p) {
      var l = el("label", null, p[0]); l.htmlFor = p[1].id; add.appendChild(l); add.appendChild(p[1]);
    });
    f.appendChild(add);
    var why = el("input"); why.type = "text"; why.id = "adm-why"; why.required = true;
    var wl = el("label", null, "Why (kept in the audit log)"); wl.htmlFor = "adm-why";
    f.appendChild(wl); f.appendChild(why);
    var btn = el("button", null, "Save (admin token)"); btn.type = "submit"; btn.id = "adm-save";
    f.appendChild(btn);
    f.appendChild(el("p", "origin", "ETag " + current.etag + " — a change made meanwhile by someone else is refused (412): load again and retry."));
    f.hidden = false;
  }

  function save() {
    var body = { limits: [], rates: [], remove_limits: [], remove_rates: [], why: byId("adm-why").value };
    var ov = current.doc.override || {};
    (ov.rates || []).forEach(function (r) { body.rates.push(r); });
    (ov.remove_rates || []).forEach(function (r) { body.remove_rates.push(r); });
    (ov.remove_limits || []).forEach(function (r) { body.remove_limits.push(r); });
    var inputs = byId("adm-editor").querySelectorAll("input.amount[data-metric]");
    Array.prototype.forEach.call(inputs, function (inp, i) {
      var removed = byId("adm-remove-" + i).checked;
      var key = { metric: inp.dataset.metric, period: inp.dataset.period };
      if (removed) { if (!inp.dataset.override) body.remove_limits.push(key); return; }
      if (inp.dataset.override || inp.value !== inp.dataset.orig) {
        body.limits.push({ metric: key.metric, period: key.period, amount: inp.value, mode: inp.dataset.mode });
      }
    });
    var nm = byId("adm-new-metric").value;
    if (nm) body.limits.push({ metric: nm, period: byId("adm-new-period").value, amount: byId("adm-new-amount").value });
    say("Saving…");
    call("PUT", "/v1/limits/" + encodeScope(current.scope), body, { "If-Match": current.etag })
      .then(function (res) {
        say("Saved as version " + res.doc.version + (res.doc.published ? "; every client applies it within 2 s." : "; stored, publishing when Redis answers."), "ok");
        current.etag = res.etag;
        current.doc = res.doc.state;
        renderEditor();
        loadAudit();
      })
      .catch(function (e) { say((e.status === 412 ? "Changed meanwhile: load again. " : "") + e.message, "error"); });
  }

  function changes(v) {
    if (v === null || v === undefined) return "";
    if (Array.isArray(v)) return v.join("\n");
    if (typeof v === "object") return Object.keys(v).map(function (k) { return k + ": " + changes(v[k]); }).join("\n");
    return String(v);
  }

  function loadAudit() {
    var o = org();
    call("GET", "/v1/audit" + (o ? "?org=" + encodeURIComponent(o) : "")).then(function (res) {
      var wrap = byId("adm-audit");
      var t = el("table", "data"); t.id = "adm-audit-table";
      t.appendChild(el("caption", "sr-only", "Audit log, newest first"));
      var head = el("tr");
      ["When", "Who", "Action", "Scope", "Before", "After", "Why"].forEach(function (x) { var th = el("th", null, x); th.scope = "col"; head.appendChild(th); });
      var thead = el("thead"); thead.appendChild(head); t.appendChild(thead);
      var tb = el("tbody");
      res.doc.entries.slice().reverse().forEach(function (e) {
        var tr = el("tr");
        tr.appendChild(el("td", null, new Date(e.at_ms).toISOString().replace(".000Z", "Z")));
        tr.appendChild(el("td", null, e.who));
        tr.appendChild(el("td", null, e.action));
        tr.appendChild(el("td", "scope", e.scope || ""));
        tr.appendChild(el("td", "changes", changes(e.before)));
        tr.appendChild(el("td", "changes", changes(e.after)));
        tr.appendChild(el("td", null, e.why));
        tb.appendChild(tr);
      });
      t.appendChild(tb);
      wrap.textContent = "";
      if (!res.doc.entries.length) wrap.appendChild(el("p", null, "No entries yet."));
      else wrap.appendChild(t);
    }).catch(function (e) { byId("adm-audit").textContent = "Audit log unavailable: " + e.message; });
  }

  function start() { build(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
