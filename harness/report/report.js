// qae report: the interactive fronts and the reviewer's charts, drawn with the inlined plotly.js from
// the JSON block #qae-data (harness/report/interactive.py). Nothing here reaches the network, except
// a page served live (window.QAE_LIVE), which asks its own server whether the archive changed.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("qae-data").textContent);
  var STATE_KEY = "qae-report-state";
  var state = {};
  try { state = JSON.parse(sessionStorage.getItem(STATE_KEY) || "{}"); } catch (e) { state = {}; }
  var SYMBOL = { measured: "star", predicted: "circle", simulated: "diamond", computed: "square" };
  var COLOUR = { measured: "#d62728", predicted: "#1f77b4", simulated: "#9467bd", computed: "#2ca02c" };
  var GREY = "#cfcfcf";
  var CONFIG = { displaylogo: false, responsive: true };

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function num(v) {
    if (v === null || v === undefined) return "-";
    var a = Math.abs(v);
    return a >= 100 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(3);
  }
  function objectivesOf(t) {
    var names = [];
    Object.keys(DATA.objectives).forEach(function (o) {
      if (t.points.some(function (p) { return p.values[o]; })) names.push(o);
    });
    return names;
  }
  function hover(t, p) {
    var lines = ["<b>" + p.id + "</b>" + (p.baseline ? " (uniform baseline " + esc(p.baseline) + ")" : "") +
                 (p.recommended ? " ★ recommended" : "")];
    lines.push(p.front ? "on the front" : "not on the front" + (p.feasible ? "" : ", over the run's budgets"));
    objectivesOf(t).forEach(function (o) {
      var v = p.values[o];
      if (!v) return;
      var ci = v.ci ? " [" + num(v.ci[0]) + ", " + num(v.ci[1]) + "]" : "";
      lines.push(esc(DATA.objectives[o].label) + ": " + num(v.v) + ci + " <i>" + v.source +
                 (v.words ? ", " + esc(v.words) : "") + "</i>");
    });
    if (p.test) {
      var tci = p.test.ci ? " [" + num(p.test.ci[0]) + ", " + num(p.test.ci[1]) + "]" : "";
      lines.push("on test: " + num(p.test.v) + tci + " <i>computed, test, n=" + p.test.n + ", 95 % interval</i>");
    }
    if (p.finetuned) lines.push(esc(p.finetuned));
    lines.push("emulated: " + (p.emulated ? "yes (accuracy exact, size nominal, no speed-up)" : "no"));
    lines.push("layers: " + esc(p.summary));
    return lines.join("<br>");
  }
  function tstate(t) {
    state[t.slug] = state[t.slug] || {};
    return state[t.slug];
  }
  function saveState() {
    try { sessionStorage.setItem(STATE_KEY, JSON.stringify(state)); } catch (e) { /* private mode */ }
  }
  function range(t, o) {
    var vs = t.points.filter(function (p) { return p.values[o]; }).map(function (p) { return p.values[o].v; });
    return [Math.min.apply(null, vs), Math.max.apply(null, vs)];
  }
  function meets(t, p) {
    var s = tstate(t);
    return Object.keys(s.limits || {}).every(function (o) {
      var v = p.values[o];
      if (!v || s.limits[o] === null) return true;  // a slider at its end sets no limit
      return DATA.objectives[o].higher ? v.v >= s.limits[o] - 1e-12 : v.v <= s.limits[o] + 1e-12;
    });
  }

  function traces(t) {
    var s = tstate(t);
    var groups = {};
    function add(key, name, marker, p) {
      if (!groups[key]) groups[key] = { type: "scatter", mode: "markers", name: name, x: [], y: [], text: [],
        customdata: [], hoverinfo: "text", marker: marker };
      var g = groups[key];
      g.x.push(p.values[s.x].v); g.y.push(p.values[s.y].v); g.text.push(hover(t, p)); g.customdata.push(p.id);
    }
    t.points.forEach(function (p) {
      if (!p.values[s.x] || !p.values[s.y]) return;
      var ok = meets(t, p);
      var src = (p.values.latency || {}).source || "computed";
      if (!p.front) {
        add(ok ? "other" : "other-out", ok ? "other candidates" : "other, outside the sliders' budgets",
            ok ? { color: "#9a9a9a", size: 6, opacity: 0.7 } : { color: "#c8c8c8", size: 7, symbol: "circle-open" }, p);
      } else if (!ok) {
        add("out-" + src, "front, outside the sliders' budgets",
            { color: GREY, size: 11, symbol: SYMBOL[src], line: { color: "#aaa", width: 1 } }, p);
      } else {
        add("front-" + src + (p.emulated ? "-emu" : ""), "front, latency " + src + (p.emulated ? ", emulated" : ""),
            { color: COLOUR[src], size: src === "measured" ? 15 : 11, symbol: SYMBOL[src],
              line: { color: p.emulated ? "#ff7f0e" : "black", width: p.emulated ? 2.5 : 0.8 } }, p);
      }
    });
    var out = Object.keys(groups).sort().map(function (k) { return groups[k]; });
    // baselines: a labelled cross over the point they are
    var base = { type: "scatter", mode: "markers+text", name: "uniform baselines", x: [], y: [], text: [],
      textposition: "bottom right", hoverinfo: "skip", cliponaxis: false,
      marker: { symbol: "x-thin-open", size: 16, color: "#aa0000", line: { width: 2, color: "#aa0000" } },
      textfont: { color: "#aa0000", size: 11 } };
    t.points.forEach(function (p) {
      if (p.baseline && p.values[s.x] && p.values[s.y]) {
        base.x.push(p.values[s.x].v); base.y.push(p.values[s.y].v); base.text.push(p.baseline);
      }
    });
    if (base.x.length) out.push(base);
    // fine-tuned points (qae finetune): a green ring over the point; the hover says its parent and gain
    var tuned = { type: "scatter", mode: "markers", name: "fine-tuned (QAT)", x: [], y: [], hoverinfo: "skip",
      marker: { symbol: "diamond-open", size: 19, color: "#2ca02c", line: { width: 2, color: "#2ca02c" } } };
    t.points.forEach(function (p) {
      if (p.finetuned && p.values[s.x] && p.values[s.y]) { tuned.x.push(p.values[s.x].v); tuned.y.push(p.values[s.y].v); }
    });
    if (tuned.x.length) out.push(tuned);
    var rec = t.points.find(function (p) { return p.recommended; });
    if (rec && rec.values[s.x] && rec.values[s.y]) {
      out.push({ type: "scatter", mode: "markers", name: "recommended (weighted over the front)", hoverinfo: "skip",
        x: [rec.values[s.x].v], y: [rec.values[s.y].v],
        marker: { symbol: "circle-open", size: 24, color: "#e0a800", line: { width: 2.5, color: "#e0a800" } } });
    }
    return out;
  }

  function layout(t) {
    var s = tstate(t);
    return {
      title: { text: "Pareto front on " + esc(t.name) + (t.feasible ? "" : " (no candidate met the budgets)"),
               font: { size: 14 } },
      xaxis: { title: { text: DATA.objectives[s.x].label }, automargin: true },
      yaxis: { title: { text: DATA.objectives[s.y].label }, automargin: true },
      hovermode: "closest", hoverlabel: { align: "left", font: { size: 11 } },
      margin: { l: 60, r: 20, t: 40, b: 40 }, height: 460,
      legend: { orientation: "h", y: -0.18, font: { size: 11 } }
    };
  }

  function feasibleLine(t) {
    var all = t.points.filter(function (p) { return meets(t, p); }).length;
    var front = t.points.filter(function (p) { return p.front; });
    var ok = front.filter(function (p) { return meets(t, p); }).length;
    var el = document.getElementById("feasible-" + t.slug);
    el.innerHTML = "<span class='meets'>" + ok + "</span> of " + front.length + " front points and " + all + " of " +
      t.points.length + " candidates meet the sliders' budgets; the others are grey. Marker: ★ latency measured on " +
      "a device, ● predicted by the cost model, ◆ simulated device; an orange outline is an emulated width.";
    el.dataset.meets = ok;
  }

  function draw(t) {
    Plotly.react("plot-" + t.slug, traces(t), layout(t), CONFIG);
    feasibleLine(t);
  }

  function details(t, id) {
    var p = t.points.find(function (q) { return q.id === id; });
    if (!p) return;
    tstate(t).picked = id;
    saveState();
    var rows = p.genes.map(function (g) {
      return "<tr>" + g.map(function (v, i) {
        return "<td" + (i === 0 ? " class='l'" : "") + ">" + esc(v === null || v === undefined ? "" : v) + "</td>";
      }).join("") + "</tr>";
    }).join("");
    document.getElementById("details-" + t.slug).innerHTML =
      "Export it: <code class='export' id='export-" + t.slug + "'>" + esc(p.export) + "</code><br>" + hover(t, p) +
      "<table><tr><th>layer</th><th>weight bits</th><th>activation bits</th><th>scheme</th><th>granularity</th>" +
      "<th>kernel</th><th>block</th></tr>" + rows + "</table>";
  }

  function controls(t) {
    var s = tstate(t);
    var names = objectivesOf(t);
    var searched = DATA.search_objectives.filter(function (o) { return names.indexOf(o) >= 0; });
    if (!s.x || names.indexOf(s.x) < 0) s.x = searched.indexOf("size") >= 0 ? "size" : names[1] || names[0];
    if (!s.y || names.indexOf(s.y) < 0) s.y = "accuracy";
    var box = document.getElementById("controls-" + t.slug);
    function select(axis) {
      var opts = names.map(function (o) {
        return "<option value='" + o + "'" + (s[axis] === o ? " selected" : "") + ">" + esc(DATA.objectives[o].label) +
          "</option>";
      }).join("");
      return "<label>" + axis + " axis <select id='" + axis + "-" + t.slug + "'>" + opts + "</select></label>";
    }
    var html = select("x") + select("y");
    s.limits = s.limits || {};
    names.forEach(function (o) {
      var r = range(t, o);
      if (!(r[1] > r[0])) return;
      var dflt = DATA.objectives[o].higher ? r[0] : r[1];
      if (t.budgets[o] !== undefined) dflt = Math.min(Math.max(t.budgets[o], r[0]), r[1]);
      if (s.limits[o] === undefined) s.limits[o] = dflt;
      // at its end a slider follows the range as a live page's archive grows (null: no limit)
      if (s.limits[o] !== null && (DATA.objectives[o].higher ? s.limits[o] <= r[0] : s.limits[o] >= r[1])) {
        s.limits[o] = null;
      }
      var shown = s.limits[o] === null ? (DATA.objectives[o].higher ? r[0] : r[1]) : s.limits[o];
      var step = (r[1] - r[0]) / 200;
      html += "<label>" + esc(DATA.objectives[o].label) + (DATA.objectives[o].higher ? " ≥ " : " ≤ ") +
        "<input type='range' id='budget-" + o + "-" + t.slug + "' data-objective='" + o + "' min='" + r[0] +
        "' max='" + r[1] + "' step='" + step + "' value='" + shown + "'> <span id='budget-value-" + o + "-" +
        t.slug + "'>" + num(shown) + "</span>" +
        (t.budgets[o] !== undefined ? " <span class='src'>(budget " + num(t.budgets[o]) + ")</span>" : "") +
        "</label>";
    });
    box.innerHTML = html;
    ["x", "y"].forEach(function (axis) {
      document.getElementById(axis + "-" + t.slug).addEventListener("change", function (e) {
        s[axis] = e.target.value; saveState(); draw(t);
      });
    });
    box.querySelectorAll("input[type=range]").forEach(function (el) {
      el.addEventListener("input", function (e) {
        var o = e.target.dataset.objective, v = parseFloat(e.target.value);
        var half = parseFloat(e.target.step) / 2;
        var end = DATA.objectives[o].higher ? v <= parseFloat(e.target.min) + half : v >= parseFloat(e.target.max) - half;
        s.limits[o] = end ? null : v;
        document.getElementById("budget-value-" + o + "-" + t.slug).textContent = num(v);
        saveState(); draw(t);
      });
    });
  }

  function front(t) {
    if (!document.getElementById("plot-" + t.slug)) return;
    if (!t.points.length) {
      document.getElementById("plot-" + t.slug).textContent = "No candidate was evaluated yet.";
      return;
    }
    controls(t);
    draw(t);
    var gd = document.getElementById("plot-" + t.slug);
    gd.on("plotly_click", function (ev) {
      if (ev.points && ev.points.length && ev.points[0].customdata) details(t, ev.points[0].customdata);
    });
    if (tstate(t).picked) details(t, tstate(t).picked);
  }

  function charts() {
    DATA.charts.forEach(function (c) {
      var el = document.getElementById("chart-" + c.id);
      if (el) Plotly.newPlot(el, c.data, c.layout, CONFIG);
    });
  }

  function render() {
    DATA.targets.forEach(front);
    charts();
  }

  // A live page asks its server every interval whether the archive changed; when it did, it fetches
  // the page again and swaps its content in place (plotly.js is not parsed again; axes, sliders and
  // the clicked point stay), unless the reader is hovering a point: then it waits for the tooltip to go.
  function live() {
    var info = window.QAE_LIVE;
    if (!info) return;
    var badge = document.createElement("div");
    badge.className = "live";
    badge.id = "live";
    badge.textContent = "live: refreshes as the archive grows";
    document.body.appendChild(badge);
    var busy = false;
    function update(v) {
      return fetch("/", { cache: "no-store" }).then(function (r) { return r.text(); }).then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var main = doc.getElementById("qae-main"), data = doc.getElementById("qae-data");
        if (!main || !data) { location.reload(); return; }  // not a report (an error page): show it
        var y = window.scrollY;
        document.querySelectorAll("#qae-main .js-plotly-plot").forEach(function (el) { Plotly.purge(el); });
        document.getElementById("qae-main").innerHTML = main.innerHTML;
        DATA = JSON.parse(data.textContent);
        info.version = main.dataset.version || v;
        render();
        window.scrollTo(0, y);
        badge.textContent = "live: updated " + new Date().toLocaleTimeString();
      });
    }
    setInterval(function () {
      if (busy || document.querySelector(".hoverlayer .hovertext")) return;
      busy = true;
      fetch("/version", { cache: "no-store" }).then(function (r) { return r.text(); }).then(function (v) {
        if (v && v !== info.version) return update(v);
      }).catch(function () {
        badge.textContent = "live: the server stopped; this page is its last state";
      }).then(function () { busy = false; });
    }, info.interval_ms || 1500);
  }

  render();
  if (state.scrollY) window.scrollTo(0, state.scrollY);
  live();
})();
