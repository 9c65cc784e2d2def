"""Experiment 1, rewards or schedule: does in-context improvement survive uninformative rewards?

    python -m experiments.study.rewards --runs /work/tut/runs            # both subjects, 3 seeds

The rewards the model reads are replaced while observations and actions are kept:
zeroed, shuffled within the stream, flipped (``1 - r``) or frozen at the first episode's.

* Closed loop: ``ad_rollout(feedback=ZeroRewards() | ShuffledRewards() | FlipRewards() |
  FrozenRewards())`` on held-out tasks; the env's true rewards are recorded, so the
  improvement (episodes 191-200 minus 1-5; bandits pulls 91-100 minus 1-5,
  ``experiments.run.improvement``) measures what the model *earns* when what it reads is
  edited.
* Teacher-forced: the source's held-out histories (``experiments.run``'s call, Dark Room
  kept every 8th episode) edited by the twin ``ad.interp.streams`` edits; the model's
  policy quality (bandits: ``pi · mu``; Dark Room: probability of a shortest-path action)
  per episode, improvement = last 10 episodes minus first 5.

In-context RL predicts the improvement collapses (flipped: reverses); imitation of a
learning schedule predicts it survives. Writes ``<out>/rewards-<subject>.{json,png}``:
per-seed improvements with 95% intervals over tasks, the mean and 95% t-interval over
seeds, the paired difference from true rewards, and the curves.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from ad import evaluate as ev
from ad.interp import streams as st
from ad.plots import plot_curves
from experiments.run import _pseudo_regret
from experiments.study import common as C

EXPERIMENT = "rewards"
CONDITIONS = ("true", "zero", "shuffle", "flip", "freeze")
EDITS = {"true": lambda s: s, "zero": st.zero_rewards, "shuffle": st.shuffle_rewards,
         "flip": st.flip_rewards, "freeze": st.freeze_rewards}


def feedback(condition: str, num_steps: int):
    """The closed-loop twin of each teacher-forced edit (None: true rewards)."""
    return {"true": None, "zero": st.ZeroRewards(),
            "shuffle": st.ShuffledRewards(capacity=num_steps), "flip": st.FlipRewards(),
            "freeze": st.FrozenRewards()}[condition]


def closed_loop_model(subject: C.Subject, model, key, conditions=CONDITIONS,
                      label: str = "") -> dict:
    """One model in closed loop on the held-out tasks, per condition: its curve (rows, E)
    and, for bandits, its pseudo-regret (rows, pulls; else None)."""
    E = subject.episodes
    num_steps = E * subject.horizon
    out = {}
    for c in conditions:
        C.say(f"{subject.config.subject} {label}: closed loop, {c} rewards "
              f"({subject.n} rollouts x {num_steps} steps)")
        r = C.rollout(subject, model, subject.tasks, key, num_steps,
                      feedback=feedback(c, num_steps))
        out[c] = {"curve": ev.episode_curve(r, E),
                  "regret": _pseudo_regret(subject.env, subject.tasks, r.action)
                  if subject.bandit else None}
    return out


def closed_loop(subject: C.Subject) -> dict:
    """Per condition: per-seed curves (rows, E) and pseudo-regrets (bandits)."""
    key = jax.random.fold_in(jax.random.PRNGKey(subject.config.key), 0)
    out = {c: {"curves": [], "regret": []} for c in CONDITIONS}
    for i, m in enumerate(subject.models):
        res = closed_loop_model(subject, m, jax.random.fold_in(key, 100 + i),
                                label=f"seed {subject.config.seeds[i]}")
        for c in CONDITIONS:
            out[c]["curves"].append(res[c]["curve"])
            if subject.bandit:
                out[c]["regret"].append(res[c]["regret"])
    return out


def teacher_forced(subject: C.Subject, stream: st.Stream) -> dict:
    """Per condition: per-seed policy-quality curves (rows, episodes) on the edited stream."""
    n_eps = int(np.asarray(stream.done).sum(1).min())
    out = {c: [] for c in CONDITIONS}
    for i, m in enumerate(subject.models):
        forward = jax.jit(m.apply)
        for c in CONDITIONS:
            C.say(f"{subject.config.subject} seed {subject.config.seeds[i]}: teacher-forced, "
                  f"{c} rewards")
            pi = C.policy(m, EDITS[c](stream), forward, config=subject.config)
            q = C.quality(subject, stream, pi)
            out[c].append(C.per_episode(q, stream.done, n_eps))
    return out


def summarise(curves_by_condition: dict, rollouts_per_task: int) -> dict:
    """Improvement per seed (over tasks), over seeds, and minus the true-reward one."""
    true_tasks = [C.task_improvement(c, rollouts_per_task) for c in curves_by_condition["true"]]
    out = {}
    for cond, curves in curves_by_condition.items():
        per_task = [C.task_improvement(c, rollouts_per_task) for c in curves]
        diff = [p - t for p, t in zip(per_task, true_tasks)]
        out[cond] = {
            "improvement_per_seed_over_tasks": [C.over_tasks(p) for p in per_task],
            "improvement_over_seeds": C.over_seeds([p.mean() for p in per_task]),
            "minus_true_per_seed_over_tasks": [C.over_tasks(d) for d in diff],
            "minus_true_over_seeds": C.over_seeds([d.mean() for d in diff]),
            "curve": C.curve_stats(np.concatenate(curves)),
        }
    return out


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    C.say(f"{config.subject}: the source learning {subject.n} held-out tasks from scratch")
    stream, source_curve = C.source_histories(subject)
    rpt = subject.rollouts_per_task
    closed = closed_loop(subject)
    forced = teacher_forced(subject, stream)
    n_eps = forced["true"][0].shape[1]
    src = C.per_episode(np.asarray(stream.reward, np.float64), stream.done, n_eps)
    src = src * (1 if subject.bandit else subject.horizon)  # Dark Room: return per episode
    results = {
        "closed_loop": summarise({c: v["curves"] for c, v in closed.items()}, rpt),
        "teacher_forced": summarise(forced, rpt),
        "source_stream_improvement_over_tasks": C.over_tasks(C.task_improvement(src, rpt)),
        "source_stream_curve": C.curve_stats(src),
        "teacher_forced_episodes": n_eps,
        "metric": {"closed_loop": "return per episode (bandits: reward per pull), true rewards",
                   "teacher_forced": ("expected reward pi . mu" if subject.bandit else
                                      "probability of a shortest-path action to the goal")},
    }
    if subject.bandit:
        results["closed_loop_final_pseudo_regret"] = {
            c: C.over_seeds([float(r[:, -1].mean()) for r in v["regret"]])
            for c, v in closed.items()}
    plot(subject, results)
    return results


def plot(subject: C.Subject, results: dict) -> None:
    unit = "pull" if subject.bandit else "episode"
    panels = {
        "closed loop (what it earns)": {
            c: {"mean": v["curve"]["mean"], "ci": v["curve"]["ci95"]}
            for c, v in results["closed_loop"].items()},
        "teacher-forced on the source's histories": {
            c: {"mean": v["curve"]["mean"], "ci": v["curve"]["ci95"]}
            for c, v in results["teacher_forced"].items()},
    }
    _, png = C.output_paths(EXPERIMENT, subject.config)
    plot_curves(panels, png, xlabel=unit,
                ylabel="return / policy quality (panel titles)",
                title=f"{subject.config.subject}: rewards the model reads edited "
                      f"({len(subject.models)} seeds, held-out tasks)")


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 1, {record['config']['subject']}: improvement (late − early), "
          f"mean ± 95% t-interval over seeds ===")
    for mode in ("closed_loop", "teacher_forced"):
        print(f"-- {mode.replace('_', ' ')} ({r['metric'][mode]})")
        for c, v in r[mode].items():
            print(f"  {c:8s} {C.fmt(v['improvement_over_seeds'])}   minus true: "
                  f"{C.fmt(v['minus_true_over_seeds'])}")


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
