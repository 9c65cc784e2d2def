"""What splicing an SAE costs the agent: closed-loop return and action-KL, recovered.

For one hook and a grid row of SAEs (a stacked ``Splice``), on held-out tasks:

* **Closed loop** (``closed_loop``): the model acts in context (``ad.evaluate.ad_rollout``)
  with the hook's activation replaced at every step by (a) nothing — the clean model,
  (b) zeros, (c) its mean over the training store (zero / mean ablation,
  ``ad.hooks.ablate``), (d) each SAE's reconstruction (``Splice``). Every condition uses
  the same tasks and the same keys. The score per task: bandits — pseudo-regret over the
  pulls (Σ_t max_a μ_a − μ_{a_t}; lower is better) and reward; Dark Room — mean return
  over episodes 46–55 and 196–205 ("by episode 50 / 200", ``ad.evaluate.by_episode``'s
  window, clipped at the last episode).
* **Recovered** = (SAE − ablation) / (clean − ablation), per ablation, computed on the
  means over tasks and reported only where the ablation's drop is significant (the 95%
  interval of the per-task paired difference clean − ablation excludes 0); raw means
  with 95% intervals over tasks stand beside it.
* **Action-KL** (``action_kl``): KL(clean policy ‖ edited policy) averaged over positions
  of held-out store streams replayed teacher-forced (the clean contexts), recovered =
  1 − KL_SAE / KL_ablation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ad import evaluate as ev
from ad import hooks as H
from ad.interp.sae.models import Splice

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    """Held-out closed-loop and teacher-forced evaluation of spliced SAEs."""

    num_tasks: int = 256
    """held-out tasks (finite task sets: at most the whole test split)"""
    rollouts_per_task: int = 1
    """rollouts per task (averaged within a task: tasks are the units of the intervals)"""
    num_steps: int = 100
    """steps per rollout (Dark Room: 4000 = 200 episodes)"""
    seed: int = 1
    """tasks from key(seed) (continuous task sets), rollout keys fold_in(key(seed), 1)"""
    kl_histories: int = 64
    """held-out store histories replayed teacher-forced for the action-KL"""


def task_scores(env, tasks: PyTree, ro) -> dict[str, np.ndarray]:
    """Per-rollout scores (see module docstring), (N,) each; higher is better except regret."""
    reward = np.asarray(ro.reward, np.float64)
    if hasattr(tasks, "means"):
        means = np.asarray(tasks.means, np.float64)
        regret = (means.max(-1)[:, None] - np.take_along_axis(means, np.asarray(ro.action), 1))
        return {"regret": regret.sum(-1), "reward": reward.sum(-1)}
    done = np.asarray(ro.done)
    episodes = int(done.sum(-1).min())
    curve = ev.episode_curve(ro, episodes)
    out = {"return_all": curve.mean(-1)}
    for k in (50, 200):
        if episodes >= k:  # ad.evaluate.by_episode's window, per rollout (clipped at the end)
            out[f"return_ep{k}"] = curve[:, max(k - 5, 0):min(k + 5, episodes)].mean(-1)
    return out


def per_task(values: np.ndarray, rollouts: int) -> np.ndarray:
    """Average the rollouts of each task (rows are task-major)."""
    return np.asarray(values).reshape(-1, rollouts).mean(-1)


def _ci(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def closed_loop(model, hook: str, splices: Splice, mean_act: np.ndarray,
                cfg: DownstreamConfig) -> dict:
    """Scores of clean, zero-, mean-ablated and each spliced SAE (module docstring)."""
    env, params, mcfg = model.env, model.params, model.config
    key = jax.random.key(cfg.seed)
    tasks = ev.repeat_tasks(ev.eval_tasks(env, "test", cfg.num_tasks, key), cfg.rollouts_per_task)
    rkey = jax.random.fold_in(key, 1)
    run = lambda h: ev.ad_rollout(params, mcfg, env, tasks, rkey, cfg.num_steps,  # noqa: E731
                                  hooks={hook: h})
    clean = ev.ad_rollout(params, mcfg, env, tasks, rkey, cfg.num_steps)
    ablations = H.stack([{hook: H.ablate(hook, mcfg)},
                         {hook: H.ablate(hook, mcfg, value=jnp.asarray(mean_act))}])
    abl = jax.vmap(lambda h: run(h[hook]))(ablations)
    sae = jax.vmap(run)(splices)
    pick = lambda ro, i: jax.tree.map(lambda x: x[i], ro)  # noqa: E731
    conds = {"clean": clean, "zero": pick(abl, 0), "mean": pick(abl, 1)}
    g = jax.tree.leaves(splices.sparsity)[0].shape[0]
    scores = {name: {m: per_task(v, cfg.rollouts_per_task)
                     for m, v in task_scores(env, tasks, jax.device_get(ro)).items()}
              for name, ro in conds.items()}
    sae_scores = [{m: per_task(v, cfg.rollouts_per_task)
                   for m, v in task_scores(env, tasks, jax.device_get(pick(sae, i))).items()}
                  for i in range(g)]
    return summarise(scores, sae_scores)


def summarise(scores: dict, sae_scores: list[dict]) -> dict:
    """Raw means ± 95% intervals per condition and the recovered fractions (module doc)."""
    out = {"raw": {}, "sae": []}
    for name, per in scores.items():
        out["raw"][name] = {m: _ci(v) for m, v in per.items()}
    sign = {"regret": -1.0}
    for s in sae_scores:
        entry = {"raw": {m: _ci(v) for m, v in s.items()}, "recovered": {}}
        for m, v in s.items():
            sg = sign.get(m, 1.0)
            clean = sg * scores["clean"][m]
            for abl in ("zero", "mean"):
                a = sg * scores[abl][m]
                drop = clean - a
                mu, half = _ci(drop)
                significant = mu - half > 0
                ratio = float((sg * v.mean() - a.mean()) / drop.mean()) if significant else None
                entry["recovered"][f"{m}_vs_{abl}"] = ratio
                out.setdefault("ablation_drop", {})[f"{m}_{abl}"] = {
                    "mean": mu, "ci95": half, "significant": bool(significant)}
        out["sae"].append(entry)
    return out


def action_kl(model, hook: str, splices: Splice, mean_act: np.ndarray, stream) -> dict:
    """Teacher-forced KL(clean ‖ edited) over the positions of ``stream`` (module doc)."""
    from ad.interp.streams import to_inputs

    params, mcfg = model.params, model.config
    inputs = to_inputs(stream, mcfg)
    fwd = jax.jit(lambda h: H.run_with_hooks(params, mcfg, inputs, h))
    logp = jax.nn.log_softmax(H.run_with_hooks(params, mcfg, inputs), -1)

    def kl(edit) -> jax.Array:
        lq = jax.nn.log_softmax(fwd({hook: edit}), -1)
        return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - lq), -1))

    zero = float(kl(H.ablate(hook, mcfg)))
    mean = float(kl(H.ablate(hook, mcfg, value=jnp.asarray(mean_act))))
    g = jax.tree.leaves(splices.sparsity)[0].shape[0]
    sae = [float(kl(jax.tree.map(lambda x: x[i], splices))) for i in range(g)]
    return {"kl_zero": zero, "kl_mean": mean, "kl_sae": sae,
            "kl_recovered_vs_zero": [1 - s / zero for s in sae],
            "kl_recovered_vs_mean": [1 - s / mean for s in sae]}


def run_downstream(stores, sweep_dir, cfg: DownstreamConfig, model=None,
                   progress: bool = True) -> list[dict]:
    """Closed-loop and action-KL scores of every saved grid row of a sweep, written next to
    each row as ``<row>.downstream.json`` (a rerun skips rows already scored)."""
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from ad.checkpoints import load_model
    from ad.interp.sae.store import ActivationStore
    from ad.interp.sae.sweep import load_row, rows_of
    from ad.utils import atomic_write_text, provenance

    train, test = ActivationStore(Path(stores) / "train"), ActivationStore(Path(stores) / "test")
    model = model or load_model(train.config["run"])
    rows = [(h, p) for h in train.hooks for p in rows_of(sweep_dir, h)]
    stream = test.stream()
    stream = type(stream)(*(jax.tree.map(lambda x: x[:cfg.kl_histories], f) for f in stream))
    means: dict = {}
    out = []
    for hook, path in tqdm(rows, disable=not progress, desc="downstream", unit="row"):
        target = path.with_name(path.name + ".downstream.json")
        if target.exists():
            out.append(json.loads(target.read_text()))
            continue
        if hook not in means:
            acts = train.activations(hook)
            means[hook] = acts.reshape(-1, acts.shape[-1]).mean(0)
        saved = load_row(path)
        result = {"hook": hook, "row": saved.record["row"], "settings": saved.record["settings"],
                  "config": dataclasses.asdict(cfg),
                  "closed_loop": closed_loop(model, hook, saved.splice, means[hook], cfg),
                  "action_kl": action_kl(model, hook, saved.splice, means[hook], stream),
                  **provenance()}
        atomic_write_text(target, json.dumps(result, indent=1) + "\n")
        out.append(result)
    return out
