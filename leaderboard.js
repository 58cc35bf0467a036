// The leaderboard page's charts (written by leaderboard.py --html and served by --serve): plain JavaScript, no
// library, nothing fetched. The data is the JSON of leaderboard.py --json, embedded in the page. Every text from a
// record reaches the page through textContent or an attribute value, never as HTML.
"use strict";

const DATA = JSON.parse(document.getElementById("leaderboard-data").textContent);
const X_KEYS = { model: "model_flops", hardware: "hardware_flops" };
const X_NAMES = { model: "model FLOPs", hardware: "training hardware FLOPs" };
const CLASS_COLOURS = { small: "#1b9e77", medium: "#d95f02", large: "#7570b3", open: "#e7298a" };
const GROUP_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                       "#bcbd22", "#17becf"];
const FORECAST_FLOPS = 1e22;
const W = 560, H = 340, LEFT = 60, RIGHT = 20, TOP = 30, BOTTOM = 45;
const SVG_NS = "http://www.w3.org/2000/svg";
let axis = DATA.x;

function svgElement(name, attributes, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function formatSci(x) {
  return x === null || x === undefined ? "—" : x.toExponential(2);
}

// A chart's frame: log10 x from lo to hi FLOPs, linear y over the BPBs; returns the coordinate functions.
function frame(svg, title, xLo, xHi, yLo, yHi, yName) {
  const lx0 = Math.floor(Math.log10(xLo)), lx1 = Math.max(lx0 + 1, Math.ceil(Math.log10(xHi)));
  const pad = Math.max(0.05 * (yHi - yLo), 0.01);
  const y0 = yLo - pad, y1 = yHi + pad;
  const xOf = (x) => LEFT + (Math.log10(x) - lx0) / (lx1 - lx0) * (W - LEFT - RIGHT);
  const yOf = (y) => H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
  svg.appendChild(svgElement("text", { x: 8, y: 18, "font-size": 13, "font-weight": "bold" }, title));
  svg.appendChild(svgElement("rect", { x: LEFT, y: TOP, width: W - LEFT - RIGHT, height: H - TOP - BOTTOM,
                                       fill: "none", stroke: "#888" }));
  for (let e = lx0; e <= lx1; e++) {
    svg.appendChild(svgElement("text", { x: xOf(10 ** e), y: H - BOTTOM + 15, "text-anchor": "middle",
                                         "font-size": 10 }, "1e" + e));
  }
  for (let k = 0; k <= 4; k++) {
    const y = y0 + k * (y1 - y0) / 4;
    svg.appendChild(svgElement("text", { x: LEFT - 5, y: yOf(y) + 4, "text-anchor": "end", "font-size": 10 },
                               y.toFixed(3)));
  }
  svg.appendChild(svgElement("text", { x: (LEFT + W - RIGHT) / 2, y: H - 8, "text-anchor": "middle",
                                       "font-size": 11 }, X_NAMES[axis] + " (log scale)"));
  svg.appendChild(svgElement("text", { x: 14, y: (TOP + H - BOTTOM) / 2, "text-anchor": "middle", "font-size": 11,
                                       transform: `rotate(-90 14 ${(TOP + H - BOTTOM) / 2})` }, yName));
  return { xOf, yOf };
}

// A point for one run: hover shows it, click opens its record.
function runPoint(svg, row, cx, cy, colour, onFront) {
  const flagged = row.flags && row.flags.length > 0;
  const circle = svgElement("circle", { cx, cy, r: 5, class: "run", fill: flagged ? "none" : colour,
                                        stroke: flagged ? "#c00" : "black", "stroke-width": onFront ? 1.8 : 0.6 });
  circle.setAttribute("data-run", row.run);
  circle.addEventListener("mouseenter", (event) => showTooltip(event, row));
  circle.addEventListener("mousemove", (event) => moveTooltip(event));
  circle.addEventListener("mouseleave", hideTooltip);
  circle.addEventListener("click", () => openRecord(row));
  svg.appendChild(circle);
}

function allRunsChart(table) {
  const key = X_KEYS[axis];
  const rows = table.rows.filter((r) => r[key] > 0);
  if (rows.length === 0) return null;
  const svg = svgElement("svg", { width: W, height: H, class: "chart all-runs" });
  const xs = rows.map((r) => r[key]), ys = rows.map((r) => r.bpb);
  const { xOf, yOf } = frame(svg, "All runs: BPB against " + X_NAMES[axis], Math.min(...xs), Math.max(...xs),
                             Math.min(...ys), Math.max(...ys), "BPB");
  const byName = new Map(table.rows.map((r) => [r.run, r]));
  const front = table.all_runs[axis].map((name) => byName.get(name)).filter(Boolean);
  if (front.length > 1) {
    const points = front.map((r) => `${xOf(r[key]).toFixed(1)},${yOf(r.bpb).toFixed(1)}`).join(" ");
    svg.appendChild(svgElement("polyline", { points, class: "frontier", fill: "none", stroke: "#444",
                                             "stroke-dasharray": "4 3" }));
  }
  const onFront = new Set(table.all_runs[axis]);
  for (const row of rows) {
    runPoint(svg, row, xOf(row[key]), yOf(row.bpb), CLASS_COLOURS[row.weight_class] || "#999", onFront.has(row.run));
  }
  return svg;
}

function scalingChart(table) {
  const key = X_KEYS[axis];
  const groups = (table.scaling[axis] || []).filter((g) => g.n > 0);
  if (groups.length === 0) return null;
  const byName = new Map(table.rows.map((r) => [r.run, r]));
  const points = groups.flatMap((g) => g.runs.map((name) => byName.get(name)).filter((r) => r && r[key] > 0));
  const ys = points.map((r) => r.bpb).concat(groups.filter((g) => g.forecast_1e22 !== null).map((g) => g.forecast_1e22));
  const svg = svgElement("svg", { width: W, height: H, class: "chart scaling" });
  const { xOf, yOf } = frame(svg, "Scaling: each sweep and its fit, L = a·C^(−b) + c", Math.min(...points.map((r) => r[key])),
                             FORECAST_FLOPS, Math.min(...ys), Math.max(...ys), "BPB");
  groups.forEach((group, i) => {
    const colour = GROUP_COLOURS[i % GROUP_COLOURS.length];
    const members = group.runs.map((name) => byName.get(name)).filter((r) => r && r[key] > 0);
    for (const [fit, dash, cls] of [[group.a === null ? null : group, "", "fit"], [group.converged, "2 3", "fit-converged"]]) {
      if (!fit) continue;
      const lo = Math.log(Math.min(...members.map((r) => r[key]))), hi = Math.log(FORECAST_FLOPS);
      const path = [];
      for (let k = 0; k < 60; k++) {
        const x = Math.exp(lo + (hi - lo) * k / 59);
        path.push(`${xOf(x).toFixed(1)},${yOf(fit.a * Math.pow(x, -fit.b) + fit.c).toFixed(1)}`);
      }
      const line = svgElement("polyline", { points: path.join(" "), class: cls, fill: "none", stroke: colour,
                                            "stroke-dasharray": dash, "stroke-width": 1.2 });
      line.setAttribute("data-group", group.group);
      line.appendChild(svgElement("title", {}, group.group));
      svg.appendChild(line);
    }
    for (const row of members) runPoint(svg, row, xOf(row[key]), yOf(row.bpb), colour, false);
  });
  return svg;
}

function draw() {
  for (const box of document.querySelectorAll(".charts")) {
    const table = DATA.tables[Number(box.dataset.table)];
    box.replaceChildren();
    for (const chart of [allRunsChart(table), scalingChart(table)]) if (chart) box.appendChild(chart);
  }
  for (const button of document.querySelectorAll(".axis button")) {
    button.classList.toggle("on", button.dataset.x === axis);
  }
  document.body.setAttribute("data-charts-drawn", String(document.querySelectorAll("svg.chart").length));
}

const tooltip = document.getElementById("tooltip");

function showTooltip(event, row) {
  tooltip.textContent = `${row.run}\nBPB ${row.bpb.toFixed(4)}\n${X_NAMES[axis]} ${formatSci(row[X_KEYS[axis]])}` +
    (row.flags && row.flags.length ? "\nflagged: ranked apart" : "");
  tooltip.style.display = "block";
  moveTooltip(event);
}

function moveTooltip(event) {
  tooltip.style.left = event.clientX + 12 + "px";
  tooltip.style.top = event.clientY + 12 + "px";
}

function hideTooltip() {
  tooltip.style.display = "none";
}

function safeLink(target) {  // a path of the repository (file:// when the page is) or an http(s) URL, as the browser reads it
  try {
    return ["http:", "https:", "file:"].includes(new URL(target, location.href).protocol);
  } catch {
    return false;
  }
}

function openRecord(row) {
  const panel = document.getElementById("record");
  panel.querySelector("h3").textContent = row.run;
  const link = panel.querySelector(".link");
  link.replaceChildren();
  if (row.link && safeLink(row.link)) {
    const a = document.createElement("a");
    a.href = row.link;
    a.textContent = "the record's folder";
    link.appendChild(a);
  }
  panel.querySelector("pre").textContent = JSON.stringify(row, null, 1);
  panel.setAttribute("data-open", row.run);
  panel.style.display = "block";
}

document.getElementById("record-close").addEventListener("click", () => {
  document.getElementById("record").style.display = "none";
});
for (const button of document.querySelectorAll(".axis button")) {
  button.addEventListener("click", () => { axis = button.dataset.x; draw(); });
}
draw();
// index.html#record=<run> opens that run's record: a link to one record
const wanted = new URLSearchParams(location.hash.slice(1)).get("record");
if (wanted !== null) {
  const row = DATA.tables.flatMap((t) => t.rows).find((r) => r.run === wanted);
  if (row) openRecord(row);
}
