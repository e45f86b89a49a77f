// fspd's live view. Every string from a job (names, paths, errors) goes into the page as text
// (textContent, or an SVG <text> node's textContent), never as markup.
"use strict";

const MiB = 1024 * 1024;
const HOUR_S = 3600;
const ORDER = { running: 0, paused: 1, queued: 2, failed: 3, cancelled: 3, completed: 4 };
const SVG = "http://www.w3.org/2000/svg";

const jobs = new Map();  // job id -> its latest summary (with route)
let selected = null;     // the job whose charts are shown
let samples = [];        // the selected job's chart samples, oldest first
let host = null;         // host totals, latest
let pending = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(parent, tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  parent.appendChild(node);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
const rate = (bps) => (bps ? `${bytes(bps)}/s` : "–");
function eta(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
}
const num = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

function routeText(job) {
  const r = job.route || {};
  const dests = (r.destinations || []).join(", ");
  if (!r.source) return dests;
  return dests ? `${r.source} → ${dests}` : r.source;
}

function errorText(job) {
  if (job.error && job.error.message) return job.error.message;
  return job.last_error || "";
}

function schedule() {
  if (!pending) { pending = true; requestAnimationFrame(render); }
}

function render() {
  pending = false;
  renderHost();
  renderJobs();
  renderDetail();
}

function renderHost() {
  if (!host) return;
  const c = host.counts || {};
  const parts = ["running", "paused", "queued", "completed", "failed", "cancelled"]
    .filter((s) => c[s]).map((s) => `${c[s]} ${s}`);
  document.getElementById("summary").textContent = parts.length ? parts.join(", ") : "idle";
  document.getElementById("host-bps").textContent =
    `${(host.bps / MiB).toFixed(1)} MiB/s` + (host.bandwidth_limit_bps ? ` of ${rate(host.bandwidth_limit_bps)}` : "");
  document.getElementById("host-get").textContent = num(host.get_rps);
  document.getElementById("host-put").textContent = num(host.put_rps);
  document.getElementById("host-stream").textContent = num(host.busiest_stream_rps);
  document.getElementById("q-account").textContent = num(host.per_account_rps);
  document.getElementById("q-account2").textContent = num(host.per_account_rps);
  document.getElementById("q-snapshot").textContent = num(host.per_snapshot_rps);
  document.getElementById("host-mem").textContent =
    `${num(host.memory_blocks)} / ${num(host.memory_budget_blocks)}`;
}

function sortedJobs() {
  return [...jobs.values()].sort((a, b) =>
    (ORDER[a.state] ?? 5) - (ORDER[b.state] ?? 5)
    || (b.finished_at || 0) - (a.finished_at || 0)
    || (a.submitted_at || 0) - (b.submitted_at || 0));
}

function renderJobs() {
  const body = document.querySelector("#jobs tbody");
  const rows = [];
  for (const job of sortedJobs()) {
    const tr = el("tr");
    tr.dataset.job = job.job;
    tr.dataset.state = job.state;
    if (job.job === selected) tr.classList.add("selected");
    tr.appendChild(el("td", job.job, "job-id"));
    tr.appendChild(el("td", job.state, `state state-${job.state}`));
    const where = el("td", routeText(job), "route");
    if (["failed", "cancelled"].includes(job.state) && errorText(job)) {
      where.appendChild(el("div", errorText(job), "error"));
    }
    tr.appendChild(where);
    const done = el("td");
    const pct = job.state === "completed" ? 100 : job.percent;
    done.appendChild(el("span", pct === null || pct === undefined ? bytes(job.bytes_done) : `${pct}%`));
    const bar = el("div", null, "bar");
    const fill = el("div");
    fill.style.width = `${Math.max(0, Math.min(100, pct || 0))}%`;
    bar.appendChild(fill);
    done.appendChild(bar);
    tr.appendChild(done);
    tr.appendChild(el("td", job.state === "running" ? rate(job.rate_recent_bps) : "–"));
    tr.appendChild(el("td", job.state === "running" ? eta(job.eta_s) : "–"));
    tr.addEventListener("click", () => select(job.job));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("no-jobs").hidden = rows.length > 0;
}

function renderDetail() {
  const job = selected && jobs.get(selected);
  const panel = document.getElementById("detail");
  panel.hidden = !job;
  if (!job) return;
  document.getElementById("detail-title").textContent = `${job.job} — ${job.state}`;
  document.getElementById("detail-route").textContent = routeText(job);
  const err = document.getElementById("detail-error");
  err.textContent = errorText(job) ? `Last error: ${errorText(job)}` : "";
  err.hidden = !errorText(job);
  drawThroughput(document.getElementById("chart"));
  drawRetries(document.getElementById("retries"));
  drawQueues(document.getElementById("queues"));
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// A time-series chart: lines of [t, value] over the samples' span (at most the last hour).
function drawLines(node, lines, unit) {
  const W = 640, H = Number(node.viewBox.baseVal.height) || 160, L = 44, R = 8, T = 8, B = 18;
  node.replaceChildren();
  const all = lines.flatMap((l) => l.points);
  const tEnd = all.length ? Math.max(...all.map((p) => p[0])) : 0;
  const tStart = all.length ? Math.max(tEnd - HOUR_S, Math.min(...all.map((p) => p[0]))) : 0;
  const span = Math.max(tEnd - tStart, 10);
  const yMax = niceMax(Math.max(0, ...all.map((p) => p[1])));
  const x = (t) => L + (W - L - R) * (t - (tEnd - span)) / span;
  const y = (v) => T + (H - T - B) * (1 - v / yMax);
  for (const frac of [0, 0.5, 1]) {
    svg(node, "line", { x1: L, x2: W - R, y1: y(yMax * frac), y2: y(yMax * frac), class: "grid" });
    svg(node, "text", { x: L - 4, y: y(yMax * frac) + 3, "text-anchor": "end" },
      `${+(yMax * frac).toFixed(2)}${frac === 1 ? ` ${unit}` : ""}`);
  }
  const ago = span >= 120 ? `${Math.round(span / 60)} min ago` : `${Math.round(span)} s ago`;
  svg(node, "text", { x: L, y: H - 4 }, ago);
  svg(node, "text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now");
  for (const line of lines) {
    const pts = line.points.filter((p) => p[0] >= tStart);
    if (!pts.length) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    if (line.area) {
      svg(node, "path", { d: `${d}L${x(pts[pts.length - 1][0]).toFixed(1)},${y(0)}L${x(pts[0][0]).toFixed(1)},${y(0)}Z`, class: "area" });
    }
    svg(node, "path", { d, class: line.cls });
  }
  if (!all.length) svg(node, "text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet");
}

function drawThroughput(node) {
  const pts = samples.map((s) => [s.t, s.bps / MiB]);
  drawLines(node, [{ points: pts, cls: "line", area: true }], "MiB/s");
  node.dataset.samples = String(samples.length);
  node.dataset.lastBytes = String(samples.length ? samples[samples.length - 1].bytes : 0);
}

function perSecond(key) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    if (dt > 0) out.push([samples[i].t, Math.max(0, samples[i][key] - samples[i - 1][key]) / dt]);
  }
  return out;
}

function drawRetries(node) {
  drawLines(node, [{ points: perSecond("throttled"), cls: "throttled" },
                   { points: perSecond("retries"), cls: "retried" }], "/s");
  const last = samples[samples.length - 1];
  svg(node, "text", { x: 632, y: 16, "text-anchor": "end" },
    last ? `throttled ${last.throttled}, other retries ${last.retries} (total)` : "");
}

function drawQueues(node) {
  node.replaceChildren();
  const last = samples[samples.length - 1];
  const stages = last ? Object.keys(last.queues || {}) : [];
  const H = 100, rowH = Math.min(22, (H - 8) / Math.max(1, stages.length));
  const max = niceMax(Math.max(1, ...stages.map((s) => (last.queues[s] || 0) + (last.in_flight[s] || 0))));
  stages.forEach((stage, i) => {
    const yy = 4 + i * rowH, q = last.queues[stage] || 0, f = (last.in_flight[stage] || 0);
    const label = svg(node, "text", { x: 150, y: yy + rowH * 0.65, "text-anchor": "end" },
      stage.length > 26 ? `${stage.slice(0, 25)}…` : stage);
    svg(label, "title", {}, stage);
    const w = (v) => 420 * v / max;
    svg(node, "rect", { x: 156, y: yy + 2, width: w(q), height: rowH - 5, class: "qbar" });
    svg(node, "rect", { x: 156 + w(q), y: yy + 2, width: w(f), height: rowH - 5, class: "fbar" });
    svg(node, "text", { x: 160 + w(q) + w(f), y: yy + rowH * 0.65 }, `${q} / ${f}`);
  });
  if (!stages.length) svg(node, "text", { x: 320, y: 50, "text-anchor": "middle" }, "no stages yet");
}

async function select(id) {
  if (!id || !jobs.has(id)) return;
  const changed = id !== selected;
  selected = id;
  if (changed) {
    samples = [];
    history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
    const resp = await fetch(`api/series?job=${encodeURIComponent(id)}`);
    if (resp.ok && selected === id) {
      const known = (await resp.json()).samples;
      const newest = known.length ? known[known.length - 1].t : 0;
      samples = known.concat(samples.filter((s) => s.t > newest));
    }
  }
  schedule();
}

function merge(event) {
  if (!event || typeof event.job !== "string") return;
  const old = jobs.get(event.job) || {};
  const merged = Object.assign({}, old, event);
  if (!event.route && old.route) merged.route = old.route;
  jobs.set(event.job, merged);
  if (!selected && merged.state === "running") select(event.job);
  schedule();
}

function setLive(on) {
  const live = document.getElementById("live");
  live.textContent = on ? "live" : "offline";
  live.classList.toggle("off", !on);
}

async function loadState() {
  const data = await (await fetch("api/state")).json();
  jobs.clear();
  for (const job of data.jobs) jobs.set(job.job, job);
  host = data.host;
}

function connect() {
  const events = new EventSource("api/events");
  events.onopen = () => setLive(true);
  events.onerror = () => setLive(false);
  events.addEventListener("job", (e) => merge(JSON.parse(e.data)));
  events.addEventListener("progress", (e) => merge(JSON.parse(e.data)));
  events.addEventListener("host", (e) => { host = JSON.parse(e.data); schedule(); });
  events.addEventListener("sample", (e) => {
    const data = JSON.parse(e.data);
    if (data.job !== selected) return;
    samples.push(data.sample);
    while (samples.length && samples[0].t < data.sample.t - HOUR_S) samples.shift();
    schedule();
  });
}

async function main() {
  connect();
  await loadState();
  const wanted = decodeURIComponent(location.hash.replace(/^#job=/, ""));
  const first = sortedJobs().find((j) => j.state === "running");
  await select(jobs.has(wanted) ? wanted : first && first.job);
  schedule();
}

main();
