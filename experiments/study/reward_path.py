"""Experiment 7 (closed-loop half): which heads does in-context improvement need, and do
they also carry single-episode competence?

    python -m experiments.study.reward_path --runs /work/tut/runs

Every attention head is mean-ablated in turn (its mean ``hook_z`` over 256 windows of the
model's training histories: ``experiments.analysis.interp_tutorial.training_means``)
inside the rollout on held-out tasks; no ablation is the reference, and all 1 + L·H
rollouts are one ``jit(vmap)`` call per measure. Two measures per head and seed:

* in-context improvement from an empty context (episodes 191-200 minus 1-5; bandits
  pulls 91-100 minus 1-5), as in experiment 1;
* single-episode competence: after a competent prompt that shows the answer — Dark Room:
  the source's last 5 episodes on the task; bandits: UCB1's first 90 pulls — the mean
  return of the next 10 episodes (bandits: the expected reward ``mu[a]`` of the next 10
  pulls).

A reward path for in-context RL predicts heads whose ablation removes the improvement
while competence survives; one context-reading mechanism predicts both fall together.
Writes ``<out>/reward_path-<subject>.{json,png}``.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ad import evaluate as ev  # noqa: E402
from ad import hooks  # noqa: E402
from ad.plots import save_figure  # noqa: E402
from experiments.analysis.interp_tutorial import training_means  # noqa: E402
from experiments.study import common as C  # noqa: E402
from experiments.study.information import as_history  # noqa: E402

EXPERIMENT = "reward_path"
NEXT = 10


def set_masks(config, head_sets) -> np.ndarray:
    """(1 + len(head_sets), L, 1, 1, H, 1) ``hook_z`` masks: cell 0 ablates nothing, cell
    1 + i every head ``(layer, head)`` of ``head_sets[i]`` together."""
    where = np.zeros((1 + len(head_sets), config.num_layers, 1, 1, config.num_heads, 1), bool)
    for i, heads in enumerate(head_sets):
        for l, h in heads:
            where[1 + i, l, 0, 0, h, 0] = True
    return where


def head_masks(config) -> tuple[list[str], np.ndarray, list[str]]:
    """Hook names, (1 + L*H, L, 1, 1, H, 1) masks (cell 0: none; 1 + l*H + h: head l.h),
    and the cells' labels."""
    L, H = config.num_layers, config.num_heads
    heads = [(l, h) for l in range(L) for h in range(H)]
    return (hook_names(config), set_masks(config, [[lh] for lh in heads]),
            ["none"] + [f"L{l}H{h}" for l, h in heads])


def hook_names(config) -> list[str]:
    return [f"blocks.{l}.attn.hook_z" for l in range(config.num_layers)]


def ablated_rollouts(model, env, tasks, key, num_steps: int, means: dict, where: np.ndarray,
                     prompt=None):
    """Actions, rewards and episode ends (cells, N, S), each cell's heads (``set_masks``)
    mean-ablated; one ``jit(vmap)`` call over the cells."""
    names = hook_names(model.config)

    def run(w):
        edits = {n: hooks.Intervention(w[l], jnp.float32(0), means[n])
                 for l, n in enumerate(names)}
        ro = ev.ad_rollout(model.params, model.config, env, tasks, key, num_steps,
                           prompt=prompt, hooks=edits)
        return ro.action, ro.reward, ro.done

    return jax.jit(jax.vmap(run))(jnp.asarray(where))


class Kept(NamedTuple):
    """Per cell (``set_masks``) and held-out task, in closed loop."""

    improvement: np.ndarray  # (cells, tasks): in-context improvement from an empty context
    competence: np.ndarray  # (cells, tasks): return of the NEXT episodes after the prompt


def ablation_key(config: C.StudyConfig) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(config.key), 7007)


def closed_loop(subject: C.Subject, i: int, where: np.ndarray, prompt) -> Kept:
    """Seed ``i``'s model with each cell's heads mean-ablated (means over 256 windows of its
    training histories), from an empty context and after the competent ``prompt``; the
    keys depend on the seed's index only, so every caller gets the same rollouts."""
    m, env, rpt, E = subject.models[i], subject.env, subject.rollouts_per_task, subject.episodes
    key = ablation_key(subject.config)
    means = training_means(m, 256, jax.random.fold_in(key, i))
    a, r, d = ablated_rollouts(m, env, subject.tasks, jax.random.fold_in(key, 100 + i),
                               E * subject.horizon, means, where)
    improvement = np.stack([C.task_improvement(ev.episode_curve(ev.Rollout(a[c], r[c], d[c]), E),
                                               rpt) for c in range(len(where))])
    a, r, d = ablated_rollouts(m, env, subject.tasks, jax.random.fold_in(key, 200 + i),
                               NEXT * subject.horizon, means, where, prompt=prompt)
    comp = []
    for c in range(len(where)):
        if subject.bandit:
            x = np.take_along_axis(np.asarray(subject.tasks.means), np.asarray(a[c]), 1).mean(1)
        else:
            x = ev.episode_curve(ev.Rollout(a[c], r[c], d[c]), NEXT).mean(1)
        comp.append(np.asarray(x).reshape(-1, rpt).mean(1))
    return Kept(improvement, np.stack(comp))


def competent_prompt(subject: C.Subject):
    """The prompt that shows the answer (module docstring), as a LearningHistory."""
    if subject.bandit:
        stream, _ = C.source_histories(subject)
        # its first 90 pulls (not the last 50 alone: a stream that starts with one arm's
        # pulls has untried arms, which the model, like UCB1, pulls first; experiment 3)
        return as_history(jax.tree.map(lambda x: np.asarray(x)[:, :100 - NEXT], stream))
    from experiments.study.information import PROMPT_EPISODES, whole

    stream, _ = C.source_histories(subject, subsample=False)
    stream = whole(stream)
    H = subject.horizon
    E = stream.action.shape[1] // H
    order = np.broadcast_to(np.arange(E - PROMPT_EPISODES, E), (subject.n, PROMPT_EPISODES))
    return as_history(C.take_episodes(stream, order))


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    prompt = competent_prompt(subject)
    improvement, competence = [], []  # per seed: (cells, tasks)
    labels = None
    for i, m in enumerate(subject.models):
        C.say(f"{config.subject} seed {config.seeds[i]}: every head mean-ablated, empty context "
              f"and after the competent prompt")
        _, where, labels = head_masks(m.config)
        kept = closed_loop(subject, i, where, prompt)
        improvement.append(kept.improvement)
        competence.append(kept.competence)
    results = {"cells": labels, "next_episodes": NEXT, "heads": {}}
    for c, label in enumerate(labels):
        entry = {"improvement_over_seeds": C.over_seeds([x[c].mean() for x in improvement]),
                 "competence_over_seeds": C.over_seeds([x[c].mean() for x in competence])}
        if c:
            entry["improvement_minus_none_per_seed_over_tasks"] = [
                C.over_tasks(x[c] - x[0]) for x in improvement]
            entry["competence_minus_none_per_seed_over_tasks"] = [
                C.over_tasks(x[c] - x[0]) for x in competence]
            entry["improvement_fraction_kept_per_seed"] = [
                float(x[c].mean() / x[0].mean()) for x in improvement]
            entry["competence_fraction_kept_per_seed"] = [
                float(x[c].mean() / x[0].mean()) for x in competence]
        results["heads"][label] = entry
    plot(subject, results)
    return results


def plot(subject: C.Subject, results: dict) -> None:
    heads = [k for k in results["cells"] if k != "none"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k in heads:
        imp = results["heads"][k]["improvement_fraction_kept_per_seed"]
        comp = results["heads"][k]["competence_fraction_kept_per_seed"]
        ax.scatter(imp, comp, s=18)
        ax.annotate(k, (np.mean(imp), np.mean(comp)), fontsize=8)
    ax.axhline(1, color="0.7", lw=0.8)
    ax.axvline(1, color="0.7", lw=0.8)
    ax.set_xlabel("in-context improvement kept (ablated / none)")
    ax.set_ylabel("return after a competent prompt kept (ablated / none)")
    ax.set_title(f"{subject.config.subject}: each head mean-ablated in closed loop\n"
                 f"(one dot per seed, held-out tasks)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, C.output_paths(EXPERIMENT, subject.config)[1])  # atomic


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 7 (closed loop), {record['config']['subject']}: fraction kept "
          f"per seed, ablated / none ===")
    none = r["heads"]["none"]
    print(f"  none: improvement {C.fmt(none['improvement_over_seeds'])}; competence "
          f"{C.fmt(none['competence_over_seeds'])}")
    for k in r["cells"][1:]:
        v = r["heads"][k]
        print(f"  {k}: improvement kept {', '.join(f'{x:.2f}' for x in v['improvement_fraction_kept_per_seed'])}"
              f"; competence kept {', '.join(f'{x:.2f}' for x in v['competence_fraction_kept_per_seed'])}")


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
