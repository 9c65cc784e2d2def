"""Experiment 8, exploration quality: how does the model search before its first reward?

    python -m experiments.study.exploration --runs /work/tut/runs

Dark Room. Until its first reward every agent lives exactly what it would live in a room
without a goal (all rewards read 0), so each agent is run in a goal-less room (the goal
placed outside the grid) for 20 episodes (400 steps), and from the same trajectories:

* coverage: distinct cells reached (the start cell included) after k steps, across
  episodes (the posterior persists across episodes: a cell once seen is ruled out);
* steps to the first reward for every held-out goal: the first step whose move ends on
  it (censored at 400; the fraction found within 400 is reported beside the mean);

for the model (3 seeds), its source's own earliest episodes (PPO learning from scratch in
the same goal-less room: before its first reward PPO learns only from its entropy
bonus), a uniform policy, and the systematic explorer (``ad.interp.agents.GoalPosterior``:
the nearest cell not yet ruled out, never a revisit by choice).

Bandits: on held-out tasks, the pulls until every arm was tried (censored at 100) and the
number of distinct arms among the first 5 pulls, for the model, UCB1 (its source: 5 by
construction), Thompson sampling and a uniform policy.

Mimicry predicts the source's early (near-uniform) exploration; a learned in-context
explorer is closer to the systematic one. Writes ``<out>/exploration-<subject>.{json,png}``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import source_agents
from ad import evaluate as ev
from ad.interp.agents import GoalPosterior, Uniform, agent_rollout
from ad.plots import plot_curves
from experiments.study import common as C

EXPERIMENT = "exploration"
STEPS = 400  # Dark Room: 20 episodes
CHECKPOINTS = (20, 60, 100, 200, 400)


def ends(obs: np.ndarray, action: np.ndarray, size: int) -> np.ndarray:
    """(B, T, 2): the cell each step's move ended on (envs.darkroom's move rule)."""
    moves = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    return np.clip(obs + moves[action], 0, size - 1)


def coverage(obs: np.ndarray, action: np.ndarray, size: int) -> np.ndarray:
    """(B, T): distinct cells reached after each step (the start cell counted from step 0)."""
    cells = ends(obs, action, size)
    idx = cells[..., 1] * size + cells[..., 0]
    seen = np.zeros((idx.shape[0], size * size), bool)
    seen[np.arange(idx.shape[0]), obs[:, 0, 1] * size + obs[:, 0, 0]] = True
    out = np.zeros(idx.shape, np.int64)
    for t in range(idx.shape[1]):
        seen[np.arange(idx.shape[0]), idx[:, t]] = True
        out[:, t] = seen.sum(1)
    return out


def steps_to_goals(obs: np.ndarray, action: np.ndarray, goals: np.ndarray, size: int):
    """(B, G) the 1-based step at which each goal would first pay (``T + 1`` if never)."""
    cells = ends(obs, action, size)  # (B, T, 2)
    hit = np.all(cells[:, :, None] == goals[None, None], -1)  # (B, T, G)
    return np.where(hit.any(1), hit.argmax(1) + 1, obs.shape[1] + 1)


def darkroom(subject: C.Subject) -> dict:
    env, n = subject.env, subject.n
    nowhere = type(subject.tasks)(goal=jnp.full((n, 2), -100, jnp.int32))  # never paid
    key = jax.random.fold_in(jax.random.PRNGKey(subject.config.key), 8)
    trajectories = {}
    for i, m in enumerate(subject.models):
        C.say(f"darkroom seed {subject.config.seeds[i]}: the model in a goal-less room")
        r = C.rollout(subject, m, nowhere, jax.random.fold_in(key, 100 + i), STEPS,
                      record_policy=True)
        trajectories.setdefault("model", []).append((np.asarray(r.obs), np.asarray(r.action)))
    C.say("darkroom: the source (PPO) learning in a goal-less room")
    setting = subject.config.setting
    source = source_agents.get(setting.source)
    history, _ = ev.source_learning(source, source_agents.make_config(
        source, setting.env, **setting.source_overrides), env, nowhere,
        jax.random.fold_in(key, 7))
    trajectories["source"] = [(np.asarray(history.obs)[:, :STEPS],
                               np.asarray(history.action)[:, :STEPS])]
    for name, agent in (("uniform", Uniform(env.num_actions)),
                        ("systematic", GoalPosterior(env.size))):
        r = agent_rollout(agent, env, nowhere, jax.random.fold_in(key, 9), STEPS)
        trajectories[name] = [(np.asarray(r.obs), np.asarray(r.action))]
    goals = np.asarray(env.tasks("test").goal)
    results = {"steps": STEPS, "agents": {}}
    for name, runs in trajectories.items():
        cov = [coverage(o, a, env.size) for o, a in runs]
        hit = [steps_to_goals(o, a, goals, env.size) for o, a in runs]
        entry = {f"coverage_after_{k}": C.over_seeds([c[:, k - 1].mean() for c in cov])
                 for k in CHECKPOINTS}
        entry["coverage_after_100_over_rollouts"] = [C.over_tasks(c[:, 99]) for c in cov]
        entry["steps_to_first_reward_censored_mean"] = C.over_seeds(
            [np.minimum(h, STEPS).mean() for h in hit])
        entry["found_within_400"] = C.over_seeds([(h <= STEPS).mean() for h in hit])
        entry["steps_to_first_reward_per_goal"] = np.mean(
            [np.minimum(h, STEPS).mean(0) for h in hit], 0).tolist()
        entry["coverage_curve"] = C.curve_stats(np.concatenate(cov).astype(float))
        results["agents"][name] = entry
    model_cov = [coverage(o, a, env.size)[:, 99] for o, a in trajectories["model"]]
    for name in ("source", "uniform", "systematic"):
        base = coverage(*trajectories[name][0], env.size)[:, 99]
        results["agents"][name]["model_minus_this_coverage_after_100"] = C.over_seeds(
            [c.mean() - base.mean() for c in model_cov])
    _, png = C.output_paths(EXPERIMENT, subject.config)
    plot_curves({"goal-less room (= before the first reward)": {
        k: {"mean": v["coverage_curve"]["mean"], "ci": v["coverage_curve"]["ci95"]}
        for k, v in results["agents"].items()}}, png, xlabel="step (20 per episode)",
        ylabel="distinct cells reached (of 81)",
        title=f"darkroom: exploration before the first reward ({len(subject.models)} seeds)")
    return results


def bandit(subject: C.Subject) -> dict:
    env, n = subject.env, subject.n
    key = jax.random.fold_in(jax.random.PRNGKey(subject.config.key), 8)
    actions = {"model": []}
    for i, m in enumerate(subject.models):
        r = C.rollout(subject, m, subject.tasks, jax.random.fold_in(key, 100 + i),
                      subject.episodes)
        actions["model"].append(np.asarray(r.action))
    for name in ("ucb", "thompson", "random"):
        src = source_agents.get(name)
        h, _ = ev.source_learning(src, source_agents.make_config(src, "bernoulli-bandit",
                                  num_steps=subject.episodes), env, subject.tasks,
                                  jax.random.fold_in(key, 7))
        actions[name] = [np.asarray(h.action)]
    K = env.num_actions
    results = {"agents": {}}
    curves = {}
    for name, runs in actions.items():
        def tried(a):  # (B, T) distinct arms after each pull
            return np.stack([(np.maximum.accumulate(a == k, axis=1)) for k in range(K)]).sum(0)
        t = [tried(a) for a in runs]
        all_at = [np.where(x[:, -1] == K, (x == K).argmax(1) + 1, x.shape[1] + 1) for x in t]
        results["agents"][name] = {
            "pulls_until_every_arm_tried": C.over_seeds([a.mean() for a in all_at]),
            "distinct_arms_in_first_5": C.over_seeds([x[:, 4].mean() for x in t]),
            "distinct_arms_curve": C.curve_stats(np.concatenate(t)[:, :20].astype(float))}
        curves[name] = results["agents"][name]["distinct_arms_curve"]
    _, png = C.output_paths(EXPERIMENT, subject.config)
    plot_curves({"held-out bandits": {k: {"mean": v["mean"], "ci": v["ci95"]}
                                       for k, v in curves.items()}}, png, xlabel="pull",
                ylabel="distinct arms tried", title=f"bandit: the first 20 pulls "
                f"({len(subject.models)} seeds)")
    return results


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    results = (bandit if subject.bandit else darkroom)(subject)
    return results


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 8, {record['config']['subject']}: mean ± 95% t-interval over "
          f"seeds (one run for the reference agents) ===")
    for name, v in r["agents"].items():
        keys = [k for k in v if k.endswith(("after_20", "after_100", "after_400",
                                            "censored_mean", "within_400", "tried", "first_5"))
                and not k.startswith("model_minus")]
        print(f"  {name:10s} " + "; ".join(f"{k} {v[k]['mean']:.2f}" for k in keys))
        if "model_minus_this_coverage_after_100" in v:
            print(f"  {'':10s} model minus {name}, coverage after 100: "
                  f"{C.fmt(v['model_minus_this_coverage_after_100'])}")


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
