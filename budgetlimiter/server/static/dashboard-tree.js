/* budgetlimiter dashboard: DOM helpers, the scope tree (most urgent first, idle scopes
   folded, one row per limit) and the header counts that link to the scopes needing attention. */
"use strict";
(function (root) {
  var F = root.BLF, SVG = "http://www.w3.org/2000/svg";
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
  // a scope name that wraps only at its "/" separators: each part is an inline-block (a
  // line breaks between them, and inside one only if it alone is wider than the column)
  function scopeText(parent, scope) {
    scope.split("/").forEach(function (part, i, all) {
      parent.appendChild(el("span", "seg", part + (i < all.length - 1 ? "/" : "")));
      if (i < all.length - 1) parent.appendChild(document.createElement("wbr"));
    });
    return parent;
  }
  function scopeEl(tag, cls, scope) { var e = scopeText(el(tag, cls), scope); e.title = scope; return e; }
  // an amount as read (rounded) with the exact value on hover
  function amountEl(metric, v) {
    var s = el("span", "amt", F.amount(metric, v));
    s.title = F.exact(metric, v);
    return s;
  }
  function timeEl(iso, zone, fmt) {
    var d = new Date(iso), t = el("time", null, (fmt || F.when)(d, zone));
    t.setAttribute("datetime", iso);
    t.title = F.stamp(d, zone) + " " + zone;
    return t;
  }
  function anchorId(scope) {
    return "s-" + scope.replace(/[^A-Za-z0-9_-]/g, function (c) { return "_" + c.charCodeAt(0).toString(16); });
  }
  function label(l) { return l.metric.replace(/_/g, " ") + " / " + l.period + (l.kind === "rate" ? " (rate)" : ""); }
  function stateText(s) { return s.replace("_", " "); }
  // a rate limit's bar is its bucket: taken of burst (its limit is the rate per period)
  function capacity(l) { return l.burst !== null && l.burst !== undefined ? l.burst : l.limit; }

  // the tree of one page: `state` is the page's (org, zone, selected, nodes, rows, ...);
  // onSelect(node) runs when a scope is picked
  function Tree(state, onSelect) {
    // one limit: name, an SVG bar (used solid, reserved grey, full width = the limit), the
    // numbers, and a line with the mode, the reset time and the forecast
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
      var nums = el("span", "nums"), meta = el("span", "meta");
      row.appendChild(name); row.appendChild(bar); row.appendChild(nums); row.appendChild(meta);
      row._parts = { name: name, bar: bar, title: title, used: used, res: res, nums: nums, meta: meta, sig: "" };
      return row;
    }
    function forecastText(l) {
      var f = l.forecast;
      if (!f || f.projected === null || f.projected === undefined) return "";
      return "forecast " + F.amount(l.metric, f.projected) + " at reset" +
        (f.will_exceed ? " (exceeds" + (f.exhausts_at ? " " + F.when(new Date(f.exhausts_at), state.zone) : "") + ")" : "");
    }
    function updateLimit(row, l) {
      var p = row._parts, lim = F.num(capacity(l)), u = F.num(l.used), r = F.num(l.reserved);
      var wu = lim > 0 ? Math.min(100, 100 * u / lim) : (u > 0 ? 100 : 0);
      var wr = lim > 0 ? Math.min(100 - wu, 100 * r / lim) : 0;
      var fc = F.forecastExceeds(l) && l.state === "ok";
      row.className = "limit state-" + l.state + (fc ? " forecast-exceeds" : "");
      p.name.textContent = label(l);
      p.used.setAttribute("width", wu.toFixed(2));
      p.res.setAttribute("x", wu.toFixed(2));
      p.res.setAttribute("width", wr.toFixed(2));
      var text = "used " + F.amount(l.metric, l.used) + (r > 0 ? " + reserved " + F.amount(l.metric, l.reserved) : "") +
        " of " + F.amount(l.metric, capacity(l)) + (l.kind === "rate" ? " (burst; " + F.amount(l.metric, l.limit) + " " + l.period + ")" : "") +
        " (" + F.percent(l.percent) + ", " + stateText(l.state) + ", " + l.mode + ")" +
        (l.resets_at ? ", resets " + F.when(new Date(l.resets_at), state.zone) + " " + state.zone : "") +
        (forecastText(l) ? ", " + forecastText(l) : "");
      p.bar.setAttribute("aria-label", label(l) + ": " + text);
      p.title.textContent = text;
      var sig = JSON.stringify([l.used, l.reserved, l.limit, l.burst, l.percent, l.mode, l.resets_at, l.forecast || null, state.zone]);
      if (sig === p.sig) return;
      p.sig = sig;
      p.nums.textContent = "";
      p.nums.appendChild(amountEl(l.metric, l.used));
      if (r > 0) { p.nums.appendChild(document.createTextNode(" + ")); p.nums.appendChild(amountEl(l.metric, l.reserved)); }
      p.nums.appendChild(document.createTextNode(" / "));
      p.nums.appendChild(amountEl(l.metric, capacity(l)));
      p.nums.appendChild(el("span", "pct", " · " + F.percent(l.percent)));
      p.meta.textContent = "";
      p.meta.appendChild(el("span", "mode mode-" + l.mode, l.mode));
      if (l.kind === "rate") p.meta.appendChild(document.createTextNode(" · refills " + F.amount(l.metric, l.limit) + " " + l.period));
      if (l.resets_at) { p.meta.appendChild(document.createTextNode(" · resets ")); p.meta.appendChild(timeEl(l.resets_at, state.zone)); }
      var ft = forecastText(l);
      if (ft) p.meta.appendChild(el("span", "fc" + (F.forecastExceeds(l) ? " exceeds" : ""), " · " + ft));
    }

    function nodeName(n) {
      if (n.agent) return "agent " + n.agent;
      if (n.user) return "user " + n.user;
      if (n.team) return "team " + n.team;
      return "org " + state.org;
    }
    function leafName(n) { return n.agent || n.user || n.team || n.scope; }

    // children of a scope come in two groups (agents; teams and users), each an ordered list
    // of active scopes followed by a fold ("12 idle users") holding the idle ones
    function group(parentLi, cls, text) {
      var ul = el("ul", cls);
      ul.setAttribute("aria-label", text);
      var fold = el("li", "fold"), details = el("details"), summary = el("summary");
      var idle = el("ul", cls + " idle");
      idle.setAttribute("aria-label", "idle: " + text);
      details.appendChild(summary); details.appendChild(idle); fold.appendChild(details);
      parentLi.appendChild(ul);
      return { ul: ul, fold: fold, details: details, summary: summary, idle: idle };
    }

    function buildTree(scopes) {
      var root = $("tree");
      root.textContent = "";
      state.nodes = {}; state.rows = {}; state.order = "";
      scopes.forEach(function (n, i) {
        var li = el("li", "node level-" + n.level);
        li.dataset.scope = n.scope;
        li.id = anchorId(n.scope);
        li.tabIndex = -1;
        var head = el("div", "head");
        var btn = el("button", "pick", nodeName(n));
        btn.type = "button";
        btn.title = n.scope;
        btn.setAttribute("aria-label", "Show trend of " + n.scope);
        btn.addEventListener("click", function () { onSelect(state.nodes[n.scope].data); });
        head.appendChild(btn);
        var badge = el("span", "badge");
        head.appendChild(badge);
        var below = el("span", "below small");
        head.appendChild(below);
        li.appendChild(head);
        var limits = el("div", "limits");
        li.appendChild(limits);
        state.nodes[n.scope] = { li: li, limits: limits, badge: badge, below: below, btn: btn, data: n,
                                 name: leafName(n), groups: {} };
        state.nodes[n.scope].groups.agents = group(li, "agents", "agents of " + n.scope);
        state.nodes[n.scope].groups.kids = group(li, "children", "teams and users under " + n.scope);
        if (i === 0 && !state.selected) state.selected = n.scope;
      });
    }

    // urgency of each scope and of its subtree; order siblings most urgent first
    function arrange(scopes) {
      var info = {};
      scopes.forEach(function (n) { info[n.scope] = { n: n, u: F.urgency(n.limits), name: leafName(n), kids: [] }; });
      scopes.forEach(function (n) { info[n.scope].sub = info[n.scope].u; });
      for (var i = scopes.length - 1; i >= 0; i--) {  // children come after their parent
        var me = info[scopes[i].scope], parent = scopes[i].parent && info[scopes[i].parent];
        if (parent) { parent.sub = F.worse(parent.sub, me.sub); parent.kids.push(me); }
      }
      var order = [];
      scopes.forEach(function (n) {
        var me = info[n.scope];
        me.idle = !!n.parent && me.sub.rank === 0 && me.sub.taken === 0;
        me.kids.sort(function (a, b) { return F.compare({ u: a.sub, name: a.name }, { u: b.sub, name: b.name }); });
        order.push(n.scope + ">" + me.kids.map(function (k) { return (k.idle ? "~" : "") + k.n.scope; }).join(","));
      });
      var sig = order.join(";");
      if (sig === state.order) return info;
      state.order = sig;
      var focused = document.activeElement;
      var root = $("tree");
      scopes.forEach(function (n) {
        var me = info[n.scope], node = state.nodes[n.scope];
        if (!n.parent || !state.nodes[n.parent]) { root.appendChild(node.li); }
        ["agents", "kids"].forEach(function (g) {
          var grp = node.groups[g];
          var kids = me.kids.filter(function (k) { return (g === "agents") === !!k.n.agent; });
          var active = kids.filter(function (k) { return !k.idle; }), idle = kids.filter(function (k) { return k.idle; });
          active.forEach(function (k) { grp.ul.appendChild(state.nodes[k.n.scope].li); });
          idle.forEach(function (k) { grp.idle.appendChild(state.nodes[k.n.scope].li); });
          if (idle.length) {
            grp.summary.textContent = idleSummary(idle);
            grp.ul.appendChild(grp.fold);
          } else if (grp.fold.parentNode) { grp.fold.remove(); }
          grp.ul.hidden = !kids.length;
        });
      });
      if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus({ preventScroll: true });
      return info;
    }
    function idleSummary(idle) {
      var byLevel = {};
      idle.forEach(function (k) { byLevel[k.n.level] = (byLevel[k.n.level] || 0) + 1; });
      var words = { team: "team", user: "user", agent: "agent" };
      return Object.keys(byLevel).map(function (lv) {
        return byLevel[lv] + " idle " + words[lv] + (byLevel[lv] === 1 ? "" : "s");
      }).join(", ") + " (no usage)";
    }

    function renderScopes(scopes) {
      var structure = scopes.map(function (n) {
        return n.scope + "|" + n.limits.map(function (l) { return l.kind + l.metric + l.period; }).join(",");
      }).join(";");
      if (structure !== state.structure) { buildTree(scopes); state.structure = structure; }
      var info = arrange(scopes);
      var changes = [], counts = { blocked: [], soft_exceeded: [], forecast: [] };
      scopes.forEach(function (n) {
        var node = state.nodes[n.scope]; if (!node) return;
        node.data = n;
        n.limits.forEach(function (l) {
          var key = n.scope + "|" + l.kind + "|" + l.metric + "|" + l.period;
          var row = state.rows[key];
          if (!row) { row = limitRow(key); state.rows[key] = row; node.limits.appendChild(row); }
          updateLimit(row, l);
          if (state.states[key] && state.states[key] !== l.state) {
            changes.push(n.scope + " " + label(l) + " is now " + stateText(l.state));
          }
          state.states[key] = l.state;
        });
        var me = info[n.scope], own = F.rankName(me.u.rank);
        if (own !== "ok") counts[own].push({ scope: n.scope, limits: n.limits });
        if (!n.limits.length) node.limits.textContent = "no limits";
        node.li.className = "node level-" + n.level + " state-" + own + (me.idle ? " idle" : "") +
          (n.scope === state.selected ? " selected" : "");
        node.badge.textContent = n.limits.length ? (own === "forecast" ? "forecast to exceed" : stateText(own)) : "";
        node.badge.className = "badge " + (n.limits.length ? own : "");
        var sub = me.sub.rank > me.u.rank ? F.rankName(me.sub.rank) : "";
        node.below.textContent = sub ? (sub === "forecast" ? "forecast to exceed" : stateText(sub)) + " below" : "";
        node.below.className = "below small " + sub;
      });
      // a sidecar without forecasts gets no "0 forecast to exceed" that would claim it checked
      var forecasts = scopes.some(function (n) { return n.limits.some(function (l) { return "forecast" in l; }); });
      renderCounts(counts, forecasts);
      return { changes: changes, counts: counts, forecasts: forecasts };
    }

    // header counts link to a list of exactly those scopes, each linking to its tree node
    var CATS = [["blocked", "blocked"], ["soft_exceeded", "soft exceeded"], ["forecast", "forecast to exceed"]];
    function renderCounts(counts, forecasts) {
      var sig = JSON.stringify([forecasts, CATS.map(function (c) { return counts[c[0]].map(function (x) {
        return x.scope + x.limits.map(function (l) { return l.state + l.percent; }).join(); }); })]);
      if (sig === state.attention) return;
      state.attention = sig;
      var nav = $("counts"), box = $("attention"), any = false;
      nav.textContent = ""; box.textContent = "";
      CATS.forEach(function (c) {
        var list = counts[c[0]];
        if (c[0] === "forecast" && !forecasts) return;
        if (!list.length) { nav.appendChild(el("span", "count none", "0 " + c[1])); return; }
        any = true;
        var a = el("a", "count " + c[0], list.length + " " + c[1]);
        a.href = "#attn-" + c[0];
        nav.appendChild(a);
        var h = el("h3", "attn-h " + c[0], c[1][0].toUpperCase() + c[1].slice(1) + " (" + list.length + ")");
        h.id = "attn-" + c[0]; h.tabIndex = -1;
        box.appendChild(h);
        var ul = el("ul", "attn-list");
        list.forEach(function (x) {
          var li = el("li"), link = scopeEl("a", "scope", x.scope);
          link.href = "#" + anchorId(x.scope);
          link.addEventListener("click", function (e) {
            var node = state.nodes[x.scope]; if (!node) return;
            e.preventDefault();
            node.li.scrollIntoView({ block: "center" });
            node.btn.focus({ preventScroll: true });
          });
          li.appendChild(link);
          var worst = x.limits.filter(function (l) { return F.rankName(F.limitRank(l)) === c[0]; })[0];
          if (worst) li.appendChild(el("span", "muted small", " " + label(worst) + " · " + F.percent(worst.percent)));
          ul.appendChild(li);
        });
        box.appendChild(ul);
      });
      box.hidden = !any;
    }
    return { renderScopes: renderScopes };
  }

  root.BLT = { el: el, svg: svg, scopeText: scopeText, scopeEl: scopeEl, amountEl: amountEl,
               timeEl: timeEl, anchorId: anchorId, label: label, stateText: stateText,
               capacity: capacity, Tree: Tree };
})(window);
