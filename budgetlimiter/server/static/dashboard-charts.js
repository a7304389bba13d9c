/* budgetlimiter dashboard: the trend chart and the forecast chart, as inline SVG drawn at the
   box's own pixel width (so axis text is real 12 px, not scaled down). */
"use strict";
(function (root) {
  var F = root.BLF, NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function titled(e, text) { e.appendChild(svg("title", {}, text)); return e; }
  function width(box) { return Math.max(260, Math.floor(box.clientWidth || 0) || 480); }
  // evenly spaced indices 0..n-1, first and last included, at most `room` of them
  function spread(n, room) {
    if (n <= 0) return [];
    var k = Math.max(2, Math.min(n, room)), out = [];
    for (var i = 0; i < k; i++) {
      var idx = Math.round(i * (n - 1) / (k - 1));
      if (out.indexOf(idx) < 0) out.push(idx);
    }
    return out;
  }
  function yAxis(s, o) {
    o.ticks.forEach(function (v) {
      var y = o.y(v);
      s.appendChild(svg("line", { "class": "grid", x1: o.L, x2: o.W - o.R, y1: y, y2: y }));
      s.appendChild(svg("text", { "class": "axis y-tick", x: o.L - 6, y: y + 4, "text-anchor": "end" },
                        F.tick(o.metric, v)));
    });
    s.appendChild(svg("text", { "class": "axis axis-title y-title", x: 4, y: 12 }, o.yTitle));
  }
  function yScale(max, T, H, B) {
    var ticks = F.ticks(max, 4), top = ticks[ticks.length - 1] || 1;
    return { ticks: ticks, y: function (v) { return T + (H - T - B) * (1 - v / top); } };
  }
  function leftMargin(metric, ticks) {
    var longest = Math.max.apply(null, ticks.map(function (v) { return F.tick(metric, v).length; }));
    return 12 + 7 * longest;
  }
  var UNIT = { cost: "USD", total_tokens: "tokens", input_tokens: "tokens", output_tokens: "tokens",
               invocations: "calls" };

  // usage per day/week/month over the chosen span; x labels are the org's calendar days
  function drawTrend(box, series, o) {
    box.textContent = "";
    var W = width(box), H = 220, T = 24, B = 40, R = 8;
    var vals = series.map(function (p) { return F.num(p.value); });
    var max = Math.max.apply(null, [0].concat(vals));
    var total = vals.reduce(function (a, b) { return a + b; }, 0);
    var sc = yScale(max, T, H, B), L = leftMargin(o.metric, sc.ticks);
    var s = svg("svg", { "class": "trend", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    var desc = o.metric.replace(/_/g, " ") + " per " + o.gran + " for " + o.scope + ", " + o.span +
      ": total " + F.amount(o.metric, total) + ", peak " + F.amount(o.metric, max);
    s.setAttribute("aria-label", desc);
    s.appendChild(svg("title", {}, desc));
    yAxis(s, { ticks: sc.ticks, y: sc.y, L: L, W: W, R: R, metric: o.metric,
               yTitle: (UNIT[o.metric] || o.metric) + " per " + o.gran });
    var n = Math.max(1, series.length), bw = (W - L - R) / n;
    series.forEach(function (p, i) {
      var y = sc.y(F.num(p.value)), base = sc.y(0);
      s.appendChild(titled(svg("rect", { "class": "tbar", x: L + i * bw + (bw > 4 ? 1 : 0), y: y,
                                         width: Math.max(1, bw - (bw > 4 ? 2 : 0)), height: base - y }),
                           F.dayLabel(p.period) + ": " + F.amount(o.metric, p.value) + " (exact " +
                           F.exact(o.metric, p.value) + ")"));
    });
    s.appendChild(svg("line", { "class": "axis-line", x1: L, x2: W - R, y1: sc.y(0), y2: sc.y(0) }));
    var room = Math.max(2, Math.floor((W - L - R) / 64));
    spread(series.length, room).forEach(function (i, k, all) {
      // the first and last label align with the plot's edges so they are never cut off
      var edge = all.length > 1 && (k === 0 || k === all.length - 1);
      var x = edge ? (k === 0 ? L + i * bw : L + (i + 1) * bw) : L + (i + 0.5) * bw;
      s.appendChild(svg("text", { "class": "axis x-tick", x: x, y: H - B + 16,
                                  "text-anchor": edge ? (k === 0 ? "start" : "end") : "middle" },
                        F.dayLabel(series[i].period)));
    });
    s.appendChild(svg("text", { "class": "axis axis-title x-title", x: L + (W - L - R) / 2, y: H - 6,
                                "text-anchor": "middle" }, o.xTitle));
    box.appendChild(s);
    box.appendChild(el("p", "muted small", desc));
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  // the org's local time as a fractional day number (x axis of the forecast chart)
  function localX(date, zone) {
    var t = F.stamp(date, zone);
    return F.dayNumber(t.slice(0, 10)) + (parseInt(t.slice(11, 13), 10) * 60 + parseInt(t.slice(14, 16), 10)) / 1440;
  }
  function periodStart(end, period) {
    if (period === "day") return end - 1;
    if (period === "week") return end - 7;
    if (period === "month") {
      var d = new Date(end * 86400000);
      return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - 1, d.getUTCDate()) / 86400000;
    }
    return null;  // minute/hour periods: too short to chart in days
  }

  // One budget to its period end: used so far (from the daily trend when it covers the
  // period, else a straight line from the period start), the forecast as a dashed line from
  // now to the projection at the period end, and the limit.
  function drawForecast(box, l, o) {
    var f = l.forecast, end = localX(new Date(f.period_end), o.zone);
    var start = periodStart(Math.round(end), l.period), now = localX(o.now, o.zone);
    if (start === null || !(now > start)) return false;
    var used = F.num(l.used !== null && l.used !== undefined ? l.used : l.taken);
    var projected = f.projected === null ? null : F.num(f.projected), limit = F.num(l.limit);
    var W = width(box), H = 180, T = 24, B = 40, R = 12;
    var sc = yScale(Math.max(limit, used, projected || 0), T, H, B), L = leftMargin(l.metric, sc.ticks);
    var x = function (d) { return L + (W - L - R) * (d - start) / (end - start); };
    var s = svg("svg", { "class": "trend forecast-chart", width: W, height: H,
                         viewBox: "0 0 " + W + " " + H, role: "img" });
    var desc = o.label + ": " + F.amount(l.metric, used) + " used; " + (projected === null
      ? "too little data to forecast" : "forecast " + F.amount(l.metric, projected) + " by " +
        F.when(new Date(f.period_end), o.zone)) + " (limit " + F.amount(l.metric, limit) + ")" +
      (f.exhausts_at ? ", limit reached " + F.when(new Date(f.exhausts_at), o.zone) : "");
    s.setAttribute("aria-label", desc);
    s.appendChild(svg("title", {}, desc));
    yAxis(s, { ticks: sc.ticks, y: sc.y, L: L, W: W, R: R, metric: l.metric,
               yTitle: (UNIT[l.metric] || l.metric) + " this " + l.period });
    s.appendChild(svg("line", { "class": "axis-line", x1: L, x2: W - R, y1: sc.y(0), y2: sc.y(0) }));
    // x: the period's days, or for a one-day period its hours
    var marks = [], room = Math.max(2, Math.floor((W - L - R) / 56));
    if (end - start <= 1.5) {
      var step = [3, 4, 6, 12].filter(function (h) { return 24 / h + 1 <= room; })[0] || 12;
      for (var h = 0; h <= 24; h += step) {
        marks.push([start + h / 24, h % 24 ? (h < 10 ? "0" : "") + h + ":00" : F.dayLabel(F.dayString(start + h / 24))]);
      }
    } else {
      var days = [];
      for (var d = Math.ceil(start); d <= Math.floor(end); d++) days.push(d);
      spread(days.length, room).forEach(function (i) { marks.push([days[i], F.dayLabel(F.dayString(days[i]))]); });
    }
    marks.forEach(function (m, k) {
      var anchor = k === 0 ? "start" : (k === marks.length - 1 ? "end" : "middle");
      s.appendChild(svg("text", { "class": "axis x-tick", x: x(m[0]), y: H - B + 16, "text-anchor": anchor }, m[1]));
    });
    s.appendChild(svg("text", { "class": "axis axis-title x-title", x: L + (W - L - R) / 2, y: H - 6,
                                "text-anchor": "middle" }, (end - start <= 1.5 ? "hours in " : "days in ") + o.zone));
    s.appendChild(titled(svg("line", { "class": "limit-line", x1: L, x2: W - R, y1: sc.y(limit), y2: sc.y(limit) }),
                         "limit " + F.amount(l.metric, limit)));
    // used so far: cumulative daily trend inside this period when the chart above has it
    var pts = [[start, 0]], acc = 0;
    (o.daily || []).forEach(function (p) {
      var day = F.dayNumber(p.period);
      if (day < start || day + 1 > now) return;
      acc += F.num(p.value); pts.push([day + 1, acc]);
    });
    pts.push([now, used]);
    s.appendChild(titled(svg("polyline", { "class": "used-line", points: pts.map(function (p) {
      return x(p[0]).toFixed(1) + "," + sc.y(p[1]).toFixed(1); }).join(" ") }),
      "used so far " + F.amount(l.metric, used)));
    if (projected !== null) {
      s.appendChild(titled(svg("line", { "class": "forecast-line" + (f.will_exceed ? " exceeds" : ""),
                                         x1: x(now), y1: sc.y(used), x2: x(end), y2: sc.y(projected) }),
                           "forecast " + F.amount(l.metric, projected) + " (exact " +
                           F.exact(l.metric, f.projected) + ") at " + F.when(new Date(f.period_end), o.zone)));
      if (f.exhausts_at) {
        var ex = localX(new Date(f.exhausts_at), o.zone);
        if (ex >= start && ex <= end) {
          s.appendChild(titled(svg("circle", { "class": "exhaust", cx: x(ex), cy: sc.y(limit), r: 4 }),
                               "limit reached " + F.when(new Date(f.exhausts_at), o.zone)));
        }
      }
    }
    s.appendChild(svg("line", { "class": "now-line", x1: x(now), x2: x(now), y1: T, y2: sc.y(0) }));
    var right = x(now) > W - 40;  // "now" inside the plot, beside its line
    s.appendChild(svg("text", { "class": "axis now-label", x: x(now) + (right ? -4 : 4), y: T + 12,
                                "text-anchor": right ? "end" : "start" }, "now"));
    var fig = el("figure", "forecast-fig");
    fig.appendChild(s);
    fig.appendChild(el("figcaption", "muted small", desc + (f.window_seconds
      ? " (burn rate over the last " + span(f.window_seconds) + ")" : "")));
    box.appendChild(fig);
    return true;
  }
  function span(sec) {
    if (sec % 86400 === 0) return sec / 86400 + (sec === 86400 ? " day" : " days");
    if (sec % 3600 === 0) return sec / 3600 + (sec === 3600 ? " hour" : " hours");
    return Math.round(sec / 60) + " min";
  }

  root.BLC = { drawTrend: drawTrend, drawForecast: drawForecast };
})(window);
