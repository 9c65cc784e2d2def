"""Experiment 3, position or content: does competence follow where a step is, or what it has seen?

    python -m experiments.study.position --runs /work/tut/runs

Teacher-forced on the source's held-out histories (``experiments.run``'s draw; Dark Room
kept every 8th episode, as the model was trained), the same transitions in another order:

* ``reversed`` / ``shuffled``: the stream's episodes (bandits: pulls) in reverse or in a
  random order (seeded per row). For bandits the last pull stays last, so the final
  position reads exactly the same 99 pulls in every order.
* ``shifted`` (bandits): the model reads only pulls 51-100, as if they were the first 50.

Metric: the model's policy quality at each position (bandits ``pi · mu``; Dark Room the
probability of a shortest-path action) — its curve, the improvement (last 10 minus first
5 positions), the quality over the first 5 positions minus the original order's, and
(bandits) the quality at the last position minus the original's. Content predicts that a
reversed or shifted stream, which starts with the source's competent behaviour and its
rewards, is good from the start; position predicts it starts low and climbs as the
original does. Writes ``<out>/position-<subject>.{json,png}``.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from ad.interp.agents import UCB1, GoalPosterior
from ad.plots import plot_curves
from experiments.study import common as C

EXPERIMENT = "position"


def orders(subject: C.Subject, num_episodes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Episode orders per condition, (B, E') each."""
    B = subject.n
    E = num_episodes
    rng = np.random.default_rng(seed)
    keep_last = subject.bandit  # the last pull stays last: the last position reads the same pulls
    body = E - 1 if keep_last else E
    rev = np.broadcast_to(np.arange(body)[::-1], (B, body))
    shuf = np.stack([rng.permutation(body) for _ in range(B)])
    tail = np.full((B, 1), E - 1) if keep_last else np.zeros((B, 0), int)
    out = {"original": np.broadcast_to(np.arange(E), (B, E)),
           "reversed": np.concatenate([rev, tail], 1),
           "shuffled": np.concatenate([shuf, tail], 1)}
    if subject.bandit:
        out["shifted"] = np.broadcast_to(np.arange(E // 2, E), (B, E - E // 2))
    return out


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    C.say(f"{config.subject}: the source learning {subject.n} held-out tasks from scratch")
    stream, _ = C.source_histories(subject)
    H = C.episode_length(stream)
    E = stream.action.shape[1] // H
    stream = jax.tree.map(lambda x: np.asarray(x)[:, :E * H], stream)
    rpt = subject.rollouts_per_task
    conds = orders(subject, E)
    agent = UCB1(subject.env.num_actions) if subject.bandit else GoalPosterior(subject.env.size)
    reference = {}  # the content prediction: the reference agent on the same edited stream
    for c, order in conds.items():
        edited = C.take_episodes(stream, order)
        q = C.quality(subject, edited, C.reference_policy(agent, edited))
        reference[c] = C.per_episode(q, edited.done, order.shape[1])
    curves = {c: [] for c in conds}
    last_q = {c: [] for c in conds}
    last_tv = {c: [] for c in conds}
    for i, m in enumerate(subject.models):
        forward = jax.jit(m.apply)
        base_pi = None
        for c, order in conds.items():
            C.say(f"{config.subject} seed {config.seeds[i]}: teacher-forced, {c} order")
            edited = C.take_episodes(stream, order)
            pi = C.policy(m, edited, forward, config=config)
            q = C.quality(subject, edited, pi)
            curves[c].append(C.per_episode(q, edited.done, order.shape[1]))
            if base_pi is None:
                base_pi = pi
            last_q[c].append(q[:, -1])
            last_tv[c].append(0.5 * np.abs(pi[:, -1] - base_pi[:, -1]).sum(-1))

    def per_task(x):  # (rows,) -> (tasks,)
        return np.asarray(x).reshape(-1, rpt).mean(1)

    results = {"metric": ("expected reward pi . mu" if subject.bandit else
                          "probability of a shortest-path action to the goal"),
               "episodes": E, "conditions": {}}
    for c, cs in curves.items():
        imp = [C.task_improvement(x, rpt) for x in cs]
        early = [per_task(x[:, :5].mean(1)) for x in cs]
        early_diff = [e - b for e, b in zip(early, [per_task(x[:, :5].mean(1))
                                                     for x in curves["original"]])]
        entry = {
            "improvement_per_seed_over_tasks": [C.over_tasks(x) for x in imp],
            "improvement_over_seeds": C.over_seeds([x.mean() for x in imp]),
            "first5_quality_over_seeds": C.over_seeds([x.mean() for x in early]),
            "first5_minus_original_per_seed_over_tasks": [C.over_tasks(x) for x in early_diff],
            "first5_minus_original_over_seeds": C.over_seeds([x.mean() for x in early_diff]),
            "curve": C.curve_stats(np.concatenate(cs)),
            "reference_curve": C.curve_stats(reference[c]),
        }
        if c != "original" and c != "shifted":
            # how far the model's curve is from each reading's prediction: the reference
            # agent on the same reordered stream (content) or the model's own curve on the
            # original order at the same position (position); mean |gap| per task
            content = [np.abs(x - reference[c]).mean(1) for x in cs]
            pos = [np.abs(x - o).mean(1) for x, o in zip(cs, curves["original"])]
            entry["gap_to_content_prediction_over_seeds"] = C.over_seeds(
                [per_task(x).mean() for x in content])
            entry["gap_to_position_prediction_over_seeds"] = C.over_seeds(
                [per_task(x).mean() for x in pos])
            entry["content_minus_position_gap_per_seed_over_tasks"] = [
                C.over_tasks(per_task(a - b)) for a, b in zip(content, pos)]
        if subject.bandit and c != "shifted":
            d = [per_task(q - b) for q, b in zip(last_q[c], last_q["original"])]
            entry["last_position_minus_original_per_seed_over_tasks"] = [C.over_tasks(x) for x in d]
            entry["last_position_minus_original_over_seeds"] = C.over_seeds([x.mean() for x in d])
            entry["last_position_total_variation_over_seeds"] = C.over_seeds(
                [np.mean(x) for x in last_tv[c]])
        results["conditions"][c] = entry
    _, png = C.output_paths(EXPERIMENT, config)
    ref_name = "UCB1" if subject.bandit else "goal-posterior agent"
    plot_curves({"the model": {
        c: {"mean": v["curve"]["mean"], "ci": v["curve"]["ci95"]}
        for c, v in results["conditions"].items()},
        f"{ref_name} on the same streams (content prediction)": {
        c: {"mean": v["reference_curve"]["mean"], "ci": v["reference_curve"]["ci95"]}
        for c, v in results["conditions"].items()}}, png,
        xlabel="pull" if subject.bandit else "episode (kept every 8th)",
        ylabel=results["metric"],
        title=f"{config.subject}: the same transitions in another order "
              f"({len(subject.models)} seeds)")
    return results


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 3, {record['config']['subject']} ({r['metric']}), "
          f"mean ± 95% t-interval over seeds ===")
    for c, v in r["conditions"].items():
        line = (f"  {c:9s} improvement {C.fmt(v['improvement_over_seeds'])}\n"
                f"  {'':9s} first 5 minus original {C.fmt(v['first5_minus_original_over_seeds'])}")
        if "gap_to_content_prediction_over_seeds" in v:
            line += (f"\n  {'':9s} mean |gap| to content prediction "
                     f"{C.fmt(v['gap_to_content_prediction_over_seeds'])}, to position prediction "
                     f"{C.fmt(v['gap_to_position_prediction_over_seeds'])}")
        if "last_position_minus_original_over_seeds" in v:
            line += (f"\n  {'':9s} last position minus original "
                     f"{C.fmt(v['last_position_minus_original_over_seeds'])}, TV "
                     f"{C.fmt(v['last_position_total_variation_over_seeds'])}")
        print(line)


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
