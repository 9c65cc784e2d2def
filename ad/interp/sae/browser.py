"""A static feature browser: one self-contained HTML page per SAE, plus an index.

``feature_data(...)`` gathers, for every live feature of one SAE on the held-out store:
its firing rate, activation histogram, best ground-truth label (``labels``), direct logit
effects, and its top-activating positions with their context — for a bandit the pull
sequence up to that pull (arm, reward) with the task's arm means; for the Dark Room the
episode's path on the grid up to that step with the goal cell. ``write_site(out, pages)``
writes ``index.html`` and one page per SAE: data as inline JSON, drawing by inline
JavaScript into SVG — no CDN, no server, it opens from disk. The feature list sorts by
any column (click its header); clicking a feature shows its histogram and contexts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ad.utils import atomic_write_text

CONTEXTS = 8  # top-activating positions shown per feature
BANDIT_WINDOW = 30  # pulls shown before a bandit position


def feature_data(splice, store, hook: str, labels: dict, logit_effects: np.ndarray,
                 title: str, max_features: int = 4096) -> dict:
    """Everything one SAE page shows (module docstring); JSON-ready."""
    acts = store.activations(hook)
    H, T, d = acts.shape
    enc = jax.jit(splice.encode)
    z = np.concatenate([np.asarray(enc(jnp.asarray(acts[i:i + 64].reshape(-1, d))))
                        for i in range(0, H, 64)]).reshape(H, T, -1)
    action, reward = store.step("action"), store.step("reward")
    params = store.task_params()
    obs = store.obs()
    bandit = hasattr(params, "means")
    episode = store.meta("episode")
    best_label = {}
    for r in labels.get("binary", []):
        for f in r["matches"]:
            best_label.setdefault(f, (r["variable"], r["auroc"]))
    auroc, names = np.asarray(labels.get("auroc", np.zeros((0, z.shape[-1])))), labels.get(
        "auroc_names", [])
    flat = z.reshape(-1, z.shape[-1])
    freq = (flat > 0).mean(0)
    alive = np.flatnonzero(freq > 0)[:max_features]
    feats = []
    for f in alive:
        col = flat[:, f]
        top = np.argsort(-col)[:CONTEXTS]
        nz = col[col > 0]
        counts, edges = np.histogram(nz, bins=24)
        contexts = []
        for p in top:
            h, t = divmod(int(p), T)
            if bandit:
                lo = max(0, t - BANDIT_WINDOW)
                contexts.append({"h": h, "t": t, "act": float(col[p]),
                                 "actions": action[h, lo:t].tolist(),
                                 "rewards": reward[h, lo:t].astype(int).tolist(),
                                 "next": int(action[h, t]),
                                 "means": np.round(params.means[h], 2).tolist()})
            else:
                start = t - int(store.meta("step_in_episode")[h, t])
                contexts.append({"h": h, "t": t, "act": float(col[p]),
                                 "episode": int(episode[h, t]),
                                 "path": obs[h, start:t + 1].tolist(),
                                 "rewards": reward[h, start:t].astype(int).tolist(),
                                 "goal": params.goal[h].tolist()})
        if len(names):
            v = int(np.argmax(auroc[:, f]))
            top_var, top_auc = names[v], float(auroc[v, f])
        else:
            top_var, top_auc = "", float("nan")
        label, lab_auc = best_label.get(int(f), ("", None))
        feats.append({"id": int(f), "freq": float(freq[f]), "max": float(col.max()),
                      "label": label, "label_auroc": lab_auc, "top_var": top_var,
                      "top_auroc": top_auc, "logits": np.round(logit_effects[f], 3).tolist(),
                      "hist": counts.tolist(), "edges": [float(edges[0]), float(edges[-1])],
                      "contexts": contexts})
    return {"title": title, "hook": hook, "env": "bandit" if bandit else "darkroom",
            "num_features": int(z.shape[-1]), "alive": int(len(alive)),
            "grid": int(store.dataset.spec.env_config.get("size", 0) or 0),
            "features": feats}


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}
#list{width:46%;overflow:auto;border-right:1px solid #ccc}
#detail{flex:1;overflow:auto;padding:10px}
table{border-collapse:collapse;font-size:12px;width:100%}
th{position:sticky;top:0;background:#eee;cursor:pointer;padding:3px}
td{padding:2px 4px;border-bottom:1px solid #eee}
tr.sel{background:#ffe9a8} tr:hover{background:#f3f3f3}
.ctx{display:inline-block;margin:4px;vertical-align:top;font-size:11px}
h1{font-size:16px;margin:6px}
"""

_SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const cols = [['id','feature'],['freq','density'],['max','max act'],['label','label (AUROC≥0.9)'],
              ['top_var','best variable'],['top_auroc','AUROC'],['logits','logit effect']];
let sortKey = 'freq', sortDir = -1;
function fmt(v){ if (typeof v === 'number') return Number.isInteger(v) ? v : v.toFixed(3);
  if (Array.isArray(v)) return v.map(x => x.toFixed(2)).join(' '); return v ?? ''; }
function drawList(){
  const rows = D.features.slice().sort((a,b) => {
    const x = a[sortKey], y = b[sortKey];
    if (typeof x === 'number') return sortDir * ((x||0) - (y||0));
    return sortDir * String(x).localeCompare(String(y)); });
  let h = '<table id="features"><tr>' + cols.map(c => `<th data-k="${c[0]}">${c[1]}</th>`).join('') + '</tr>';
  for (const f of rows) h += `<tr data-id="${f.id}">` + cols.map(c => `<td>${fmt(f[c[0]])}</td>`).join('') + '</tr>';
  document.getElementById('list').innerHTML = `<h1>${D.title}</h1><p style="margin:6px">${D.alive} live of ${D.num_features} features · ${D.hook}</p>` + h + '</table>';
  document.querySelectorAll('th').forEach(th => th.onclick = () => {
    const k = th.dataset.k; sortDir = (k === sortKey) ? -sortDir : -1; sortKey = k; drawList(); });
  document.querySelectorAll('tr[data-id]').forEach(tr => tr.onclick = () => show(+tr.dataset.id));
}
function hist(f){
  const w = 360, h = 120, n = f.hist.length, m = Math.max(...f.hist, 1);
  let s = `<svg class="hist" width="${w}" height="${h+20}">`;
  f.hist.forEach((c, i) => { const bh = h * c / m;
    s += `<rect x="${i*w/n}" y="${h-bh}" width="${w/n-1}" height="${bh}" fill="#4a7bd0"/>`; });
  s += `<text x="0" y="${h+14}" font-size="10">${f.edges[0].toFixed(2)}</text>`;
  s += `<text x="${w-40}" y="${h+14}" font-size="10">${f.edges[1].toFixed(2)}</text></svg>`;
  return s;
}
const ARM_COLORS = ['#e6194b','#3cb44b','#4363d8','#f58231','#911eb4','#46f0f0','#f032e6','#bcf60c','#fabebe','#008080'];
function bandit(c){
  const cell = 9, w = 31 * cell, arms = c.means.length;
  let s = `<svg width="${w}" height="${arms*cell + 16}">`;
  c.actions.forEach((a, i) => {
    s += `<rect x="${i*cell}" y="${a*cell}" width="${cell-1}" height="${cell-1}" fill="${c.rewards[i] ? ARM_COLORS[a % 10] : '#fff'}" stroke="${ARM_COLORS[a % 10]}"/>`; });
  const i = c.actions.length;
  s += `<rect x="${i*cell}" y="${c.next*cell}" width="${cell-1}" height="${cell-1}" fill="#000"/>`;
  s += `<text x="0" y="${arms*cell+12}" font-size="10">arm means ${c.means.join(' ')}</text></svg>`;
  return s;
}
function grid(c){
  const n = D.grid || 9, cell = 14;
  let s = `<svg width="${n*cell}" height="${n*cell}">`;
  for (let x = 0; x < n; x++) for (let y = 0; y < n; y++)
    s += `<rect x="${x*cell}" y="${y*cell}" width="${cell}" height="${cell}" fill="#fafafa" stroke="#ddd"/>`;
  s += `<rect x="${c.goal[0]*cell}" y="${c.goal[1]*cell}" width="${cell}" height="${cell}" fill="#9be39b"/>`;
  const pts = c.path.map(p => `${p[0]*cell+cell/2},${p[1]*cell+cell/2}`).join(' ');
  s += `<polyline points="${pts}" fill="none" stroke="#4363d8" stroke-width="2"/>`;
  c.path.forEach((p, i) => { if (i > 0 && c.rewards[i-1]) s += `<circle cx="${p[0]*cell+cell/2}" cy="${p[1]*cell+cell/2}" r="3" fill="#e6194b"/>`; });
  const e = c.path[c.path.length-1];
  s += `<circle cx="${e[0]*cell+cell/2}" cy="${e[1]*cell+cell/2}" r="4" fill="#000"/></svg>`;
  return s;
}
function show(id){
  const f = D.features.find(x => x.id === id);
  document.querySelectorAll('tr.sel').forEach(t => t.classList.remove('sel'));
  const tr = document.querySelector(`tr[data-id="${id}"]`); if (tr) tr.classList.add('sel');
  let h = `<h1>feature ${id}</h1><p>density ${f.freq.toFixed(4)} · label ${f.label || '—'} · best variable ${f.top_var} (AUROC ${fmt(f.top_auroc)}) · logit effect per action ${fmt(f.logits)}</p>`;
  h += '<h3>activation histogram (positions where it fires)</h3>' + hist(f);
  h += '<h3>top-activating contexts</h3>';
  for (const c of f.contexts) h += `<div class="ctx">${D.env === 'bandit' ? bandit(c) : grid(c)}<br>history ${c.h}, step ${c.t}${c.episode !== undefined ? ', episode ' + c.episode : ''}, act ${c.act.toFixed(2)}</div>`;
  h += D.env === 'bandit' ? '<p>rows: arms; columns: the pulls before (filled: paid); black: the pull chosen at this position.</p>'
                          : '<p>green: goal; blue: this episode\'s path; red dots: rewarded steps; black: the agent now.</p>';
  document.getElementById('detail').innerHTML = h;
}
drawList(); if (D.features.length) show(D.features.slice().sort((a,b)=>b.freq-a.freq)[0].id);
"""


def page_html(data: dict) -> str:
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(data['title'])}</title><style>{_STYLE}</style></head><body>"
            f"<div id='list'></div><div id='detail'></div>"
            f"<script id='data' type='application/json'>{payload}</script>"
            f"<script>{_SCRIPT}</script></body></html>")


def write_site(out: str | Path, pages: list[dict]) -> Path:
    """Write one page per SAE (``feature_data`` dicts) and ``index.html``; returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links = []
    for i, data in enumerate(pages):
        name = f"sae-{i:02d}.html"
        atomic_write_text(out / name, page_html(data))
        links.append(f"<li><a href='{name}'>{html.escape(data['title'])}</a> — "
                     f"{data['alive']} live features</li>")
    index = ("<!doctype html><html><head><meta charset='utf-8'><title>SAE feature browser"
             "</title></head><body><h1>SAE feature browser</h1><ul>" + "".join(links)
             + "</ul></body></html>")
    atomic_write_text(out / "index.html", index)
    return out / "index.html"
