"""Experiment 2, information or competence: the same information, shown competently or not.

    python -m experiments.study.information --runs /work/tut/runs

The model is prompted (``ad_rollout(prompt=...)``, the context fed through its cache)
and then acts in closed loop on the same held-out task; what it earns next is measured.

* Dark Room: 5-episode prompts (100 steps, all within the model's reach of 6 episodes)
  in which the goal is known exactly once it has been reached (a paid step reveals the
  cell), shown with different competence —
  ``competent``: the source's last 5 episodes (consecutive, PPO converged);
  ``first_reach``: the source's 5 episodes ending with the first one that reached the goal;
  ``random_reach``: 5 uniform random-walk episodes ending with the first that stumbled
  on the goal; control ``no_goal``: 5 random-walk episodes that never touched it (no
  information), and ``none`` (no prompt). Competence against the amount of reward
  evidence: ``random_reach_5``, the walk's first 5 episodes that each reached the goal,
  and ``random_parked_5``, the same with the walker staying on the goal from its first
  arrival (paid every step, as a competent episode is, after a random path). Metric:
  mean return of the next 10 episodes.
* Bandits: the source's first 50 held-out pulls as the prompt, in their own order,
  ``reversed`` and ``shuffled`` — the same pulls, so the same counts and reward sums per
  arm (the whole posterior), but the reversed order looks like unlearning (it ends on
  UCB1's exploratory first pulls); then 50 pulls in closed loop. Metric: mean expected
  reward ``mu[a]`` of the next 50 pulls (and of the first 10).

In-context RL predicts the next episodes depend on the information (Dark Room: the
three informative prompts alike, all far above ``no_goal``; bandits: order does not
matter); mimicry predicts they track the competence shown. Writes
``<out>/information-<subject>.{json,png}``.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from ad import evaluate as ev
from ad.interp.agents import Uniform, agent_rollout
from ad.interp.streams import Stream
from ad.plots import plot_curves
from experiments.study import common as C
from source_agents.history import LearningHistory

EXPERIMENT = "information"
PROMPT_EPISODES = 5
NEXT_EPISODES = 10  # Dark Room
BANDIT_PROMPT, BANDIT_NEXT = 50, 50


def as_history(stream: Stream) -> LearningHistory:
    """A stream as the ``LearningHistory`` ``ad_rollout(prompt=)`` feeds (every episode end
    recorded as a truncation: the model reads only ``terminated or truncated``)."""
    return LearningHistory(stream.obs, stream.action, stream.reward,
                           np.zeros_like(stream.done), stream.done)


def whole(stream: Stream) -> Stream:
    """The stream cut to its whole episodes (a trailing partial one dropped)."""
    H = int(np.flatnonzero(np.asarray(stream.done)[0])[0]) + 1
    E = int(np.asarray(stream.done).sum(1).min())
    return jax.tree.map(lambda x: np.asarray(x)[:, :E * H], stream)


def ending_with_first_reach(returns: np.ndarray, k: int = PROMPT_EPISODES):
    """(B, k) episode indices: the k episodes ending with each row's first paid episode
    (the first k if it comes earlier), and (B,) whether the row has one."""
    paid = returns > 0
    found = paid.any(1)
    first = np.where(found, paid.argmax(1), 0)
    end = np.maximum(first, k - 1)
    return end[:, None] - np.arange(k)[::-1], found


def darkroom_prompts(subject: C.Subject) -> tuple[dict, dict]:
    """Prompt streams per condition (B, 5 episodes) and per-row validity."""
    env, H = subject.env, subject.horizon
    source, _ = C.source_histories(subject, subsample=False)
    source = whole(source)
    E = source.action.shape[1] // H
    ret = np.asarray(source.reward).reshape(subject.n, E, H).sum(-1)
    first, src_found = ending_with_first_reach(ret)
    walk = agent_rollout(Uniform(env.num_actions), env, subject.tasks,
                         jax.random.PRNGKey(subject.config.key + 21), 400 * H)
    walk = Stream(*(np.asarray(x) for x in (walk.obs, walk.action, walk.reward, walk.done)))
    w_ret = walk.reward.reshape(subject.n, 400, H).sum(-1)
    w_first, w_found = ending_with_first_reach(w_ret)
    # the first 5 episodes that never touched the goal (each starts at the centre anyway),
    # and the first 5 that did
    unpaid = np.argsort(w_ret > 0, axis=1, kind="stable")[:, :PROMPT_EPISODES]
    paid = np.argsort(w_ret == 0, axis=1, kind="stable")[:, :PROMPT_EPISODES]
    reach5 = C.take_episodes(walk, paid)
    prompts = {"competent": C.take_episodes(source, np.broadcast_to(
                   np.arange(E - PROMPT_EPISODES, E), (subject.n, PROMPT_EPISODES))),
               "first_reach": C.take_episodes(source, first),
               "random_reach": C.take_episodes(walk, w_first),
               "no_goal": C.take_episodes(walk, unpaid),
               "random_reach_5": reach5,
               "random_parked_5": parked(reach5, np.asarray(subject.tasks.goal), H)}
    valid = {"competent": ret[:, -PROMPT_EPISODES:].sum(1) > 0, "first_reach": src_found,
             "random_reach": w_found,
             "no_goal": np.take_along_axis(w_ret, unpaid, 1).sum(1) == 0,
             "random_reach_5": (np.take_along_axis(w_ret, paid, 1) > 0).all(1),
             "random_parked_5": (np.take_along_axis(w_ret, paid, 1) > 0).all(1)}
    return prompts, valid


def parked(stream: Stream, goal: np.ndarray, horizon: int) -> Stream:
    """Each episode's walker stays on the goal from its first paid step to the episode's end
    (no-ops, paid every step: the env's own dynamics); episodes without a paid step are
    unchanged. ``goal`` (B, 2)."""
    obs, action, reward = (np.array(x) for x in (stream.obs, stream.action, stream.reward))
    B, T = action.shape
    r = reward.reshape(B, -1, horizon)
    first = np.where((r > 0).any(-1), (r > 0).argmax(-1), horizon)  # (B, E)
    after = (np.arange(horizon) > first[..., None]).reshape(B, T)  # steps after the arrival
    obs[after] = np.repeat(goal[:, None], T, 1)[after]
    action[after] = 0
    reward[after] = 1.0
    return stream._replace(obs=obs, action=action, reward=reward)


def bandit_prompts(subject: C.Subject) -> tuple[dict, dict]:
    source, _ = C.source_histories(subject)
    first = jax.tree.map(lambda x: np.asarray(x)[:, :BANDIT_PROMPT], source)
    rng = np.random.default_rng(0)
    B = subject.n
    orders = {"original": np.broadcast_to(np.arange(BANDIT_PROMPT), (B, BANDIT_PROMPT)),
              "reversed": np.broadcast_to(np.arange(BANDIT_PROMPT)[::-1], (B, BANDIT_PROMPT)),
              "shuffled": np.stack([rng.permutation(BANDIT_PROMPT) for _ in range(B)])}
    prompts = {c: C.take_episodes(first, o) for c, o in orders.items()}
    return prompts, {c: np.ones(B, bool) for c in prompts}


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    C.say(f"{config.subject}: building the prompts (the source learning {subject.n} "
          f"held-out tasks from scratch)")
    prompts, valid = (bandit_prompts if subject.bandit else darkroom_prompts)(subject)
    if not subject.bandit:
        prompts["none"] = None
        valid["none"] = np.ones(subject.n, bool)
    E = BANDIT_NEXT if subject.bandit else NEXT_EPISODES
    num_steps = E * subject.horizon
    key = jax.random.fold_in(jax.random.PRNGKey(config.key), 2)
    means = np.asarray(subject.tasks.means) if subject.bandit else None
    curves = {c: [] for c in prompts}
    for i, m in enumerate(subject.models):
        for c, prompt in prompts.items():
            C.say(f"{config.subject} seed {config.seeds[i]}: prompt {c}, then {E} episodes")
            r = C.rollout(subject, m, subject.tasks, jax.random.fold_in(key, 100 + i),
                          num_steps, prompt=None if prompt is None else as_history(prompt))
            if subject.bandit:  # expected reward of each pull: far less noise than rewards
                curves[c].append(np.take_along_axis(means, np.asarray(r.action), 1))
            else:
                curves[c].append(ev.episode_curve(r, E))
    rpt = subject.rollouts_per_task
    ok = np.all([v for v in valid.values()], axis=0)  # rows valid under every condition
    ok_task = ok.reshape(-1, rpt).all(1)

    def per_task(curve, first=None):  # (rows, E) -> (tasks with every row valid,)
        x = curve[:, :first].mean(1).reshape(-1, rpt).mean(1)
        return x[ok_task]

    base = "original" if subject.bandit else "competent"
    results = {"metric": ("mean expected reward mu[a] of the next pulls" if subject.bandit
                          else "mean return of the next episodes"),
               "next_episodes": E, "valid_rows": {c: float(v.mean()) for c, v in valid.items()},
               "tasks_used": int(ok_task.sum()), "conditions": {}}
    if not subject.bandit:
        results["prompt_mean_return"] = {
            c: float(np.asarray(p.reward).sum(1).mean() / PROMPT_EPISODES)
            for c, p in prompts.items() if p is not None}
    for c, cs in curves.items():
        vals = [per_task(x) for x in cs]
        first10 = [per_task(x, 10 if subject.bandit else 1) for x in cs]
        entry = {"next_over_seeds": C.over_seeds([v.mean() for v in vals]),
                 "next_per_seed_over_tasks": [C.over_tasks(v) for v in vals],
                 "first_over_seeds": C.over_seeds([v.mean() for v in first10]),
                 "curve": C.curve_stats(np.concatenate(cs))}
        d = [v - b for v, b in zip(vals, [per_task(x) for x in curves[base]])]
        entry[f"minus_{base}_over_seeds"] = C.over_seeds([x.mean() for x in d])
        entry[f"minus_{base}_per_seed_over_tasks"] = [C.over_tasks(x) for x in d]
        results["conditions"][c] = entry
    _, png = C.output_paths(EXPERIMENT, config)
    plot_curves({"after the prompt (held-out tasks)": {
        c: {"mean": v["curve"]["mean"], "ci": v["curve"]["ci95"]}
        for c, v in results["conditions"].items()}}, png,
        xlabel="pull after the prompt" if subject.bandit else "episode after the prompt",
        ylabel="expected reward per pull" if subject.bandit else "return per episode",
        title=f"{config.subject}: same information, different competence shown "
              f"({len(subject.models)} seeds)")
    return results


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 2, {record['config']['subject']} ({r['metric']}; "
          f"{r['tasks_used']} tasks), mean ± 95% t-interval over seeds ===")
    for c, v in r["conditions"].items():
        diff = next(k for k in v if k.startswith("minus_") and k.endswith("over_seeds"))
        print(f"  {c:13s} {C.fmt(v['next_over_seeds'])}   {diff}: {C.fmt(v[diff])}")
    if "prompt_mean_return" in r:
        print("  prompt mean return per episode:",
              ", ".join(f"{c} {x:.2f}" for c, x in r["prompt_mean_return"].items()))


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
