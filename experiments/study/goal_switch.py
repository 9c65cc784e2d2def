"""Experiment 6 (Dark Room), goal switch and memorisation: after it found the goal, move it.

    python -m experiments.study.goal_switch --runs /work/tut/runs --subjects darkroom

On every held-out goal A the model acts in context for 100 episodes; then the goal moves
to another held-out goal B (``B = test goal (i + 5) mod 16``) and the model continues
for 100 episodes with its own 100 episodes on A as the context (``ad_rollout(prompt=)``:
its cache holds them; the model reads at most the last 6). Against: the model on B from
an empty context, and the source (PPO) learning B from scratch.

Metrics, per rollout: episodes until the return first reaches half of B's optimum
(censored at 101), the return of the last 10 episodes (91-100; not a best-of-k), the
fraction of episodes that end on the old goal A (first 10 and last 10 after the switch),
and — memorisation — among episodes that earned nothing, the fraction that end on a
*training*-goal cell, against a uniform policy's unpaid episodes. Writes
``<out>/goal_switch-darkroom.{json,png}``.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import source_agents
from ad import evaluate as ev
from ad.interp.agents import Uniform, agent_rollout
from ad.plots import plot_curves
from experiments.study import common as C
from experiments.study.exploration import ends
from source_agents.history import LearningHistory

EXPERIMENT = "goal_switch"
EPISODES = 100
SHIFT = 5


def recovery(curve: np.ndarray, optimum: np.ndarray) -> np.ndarray:
    """(B,) 1-based episode at which the return first reaches half the optimum (E + 1 if never)."""
    hit = curve >= 0.5 * optimum[:, None]
    return np.where(hit.any(1), hit.argmax(1) + 1, curve.shape[1] + 1)


def end_cells(obs, action, done, size) -> np.ndarray:
    """(B, E, 2): the cell each episode ended on."""
    cells = ends(np.asarray(obs), np.asarray(action), size)
    B = cells.shape[0]
    return cells[np.asarray(done, bool)].reshape(B, -1, 2)


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    if config.subject != "darkroom":
        raise ValueError("goal_switch: Dark Room only (a bandit has no goal to move)")
    subject = C.load_subject(config)
    env, H, rpt = subject.env, subject.horizon, subject.rollouts_per_task
    test = np.asarray(env.tasks("test").goal)
    goal_a = np.asarray(subject.tasks.goal)
    idx = np.repeat(np.arange(len(test)), rpt)
    goal_b = test[(idx + SHIFT) % len(test)]
    tasks_b = type(subject.tasks)(goal=goal_b)
    opt_b = np.asarray(jax.vmap(env.optimal_return)(tasks_b))
    train_cells = {tuple(g) for g in np.asarray(env.tasks("train").goal)}
    num_steps = EPISODES * H
    key = jax.random.fold_in(jax.random.PRNGKey(config.key), 6)

    def on_train_goal(cells):
        return np.array([[tuple(c) in train_cells for c in row] for row in cells])

    def unpaid_on_train(r):
        cells = end_cells(r.obs, r.action, r.done, env.size)
        unpaid = np.asarray(r.reward).reshape(cells.shape[0], -1, H).sum(-1) == 0
        return on_train_goal(cells)[unpaid].mean() if unpaid.any() else np.nan

    per_seed = {"switch": [], "fresh": []}
    curves = {"after the switch": [], "empty context": []}
    old_goal = {"first10": [], "last10": []}
    memorise = {"switch": [], "fresh": []}
    for i, m in enumerate(subject.models):
        C.say(f"darkroom seed {config.seeds[i]}: {EPISODES} episodes on A, then B")
        first = C.rollout(subject, m, subject.tasks, jax.random.fold_in(key, 100 + i),
                          num_steps, record_policy=True)
        prompt = LearningHistory(first.obs, first.action, first.reward,
                                 np.zeros_like(first.done), first.done)
        after = C.rollout(subject, m, tasks_b, jax.random.fold_in(key, 200 + i), num_steps,
                          prompt=prompt, record_policy=True)
        fresh = C.rollout(subject, m, tasks_b, jax.random.fold_in(key, 300 + i), num_steps,
                          record_policy=True)
        for name, r in (("switch", after), ("fresh", fresh)):
            curve = ev.episode_curve(r, EPISODES)
            per_seed[name].append({"recovery": recovery(curve, opt_b),
                                   "last10": curve[:, -10:].mean(1)})
            memorise[name].append(unpaid_on_train(r))
            curves["after the switch" if name == "switch" else "empty context"].append(curve)
        cells = end_cells(after.obs, after.action, after.done, env.size)
        on_a = np.all(cells == goal_a[:, None], -1)
        old_goal["first10"].append(on_a[:, :10].mean())
        old_goal["last10"].append(on_a[:, -10:].mean())
    C.say("darkroom: the source learning B from scratch; a uniform policy on B")
    setting = config.setting
    source = source_agents.get(setting.source)
    _, src_curve = ev.source_learning(source, source_agents.make_config(
        source, setting.env, **setting.source_overrides), env, tasks_b,
        jax.random.fold_in(key, 7), EPISODES)
    uni = agent_rollout(Uniform(env.num_actions), env, tasks_b, jax.random.fold_in(key, 9),
                        num_steps)

    def per_task(x):
        return np.asarray(x, float).reshape(-1, rpt).mean(1)

    results = {"episodes": EPISODES, "goal_b": f"test goal (i + {SHIFT}) mod 16",
               "optimum_b_mean": float(opt_b.mean())}
    for name in ("switch", "fresh"):
        results[name] = {
            "recovery_episodes_over_seeds": C.over_seeds(
                [s["recovery"].mean() for s in per_seed[name]]),
            "last10_return_over_seeds": C.over_seeds([s["last10"].mean() for s in per_seed[name]]),
            "unpaid_episodes_ending_on_training_goal_over_seeds": C.over_seeds(memorise[name])}
    results["switch_minus_fresh_recovery_per_seed_over_tasks"] = [
        C.over_tasks(per_task(s["recovery"]) - per_task(f["recovery"]))
        for s, f in zip(per_seed["switch"], per_seed["fresh"])]
    results["switch_minus_fresh_last10_per_seed_over_tasks"] = [
        C.over_tasks(per_task(s["last10"]) - per_task(f["last10"]))
        for s, f in zip(per_seed["switch"], per_seed["fresh"])]
    results["episodes_ending_on_old_goal"] = {k: C.over_seeds(v) for k, v in old_goal.items()}
    results["source"] = {"recovery_episodes": C.over_tasks(recovery(src_curve, opt_b)),
                         "last10_return": C.over_tasks(src_curve[:, -10:].mean(1))}
    uni_ro = type(uni)(uni.obs, uni.action, uni.reward, uni.done)
    results["uniform_unpaid_episodes_ending_on_training_goal"] = float(unpaid_on_train(uni_ro))
    _, png = C.output_paths(EXPERIMENT, config)
    panel = {k: C.curve_stats(np.concatenate(v)) for k, v in curves.items()}
    colours = {"after the switch": "tab:blue", "empty context": "tab:green"}
    panel = {k: {"mean": v["mean"], "ci": v["ci95"], "style": {"color": colours[k]}}
             for k, v in panel.items()}
    panel["source (PPO from scratch)"] = {"mean": src_curve.mean(0), "ci": ev.mean_and_ci(src_curve)[1]}
    panel["optimal"] = {"mean": np.full(EPISODES, opt_b.mean()), "ci": None}
    plot_curves({"on the new goal B (held-out)": panel}, png,
                title=f"darkroom: the goal moved after {EPISODES} episodes "
                      f"({len(subject.models)} seeds)")
    return results


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 6, darkroom: goal moved after {r['episodes']} episodes "
          f"(mean ± 95% t-interval over seeds) ===")
    for name in ("switch", "fresh"):
        v = r[name]
        print(f"  {name:7s} episodes to half the optimum {C.fmt(v['recovery_episodes_over_seeds'])}; "
              f"last 10 {C.fmt(v['last10_return_over_seeds'])}; unpaid episodes ending on a "
              f"training goal {C.fmt(v['unpaid_episodes_ending_on_training_goal_over_seeds'])}")
    s = r["source"]
    print(f"  source  episodes to half the optimum {s['recovery_episodes']['mean']:.1f}; last 10 "
          f"{s['last10_return']['mean']:.2f}")
    print(f"  uniform unpaid episodes ending on a training goal "
          f"{r['uniform_unpaid_episodes_ending_on_training_goal']:.3f}")
    print("  episodes ending on the old goal: " + ", ".join(
        f"{k} {C.fmt(v)}" for k, v in r["episodes_ending_on_old_goal"].items()))


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__], subjects=("darkroom",)))
