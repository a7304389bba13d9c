/* budgetlimiter dashboard: formatting and ordering helpers (pure functions, no DOM). */
"use strict";
(function (root) {
  var GROUP = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  var CENTS = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  var NATURAL = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

  function num(v) { var n = parseFloat(v); return isFinite(n) ? n : 0; }

  // Money for reading: whole cents from $1 up, three significant digits below (a budget of
  // $0.001 must not read "$0.00"); the exact decimal string goes in a title for hover.
  function money(v) {
    if (v === null || v === undefined) return "–";
    var n = num(v), a = Math.abs(n), sign = n < 0 ? "-" : "";
    if (a === 0) return "$0";
    if (a >= 0.995) return sign + "$" + CENTS.format(a);
    var s = a.toPrecision(3);
    if (s.indexOf("e") >= 0) s = a.toFixed(6);
    // trailing zeros go, but never below two decimals ($0.50, $0.0025, $0.123)
    if (s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.(\d)$/, ".$10").replace(/\.$/, ".00");
    return sign + "$" + s;
  }
  // an axis tick: round steps need no cents ($1,000, $2.50 stays, $0.05)
  function tick(metric, v) {
    if (metric !== "cost") return count(v);
    return v >= 1 && v === Math.round(v) ? "$" + GROUP.format(v) : money(v);
  }
  function exactMoney(v) { return v === null || v === undefined ? "–" : "$" + v; }
  function count(v) { return v === null || v === undefined ? "–" : GROUP.format(num(v)); }
  function amount(metric, v) { return metric === "cost" ? money(v) : count(v); }
  function exact(metric, v) { return metric === "cost" ? exactMoney(v) : String(v); }
  // a percent never reads 100% before the limit is reached
  function percent(p) {
    var n = num(p);
    if (n >= 100) return Math.round(n) + "%";
    if (n > 0 && n < 10) return (Math.floor(n * 10) / 10) + "%";
    return Math.floor(n) + "%";
  }
  // axis ticks: 0 and round steps (1, 2, 5 x 10^k) up to at least max
  function ticks(max, wanted) {
    if (!(max > 0)) return [0, 1];
    var raw = max / (wanted || 4), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; })
      .filter(function (s) { return s >= raw; })[0];
    var out = [];
    for (var v = 0; v < max + step / 2; v += step) out.push(+v.toPrecision(12));
    if (out[out.length - 1] < max) out.push(+(out[out.length - 1] + step).toPrecision(12));
    return out;
  }

  // Times: always in one zone (the org's), labelled once on the page.
  var cache = {};
  function parts(date, zone) {
    var f = cache[zone];
    if (!f) {
      f = cache[zone] = new Intl.DateTimeFormat("en-US", {
        timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", weekday: "short" });
    }
    var o = {};
    f.formatToParts(date).forEach(function (p) { o[p.type] = p.value; });
    return o;
  }
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  function monthName(m) { return MONTHS[parseInt(m, 10) - 1]; }
  // "Thu 3 Dec 00:00"
  function when(date, zone) {
    var p = parts(date, zone);
    return p.weekday + " " + parseInt(p.day, 10) + " " + monthName(p.month) + " " + p.hour + ":" + p.minute;
  }
  // "2026-12-03 00:00"
  function stamp(date, zone) {
    var p = parts(date, zone);
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute;
  }
  function clock(date, zone) { var p = parts(date, zone); return p.hour + ":" + p.minute + ":" + p.second; }
  // the org's calendar day as "YYYY-MM-DD"
  function localDay(date, zone) { var p = parts(date, zone); return p.year + "-" + p.month + "-" + p.day; }
  // "GMT-5" for the zone label
  function offset(date, zone) {
    try {
      var f = new Intl.DateTimeFormat("en-US", { timeZone: zone, timeZoneName: "shortOffset" });
      var z = f.formatToParts(date).filter(function (p) { return p.type === "timeZoneName"; })[0];
      return z ? z.value : "";
    } catch (e) { return ""; }
  }
  // calendar-day arithmetic on "YYYY-MM-DD" (no zone: days of the org's calendar)
  function dayNumber(s) {
    var m = /^(\d{4})-(\d{2})(?:-(\d{2}))?/.exec(s);
    return m ? Date.UTC(+m[1], +m[2] - 1, m[3] ? +m[3] : 1) / 86400000 : 0;
  }
  function dayString(n) { return new Date(n * 86400000).toISOString().slice(0, 10); }
  // "3 Dec" for a day, "Dec 2026" for a month label "YYYY-MM"
  function dayLabel(s) {
    var m = /^(\d{4})-(\d{2})(?:-(\d{2}))?$/.exec(s);
    if (!m) return s;
    return m[3] ? parseInt(m[3], 10) + " " + monthName(m[2]) : monthName(m[2]) + " " + m[1];
  }

  // Urgency: blocked, soft exceeded, forecast to exceed, then by percent.
  var RANK = { blocked: 3, soft_exceeded: 2, forecast: 1, ok: 0 };
  function forecastExceeds(l) { return !!(l.forecast && l.forecast.will_exceed); }
  function limitRank(l) {
    if (l.state === "blocked") return 3;
    if (l.state === "soft_exceeded") return 2;
    return forecastExceeds(l) ? 1 : 0;
  }
  function rankName(r) { return ["ok", "forecast", "soft_exceeded", "blocked"][r]; }
  function urgency(limits) {
    var u = { rank: 0, percent: 0, taken: 0 };
    limits.forEach(function (l) {
      u.rank = Math.max(u.rank, limitRank(l));
      u.percent = Math.max(u.percent, num(l.percent));
      u.taken += num(l.taken);
    });
    return u;
  }
  function worse(a, b) {
    return { rank: Math.max(a.rank, b.rank), percent: Math.max(a.percent, b.percent), taken: a.taken + b.taken };
  }
  // most urgent first; equal urgency in natural order (u2 before u10)
  function compare(a, b) {
    return (b.u.rank - a.u.rank) || (b.u.percent - a.u.percent) || NATURAL.compare(a.name, b.name);
  }

  root.BLF = { num: num, money: money, exactMoney: exactMoney, count: count, amount: amount,
               exact: exact, percent: percent, tick: tick, ticks: ticks, when: when, stamp: stamp, clock: clock,
               localDay: localDay, offset: offset, dayNumber: dayNumber, dayString: dayString,
               dayLabel: dayLabel, monthName: monthName, forecastExceeds: forecastExceeds,
               limitRank: limitRank, rankName: rankName, urgency: urgency, worse: worse,
               compare: compare, natural: NATURAL.compare };
})(window);
