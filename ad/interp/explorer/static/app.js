// The explorer page: holds the current stream, asks the JSON API (app.py) for views,
// draws everything as plain SVG. State lives in window.explorer so that tests read what is
// shown at full precision (the policy chart also carries its numbers in data-probs).
"use strict";

const S = window.explorer = {
  info: null, model: null, task: 0,
  original: null,   // the stream of the last rollout (the "second context" for patching)
  view: null,       // the last view from the API (stream, policy, reference, ...)
  history: [],      // earlier streams, for undo
  edited: new Set(),// steps touched by edits (marked on the timeline)
  t: 0, inside: null, mode: null, drawn: [], source: null,
  ablatedEpisodes: new Set(),  // episodes rolled out with the ablation on (red on the curve)
  plain: null,      // {from, returns}: the last ablated continuation rolled out without it
  latencies: [],    // {op, ms}: click -> updated policy chart, measured in the page
  version: 0,       // bumped whenever the policy chart is redrawn
  busy: 0,
};
const ACTIONS_DR = ["stay", "right", "left", "down", "up"];
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
function actionName(a) { return S.info && S.info.kind === "darkroom" ? ACTIONS_DR[a] : `arm ${a}`; }
function status(text, error) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

async function api(path, body) {
  S.busy++;
  try {
    const r = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  } finally { S.busy--; }
}

function ablationBody() {
  const heads = [], mlps = [];
  document.querySelectorAll("input.ablate-head:checked").forEach(
    (c) => heads.push([+c.dataset.layer, +c.dataset.head]));
  document.querySelectorAll("input.ablate-mlp:checked").forEach((c) => mlps.push(+c.dataset.layer));
  return {heads, mlps};
}
function patchMode() { return document.querySelector("input[name=intervention]:checked").value === "patch"; }
function base() {
  // zero ablation changes the policy everywhere; a patch only acts in the inside view
  return {model: S.model, task: S.task, ablation: patchMode() ? {} : ablationBody()};
}

// ---- derived quantities of the current stream ---------------------------------------------
function T() { return S.view.stream.action.length; }
function episodeOf() {
  const d = S.view.stream.done, ep = new Array(d.length + 1);
  let e = 0;
  for (let i = 0; i <= d.length; i++) { ep[i] = e; if (i < d.length && d[i]) e++; }
  return ep;
}

// ---- actions ------------------------------------------------------------------------------
async function timed(op, fn) {
  const t0 = performance.now();
  status(`${op} ...`);  // (the source's episodes take a while the first time: it learns)
  try {
    await fn();
    await new Promise((r) => requestAnimationFrame(() => r()));
    S.latencies.push({op, ms: performance.now() - t0, steps: T()});
    status(`${op}: ${(performance.now() - t0).toFixed(0)} ms`);
  } catch (e) { status(`${op}: ${e.message}`, true); }
}

async function loadModels() {
  const r = await api("/api/models");
  const sel = $("model");
  sel.innerHTML = "";
  for (const m of r.models) {
    const o = document.createElement("option");
    o.value = m.id; o.textContent = `${m.label} (${m.env})`;
    sel.appendChild(o);
  }
  if (r.default) sel.value = r.default;
  if (sel.value) await selectModel(sel.value);
  else status("no trained model found: start with --runs DIR or --model RUN_DIR", true);
}

async function selectModel(id) {
  status(`loading ${id} ...`);
  S.model = id;
  S.info = await api(`/api/model?id=${encodeURIComponent(id)}`);
  const sel = $("task");
  sel.innerHTML = "";
  for (const t of S.info.tasks) {
    const o = document.createElement("option");
    o.value = t.index;
    o.textContent = S.info.kind === "darkroom" ? `goal (${t.goal})` :
      S.info.kind === "bandit" ? `bandit ${t.index} (best ${Math.max(...t.means).toFixed(2)})` : `task ${t.index}`;
    sel.appendChild(o);
  }
  document.querySelectorAll(".darkroom-only").forEach(
    (e) => { e.hidden = S.info.kind !== "darkroom"; });
  if (S.info.kind === "bandit" && +$("episodes").value === 10) $("episodes").value = 100;
  $("features-panel").hidden = !S.info.features;  // SAE features: a later issue
  buildAblation();
  const dsel = $("dla-action");
  dsel.innerHTML = "";
  for (let a = 0; a < S.info.num_actions; a++) {
    const o = document.createElement("option"); o.value = a; o.textContent = actionName(a); dsel.appendChild(o);
  }
  S.task = 0; S.source = null;
  await rollout();
}

function buildAblation() {
  const box = $("ablation");
  box.innerHTML = "";
  const table = document.createElement("table");
  for (let l = 0; l < S.info.num_layers; l++) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>layer ${l}</td>`;
    for (let h = 0; h < S.info.num_heads; h++)
      tr.innerHTML += `<td><label><input type="checkbox" class="ablate-head" data-layer="${l}" data-head="${h}"> H${h}</label></td>`;
    tr.innerHTML += `<td><label><input type="checkbox" class="ablate-mlp" data-layer="${l}"> MLP</label></td>`;
    table.appendChild(tr);
  }
  box.appendChild(table);
  box.querySelectorAll("input").forEach((c) => c.addEventListener("change", () => timed("ablate", refresh)));
}

async function rollout() {
  await timed("rollout", async () => {
    const v = await api("/api/rollout", {...base(), episodes: +$("episodes").value, seed: +$("seed").value});
    S.original = v.stream; S.history = []; S.edited = new Set(); S.source = null;
    S.ablatedEpisodes = new Set(); S.plain = null;
    setView(v, v.stream.action.length);
  });
}

async function continueRollout(episodes) {
  await timed(`continue ${episodes}`, async () => {
    const v = await api("/api/rollout", {...base(), episodes, seed: +$("seed").value, context: S.view.stream});
    S.history.push(S.view.stream);
    if (v.rollout_ablated_from !== undefined) {
      const done = S.view.returns.length;
      for (let e = done; e < v.returns.length; e++) S.ablatedEpisodes.add(e);
      S.plain = {from: done, returns: v.returns_plain};  // the same continuation, no ablation
    }
    setView(v, v.stream.action.length);
  });
}

async function edit(op, args, marks) {
  await timed(op, async () => {
    const v = await api("/api/edit", {...base(), context: S.view.stream, op, args});
    S.history.push(S.view.stream);
    (marks || []).forEach((m) => S.edited.add(m));
    setView(v, Math.min(S.t, v.stream.action.length));
    $("edit-log").textContent = `${op} ${JSON.stringify(args)} -> ${v.stream.action.length} steps`;
  });
}

async function refresh() {  // same stream, new ablation: a view and the inside
  const v = await api("/api/view", {...base(), context: S.view.stream});
  setView(v, S.t);
}

function setView(v, t) {
  S.view = v;
  const scrub = $("scrub");
  scrub.max = v.stream.action.length;
  setStep(t);
}

function setStep(t) {
  S.t = Math.max(0, Math.min(t, T()));
  $("scrub").value = S.t;
  const ep = episodeOf();
  const inEp = S.t - ep.indexOf(ep[S.t]);
  $("step-label").textContent = S.t === T() ? `step ${S.t}: the next step (episode ${ep[S.t]})`
    : `step ${S.t} (episode ${ep[S.t]}, step ${inEp} in it): took ${actionName(S.view.stream.action[S.t])}, reward ${S.view.stream.reward[S.t]}`;
  drawWorld(); drawCurve(); drawTimeline(); drawPolicy();
  loadInside();
}

let insideSeq = 0;
async function loadInside() {
  const seq = ++insideSeq;
  const body = {...base(), context: S.view.stream, t: S.t, ablation: ablationBody()};
  if (patchMode()) body.donor = S.original;
  try {
    const r = await api("/api/inside", body);
    if (seq !== insideSeq) return;  // a newer step was asked for meanwhile
    S.inside = r;
    drawAttention(); drawLens(); drawDla(); drawPolicy();
  } catch (e) { status(`inside: ${e.message}`, true); }
}

// ---- drawing ------------------------------------------------------------------------------
function drawWorld() {
  const svg = $("world"); clear(svg);
  const s = S.view.stream, info = S.info, ep = episodeOf();
  const task = info.tasks[S.task];
  if (info.kind === "darkroom") {
    const n = info.size, c = 300 / n;
    const visits = Array.from({length: n}, () => new Array(n).fill(0));
    const paid = new Set();
    const e = ep[S.t];
    const path = [];
    for (let i = 0; i < S.t; i++) if (ep[i] === e) {
      const [x, y] = s.obs[i]; visits[x][y]++; path.push(s.obs[i]);
      if (s.reward[i] > 0) paid.add(String(moveCell(s.obs[i], s.action[i], n)));
    }
    const here = S.t < T() ? s.obs[S.t] : info.start;
    path.push(here);
    const maxv = Math.max(1, ...visits.flat());
    for (let x = 0; x < n; x++) for (let y = 0; y < n; y++) {
      const v = visits[x][y] / maxv;
      const r = el("rect", {x: x * c, y: y * c, width: c, height: c, class: "cell",
        fill: paid.has(String([x, y])) ? "#9be49b" : `rgba(70,110,200,${0.6 * v})`,
        "data-x": x, "data-y": y}, svg);
      r.addEventListener("click", () => cellClick(x, y));
    }
    if ($("show-goal").checked) el("rect", {x: task.goal[0] * c + 3, y: task.goal[1] * c + 3,
      width: c - 6, height: c - 6, fill: "none", stroke: "#e0a000", "stroke-width": 3}, svg);
    if (path.length > 1) el("polyline", {points: path.map(([x, y]) => `${(x + .5) * c},${(y + .5) * c}`).join(" "),
      fill: "none", stroke: "#333", "stroke-width": 1.5, "pointer-events": "none"}, svg);
    el("circle", {cx: (here[0] + .5) * c, cy: (here[1] + .5) * c, r: c / 4, fill: "#d33", "pointer-events": "none"}, svg);
    if (S.drawn.length) el("polyline", {points: [info.start, ...S.drawn].map(([x, y]) => `${(x + .5) * c},${(y + .5) * c}`).join(" "),
      fill: "none", stroke: "#a0f", "stroke-width": 3, "pointer-events": "none"}, svg);
    $("world-caption").textContent = `episode ${e}: visited cells (blue), paying cells (green), the agent (red)` +
      ($("show-goal").checked ? ", the goal (gold)" : "");
  } else if (info.kind !== "bandit") {  // no drawing for this env: the step as numbers
    const here = S.t < T() ? s.obs[S.t] : "the next observation";
    el("text", {x: 10, y: 30}, svg, `observation: ${JSON.stringify(here)}`);
    el("text", {x: 10, y: 50}, svg, `episode ${ep[S.t]}; no drawing for ${info.env}`);
    $("world-caption").textContent = "";
  } else {
    const A = info.num_actions, pulls = new Array(A).fill(0), wins = new Array(A).fill(0);
    for (let i = 0; i < S.t; i++) { pulls[s.action[i]]++; wins[s.action[i]] += s.reward[i]; }
    const w = 300 / A, maxp = Math.max(1, ...pulls);
    for (let a = 0; a < A; a++) {
      const h = 220 * pulls[a] / maxp;
      el("rect", {x: a * w + 6, y: 250 - h, width: w - 12, height: h, fill: "#7ea6e0"}, svg);
      el("text", {x: a * w + w / 2, y: 265, "text-anchor": "middle"}, svg, `arm ${a}`);
      el("text", {x: a * w + w / 2, y: 245 - h, "text-anchor": "middle"}, svg,
        pulls[a] ? `${pulls[a]}: ${(wins[a] / pulls[a]).toFixed(2)}` : "0");
      if ($("show-goal").checked && task.means)
        el("text", {x: a * w + w / 2, y: 285, "text-anchor": "middle", fill: "#b07000"}, svg, `p=${task.means[a].toFixed(2)}`);
    }
    $("world-caption").textContent = `pulls before step ${S.t} (bars) and their mean reward` +
      ($("show-goal").checked ? "; the arms' true means (gold)" : "");
  }
}

function moveCell(o, a, n) {
  const d = [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]][a];
  return [Math.min(n - 1, Math.max(0, o[0] + d[0])), Math.min(n - 1, Math.max(0, o[1] + d[1]))];
}

function smooth(xs, k) {
  return xs.map((_, i) => { const lo = Math.max(0, i - k + 1); const w = xs.slice(lo, i + 1); return w.reduce((a, b) => a + b, 0) / w.length; });
}

function drawCurve() {
  const svg = $("curve"); clear(svg);
  const W = 520, H = 300, m = 36;
  const bandit = S.info.kind === "bandit";
  let ad = S.view.returns, src = S.source;
  if (bandit) { ad = smooth(ad, 10); src = src && smooth(src, 10); }
  const opt = S.info.tasks[S.task].optimum;
  const n = Math.max(ad.length, 1), ymax = Math.max(opt, ...ad, ...(src || [])) * 1.05 || 1;
  const X = (i) => m + (W - m - 8) * (i + 0.5) / n, Y = (v) => H - m - (H - m - 8) * v / ymax;
  el("line", {x1: m, y1: H - m, x2: W - 8, y2: H - m, stroke: "#999"}, svg);
  el("line", {x1: m, y1: 8, x2: m, y2: H - m, stroke: "#999"}, svg);
  el("text", {x: W / 2, y: H - 6, "text-anchor": "middle"}, svg, bandit ? "pull (reward, mean of the last 10)" : "episode");
  el("text", {x: 4, y: 16}, svg, ymax.toFixed(1));
  el("text", {x: 4, y: H - m}, svg, "0");
  el("text", {x: X(0), y: H - m + 14, "text-anchor": "middle"}, svg, "1");
  if (n > 1) el("text", {x: X(n - 1), y: H - m + 14, "text-anchor": "middle"}, svg, String(n));
  el("line", {x1: m, y1: Y(opt), x2: W - 8, y2: Y(opt), stroke: "#555", "stroke-dasharray": "4 3"}, svg);
  if (src) el("polyline", {points: src.slice(0, n).map((v, i) => `${X(i)},${Y(v)}`).join(" "), fill: "none", stroke: "#e08a00", "stroke-width": 1.5}, svg);
  if (ad.length) el("polyline", {points: ad.map((v, i) => `${X(i)},${Y(v)}`).join(" "), fill: "none", stroke: "#2a62c9", "stroke-width": 2}, svg);
  S.ablatedEpisodes.forEach((i) => { if (i < ad.length) el("circle", {cx: X(i), cy: Y(ad[i]), r: 2.5, fill: "#d33"}, svg); });
  const plain = S.plain && (bandit ? smooth(S.plain.returns, 10) : S.plain.returns);
  if (plain) el("polyline", {points: plain.slice(S.plain.from).map((v, j) => `${X(S.plain.from + j)},${Y(v)}`).join(" "),
    fill: "none", stroke: "#888", "stroke-dasharray": "3 2", "stroke-width": 1.5}, svg);
  const e = episodeOf()[S.t];
  el("line", {x1: X(e), y1: 8, x2: X(e), y2: H - m, stroke: "#d33", "stroke-opacity": 0.5}, svg);
}

function drawTimeline() {
  const svg = $("timeline"); clear(svg);
  const s = S.view.stream, n = T() + 1, W = 840, dx = W / n;
  const div = S.view.divergence || [];
  el("rect", {x: 0, y: 0, width: W, height: 46, fill: "#fafafa"}, svg);
  for (let i = 0; i < n; i++) {
    if (div[i] > 0.5) el("rect", {x: i * dx, y: 0, width: Math.max(dx, 1), height: 12, fill: "#e33"}, svg);
    if (S.edited.has(i)) el("rect", {x: i * dx, y: 12, width: Math.max(dx, 1), height: 8, fill: "#a0f"}, svg);
    if (i < T() && s.reward[i] > 0) el("rect", {x: i * dx, y: 20, width: Math.max(dx, 1), height: 14, fill: "#3a3"}, svg);
    if (i < T() && s.done[i] && S.info.episode_steps > 1)
      el("line", {x1: (i + 1) * dx, y1: 20, x2: (i + 1) * dx, y2: 46, stroke: "#999"}, svg);
  }
  el("rect", {x: S.t * dx - 1, y: 0, width: Math.max(dx, 2), height: 46, fill: "none", stroke: "#000"}, svg);
  svg.onclick = (ev) => setStep(Math.floor(ev.offsetX / dx));
}

function drawPolicy() {
  const svg = $("policy"); clear(svg);
  const A = S.info.num_actions, v = S.view, t = S.t;
  const model = v.policy[t];
  const ablated = v.policy_ablated ? v.policy_ablated[t] : (patchMode() && S.inside && S.inside.probs) || null;
  const ref = v.reference ? v.reference[t] : null;
  svg.dataset.probs = JSON.stringify(model);
  svg.dataset.ablated = ablated ? JSON.stringify(ablated) : "";
  svg.dataset.reference = ref ? JSON.stringify(ref) : "";
  svg.dataset.step = t;
  svg.dataset.length = T();
  const series = [[model, "#2a62c9"], [ablated, "#d33"], [ref, "#e08a00"]].filter((s) => s[0]);
  const gw = 500 / A, bw = (gw - 14) / series.length;
  for (let a = 0; a < A; a++) {
    series.forEach(([p, color], j) => {
      const h = 120 * p[a];
      const r = el("rect", {x: 10 + a * gw + j * bw, y: 135 - h, width: bw - 2, height: h, fill: color}, svg);
      el("title", {}, r, p[a].toFixed(4));
    });
    el("text", {x: 10 + a * gw + (gw - 14) / 2, y: 152, "text-anchor": "middle"}, svg, actionName(a));
    el("text", {x: 10 + a * gw + (gw - 14) / 2, y: 166, "text-anchor": "middle", fill: "#2a62c9"}, svg, model[a].toFixed(3));
  }
  $("reference-name").textContent = v.reference_name || "none for this env";
  if (div_summary_needed()) {
    const d = v.divergence, big = d.filter((x) => x > 0.5).length;
    $("divergence-summary").textContent = `Here TV = ${d[t].toFixed(3)}; ${big} of ${d.length} steps diverge (TV > 0.5).`;
  }
  S.version++;
  svg.dataset.version = S.version;
}
function div_summary_needed() { return !!S.view.divergence; }

function drawAttention() {
  const svg = $("attention"); clear(svg);
  const r = S.inside, L = S.info.num_layers, H = S.info.num_heads;
  const cols = r.patterns[0][0].length, W = 840, lw = 50, cw = (W - lw) / cols, rh = 160 / (L * H);
  const s = S.view.stream;
  svg.dataset.windowStart = r.window_start;
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
    const row = r.patterns[l][h], y = (l * H + h) * rh, mx = Math.max(...row, 1e-9);
    el("text", {x: 2, y: y + rh * 0.75}, svg, `L${l}.H${h}`);
    row.forEach((p, j) => el("rect", {x: lw + j * cw, y, width: cw + 0.3, height: rh - 1, fill: `rgba(40,40,160,${p / mx})`}, svg));
  }
  for (let j = 0; j < cols; j++) {
    const i = r.window_start + j;
    if (i < T() && s.reward[i] > 0) el("rect", {x: lw + j * cw, y: 162, width: Math.max(cw, 1), height: 8, fill: "#3a3"}, svg);
    if (i < T() && s.done[i] && S.info.episode_steps > 1)  // (a bandit's every pull ends one)
      el("line", {x1: lw + (j + 1) * cw, y1: 0, x2: lw + (j + 1) * cw, y2: 170, stroke: "#aaa"}, svg);
  }
  el("text", {x: lw, y: 190}, svg, `steps ${r.window_start} .. ${S.t} (the query is step ${S.t})`);
}

function softmax(z) { const m = Math.max(...z); const e = z.map((x) => Math.exp(x - m)); const s = e.reduce((a, b) => a + b, 0); return e.map((x) => x / s); }

function drawLens() {
  const tb = $("lens"), r = S.inside, A = S.info.num_actions;
  let html = "<tr><th></th>" + [...Array(A).keys()].map((a) => `<th>${actionName(a)}</th>`).join("") + "</tr>";
  r.lens.forEach((z, i) => { html += `<tr><td>${r.lens_labels[i]}</td>` + softmax(z).map((p) => `<td>${p.toFixed(3)}</td>`).join("") + "</tr>"; });
  tb.innerHTML = html;
}

function drawDla() {
  const svg = $("dla"); clear(svg);
  const r = S.inside, a = +$("dla-action").value || 0, A = S.info.num_actions;
  const vals = r.dla.map((row) => row[a] - row.reduce((x, y) => x + y, 0) / A);
  svg.dataset.values = JSON.stringify(vals);
  const x0 = 70, n = vals.length, bw = (830 - x0) / n, mx = Math.max(...vals.map(Math.abs), 1e-9), mid = 100;
  vals.forEach((v, i) => {
    const h = 90 * Math.abs(v) / mx, x = x0 + i * bw;
    const r_ = el("rect", {x, y: v >= 0 ? mid - h : mid, width: bw - 3, height: h, fill: v >= 0 ? "#2a62c9" : "#d33"}, svg);
    el("title", {}, r_, `${r.dla_labels[i]}: ${v.toFixed(4)}`);
    el("text", {x: x + bw / 2, y: 205, "text-anchor": "end", transform: `rotate(-40 ${x + bw / 2} 205)`}, svg, r.dla_labels[i]);
  });
  el("line", {x1: x0, y1: mid, x2: 830, y2: mid, stroke: "#999"}, svg);
  el("text", {x: 2, y: 14}, svg, `±${mx.toFixed(2)}`);
}

// ---- edits by clicking the grid -----------------------------------------------------------
function cellClick(x, y) {
  if (S.mode === "goal") {
    setMode(null);
    edit("move_goal", {goal: [x, y]});
  } else if (S.mode === "draw") {
    S.drawn.push([x, y]); $("draw-done").disabled = false; drawWorld();
  }
}
function setMode(m) {
  S.mode = S.mode === m ? null : m;
  $("mode-goal").classList.toggle("active", S.mode === "goal");
  $("mode-draw").classList.toggle("active", S.mode === "draw");
  if (S.mode !== "draw") { S.drawn = []; $("draw-done").disabled = true; }
}
function episodeHere() { return episodeOf()[Math.min(S.t, T() - 1)]; }
function episodeSteps(e) { const ep = episodeOf(); const out = []; for (let i = 0; i < T(); i++) if (ep[i] === e) out.push(i); return out; }

// ---- wiring -------------------------------------------------------------------------------
$("model").addEventListener("change", (e) => selectModel(e.target.value));
$("task").addEventListener("change", (e) => { S.task = +e.target.value; rollout(); });
$("play").addEventListener("click", rollout);
document.querySelectorAll("button.continue").forEach((b) => b.addEventListener("click", () => continueRollout(+b.dataset.episodes)));
$("show-goal").addEventListener("change", () => { drawWorld(); });
$("scrub").addEventListener("input", (e) => setStep(+e.target.value));
$("edit-flip").addEventListener("click", () => edit("flip_reward", {t: Math.min(S.t, T() - 1)}, [Math.min(S.t, T() - 1)]));
$("edit-delete-reward").addEventListener("click", () => edit("delete_reward", {t: Math.min(S.t, T() - 1)}, [Math.min(S.t, T() - 1)]));
$("edit-drop").addEventListener("click", () => edit("drop_episode", {episode: episodeHere()}));
$("edit-dup").addEventListener("click", () => { const e = episodeHere(); edit("duplicate_episode", {episode: e}, episodeSteps(e)); });
$("edit-splice-random").addEventListener("click", () => { const e = episodeHere(); edit("splice_random", {episode: e, seed: S.history.length}, episodeSteps(e)); });
$("edit-splice-source").addEventListener("click", () => { const e = episodeHere(); edit("splice_source", {episode: e, source_episode: +$("source-episode").value}, episodeSteps(e)); });
$("mode-goal").addEventListener("click", () => setMode("goal"));
$("mode-draw").addEventListener("click", () => setMode("draw"));
$("draw-done").addEventListener("click", () => { const e = episodeHere(); const cells = S.drawn; setMode(null); edit("splice_drawn", {episode: e, cells}, episodeSteps(e)); });
$("undo").addEventListener("click", () => timed("undo", async () => {
  if (!S.history.length) return;
  const v = await api("/api/view", {...base(), context: S.history.pop()}); setView(v, S.t); }));
$("reset").addEventListener("click", () => timed("reset", async () => {
  const v = await api("/api/view", {...base(), context: S.original}); S.history = []; S.edited = new Set();
  S.ablatedEpisodes = new Set(); S.plain = null; setView(v, S.t); }));
$("dla-action").addEventListener("change", drawDla);
document.querySelectorAll("input[name=intervention]").forEach((r) => r.addEventListener("change", () => timed("intervention", refresh)));
$("load-source").addEventListener("click", () => timed("source", async () => {
  const r = await api("/api/source", {model: S.model, task: S.task});
  S.source = r.returns; drawCurve(); }));

loadModels().catch((e) => status(e.message, true));
