"""Experiment 4, algorithm fingerprint: which reference agent does the model act like?

    python -m experiments.study.fingerprint --runs /work/tut/runs

The model acts in closed loop (true rewards); on its own streams every reference agent
of ``ad.interp.agents`` is run (``along_stream``: the agent's values at each step from
the same history). Each agent's policy is ``softmax(values / T)`` with a temperature
``T`` fitted per agent and model seed on the model's streams on *training* tasks
(minimum cross-entropy on a log-spaced grid, from the early window's first step on:
bandits skip the first ``K`` pulls, as the windows do); the stochastic agents' values
(Thompson sampling, PPO at the matched stage) are their own action log-probabilities,
scored both tempered and as their own policy (``T = 1``); the uniform policy is the
floor. On held-out tasks the score of an agent is the mean per-step log-likelihood of
the model's policy under it, ``sum_a pi_model(a) log p_agent(a)`` (the expectation of the
log-likelihood of the model's sampled action), early (bandits of K arms: pulls K+1 to
K+10; Dark Room: episodes 1-10) and late (pulls 91-100; episodes 191-200); no agent can
score above the model's own policy (minus its entropy, reported as the ceiling). Also the
ranking with each deterministic agent as ``(1 - eps) argmax + eps uniform`` (ties share, eps = 0.1) instead of a softmax
(the stochastic agents: their own policy there).

Agents: bandits — UCB1, Thompson sampling (its probabilities from 64 posterior draws per
step), greedy, the Gittins index at discount 0.9, and for 2 arms the exact finite-horizon
Bayes policy (``ad.interp.agents.BayesBandit2``: its values are the Bayes-optimal
Q-values for the pulls left); the subject's source is labelled "(source)" (UCB1 for
``bandit`` and the zoo's ``bandit2``, Thompson for ``bandit-thompson``: a mimic matches
*its* source). Dark Room — the exact goal-posterior agent, and the PPO source at the
matched stage (``experiments.study.matched``: the same task's source run, at the model's
episode index, applied to the model's observation; its temperature is fitted on the
training tasks' own source runs). Bandits also report each agent's own cumulative
pseudo-regret over 100 pulls when it acts. Writes ``<out>/fingerprint-<subject>.{json,png}``.

    python -m experiments.study.fingerprint --runs RUNS --subjects bandit-thompson
    python -m experiments.study.fingerprint --subjects bandit2 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ad import evaluate as ev  # noqa: E402
from ad.interp import agents as A  # noqa: E402
from ad.interp.streams import Stream  # noqa: E402
from ad.plots import save_figure  # noqa: E402
from experiments.run import _pseudo_regret  # noqa: E402
from experiments.study import common as C  # noqa: E402
from experiments.study.matched import matched_source  # noqa: E402

EXPERIMENT = "fingerprint"
TEMPERATURES = np.exp(np.linspace(np.log(1e-3), np.log(1e2), 61))
EPS = 0.1
# Thompson's action probabilities by Monte Carlo (Beta sampling is slow on a CPU): 64 draws
# per step resolve probabilities to 1/64, with a floor of 1/128 for arms never drawn
THOMPSON_SAMPLES = 64


@dataclasses.dataclass(frozen=True)
class MatchedSource:
    """The PPO source at the matched stage (``experiments.study.matched``). Not an
    ``ad.interp.agents`` agent: it needs the same task's source run, so its values (its
    log-probabilities) come from ``matched_source`` on the stream and its tasks."""


def agents_for(subject: C.Subject) -> dict:
    K = subject.env.num_actions
    source = subject.config.setting.source
    if subject.bandit:
        agents = {"UCB1": A.UCB1(K), "Thompson": A.Thompson(K, THOMPSON_SAMPLES),
                  "greedy": A.Greedy(K), "Gittins (0.9)": A.Gittins(K, 0.9)}
        if K == 2:
            agents["Bayes (exact)"] = A.BayesBandit2(K, subject.episodes)
        own = {"ucb": "UCB1", "thompson": "Thompson"}.get(source)
        return {f"{k} (source)" if k == own else k: a for k, a in agents.items()}
    agents = {"goal posterior": A.GoalPosterior(subject.env.size)}
    if source == "ppo":
        agents["PPO (matched stage)"] = MatchedSource()
    return agents


def stochastic(agent) -> bool:
    """Values that are log-probabilities: scored as is (T = 1) and tempered."""
    return isinstance(agent, A.Thompson | MatchedSource)


def agent_values(subject: C.Subject, agent, stream: Stream, tasks) -> np.ndarray:
    """(B, T, A): an agent's values along the model's streams (row b on task b of ``tasks``)."""
    if isinstance(agent, MatchedSource):
        return matched_source(subject, stream, tasks)
    return np.asarray(A.along_stream(agent, stream.obs, stream.action, stream.reward,
                                     stream.done))


def log_softmax(v: np.ndarray, T: float) -> np.ndarray:
    z = v / T
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cross_entropy_ll(pi: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """(B, T): sum_a pi(a) log p(a), the expected log-likelihood of the model's action."""
    return (pi * logp).sum(-1)


def fit_temperature(values: np.ndarray, pi: np.ndarray) -> float:
    """The grid temperature that maximises the mean expected log-likelihood."""
    scores = [cross_entropy_ll(pi, log_softmax(values, T)).mean() for T in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmax(scores))])


def eps_argmax_logp(values: np.ndarray) -> np.ndarray:
    best = values >= values.max(-1, keepdims=True)
    p = (1 - EPS) * best / best.sum(-1, keepdims=True) + EPS / values.shape[-1]
    return np.log(p)


def model_streams(subject: C.Subject, m, tasks, key) -> tuple[Stream, np.ndarray]:
    r = C.rollout(subject, m, tasks, key, subject.episodes * subject.horizon,
                  record_policy=True)
    return Stream.from_rollout(r), np.asarray(r.policy)


def windows(subject: C.Subject, T: int) -> dict:
    """Early and late stretches of a stream. Bandits: early starts after the first
    ``num_arms`` pulls, where UCB1 and greedy must pull the untried arms (a rule the model
    follows exactly, experiment 8) and a softmax of their large finite "untried" value
    scores any doubt of the model as a near-impossible action."""
    n = 10 * subject.horizon
    start = subject.env.num_actions if subject.bandit else 0
    return {"early": slice(start, start + n), "late": slice(T - n, T)}


def fingerprint_model(subject: C.Subject, m, i: int, agents: dict,
                      fit_tasks: int | None = None) -> dict:
    """One model's fingerprint: its streams on training tasks (temperature fit; ``fit_tasks``
    of them, default ``config.tasks``) and held-out tasks (score; keys offset by ``i``, the
    model's seed index), and per agent label its fitted temperature, its early / late / all
    log-likelihood of the model's policy (softmax and eps-argmax), its per-step
    log-likelihood (rows, T), and the ceiling."""
    env = subject.env
    base = jax.random.PRNGKey(subject.config.key)
    train_key = jax.random.fold_in(base, 1)  # experiments.run's training-task draw
    train_tasks = ev.eval_tasks(env, "train", fit_tasks or subject.config.tasks, train_key)
    if env.finite_tasks:
        train_tasks = ev.repeat_tasks(train_tasks, 2)
    K = env.num_actions
    s_train, pi_train = model_streams(subject, m, train_tasks, jax.random.fold_in(train_key, 50 + i))
    s_test, pi_test = model_streams(subject, m, subject.tasks,
                                    jax.random.fold_in(jax.random.fold_in(base, 0), 50 + i))
    T = pi_test.shape[1]
    win = {**windows(subject, T), "all": slice(0, T)}
    fit = slice(win["early"].start, None)
    temps, along, ceiling = {}, {}, {}
    scores = {w: {} for w in ("early", "late", "all")}
    eps_scores = {w: {} for w in ("early", "late")}
    for name, agent in agents.items():
        v_train = agent_values(subject, agent, s_train, train_tasks)
        v_test = agent_values(subject, agent, s_test, subject.tasks)
        # fitted on the steps the windows score (bandits: not the first K forced pulls)
        t = fit_temperature(v_train[:, fit], pi_train[:, fit])
        temps[name] = t
        scored = {name: (log_softmax(v_test, t), eps_argmax_logp(v_test))}
        if stochastic(agent):  # its own policy; "argmax" of a sampler is not its policy
            own = log_softmax(v_test, 1.0)
            scored = {name: (log_softmax(v_test, t), own),
                      f"{name} (own policy, T=1)": (own, own)}
        for label, (logp, logp_eps) in scored.items():
            ll = cross_entropy_ll(pi_test, logp)
            ll_eps = cross_entropy_ll(pi_test, logp_eps)
            for w, sl in win.items():
                scores[w][label] = ll[:, sl].mean()
                if w != "all":
                    eps_scores[w][label] = ll_eps[:, sl].mean()
            along[label] = ll
    uni = np.full(pi_test.shape[:2], -np.log(K))
    # the ceiling: no agent scores above the model's own policy (minus its entropy)
    own = cross_entropy_ll(pi_test, np.log(np.maximum(pi_test, 1e-30)))
    for w, sl in win.items():
        scores[w]["uniform"] = uni[:, sl].mean()
        ceiling[w] = own[:, sl].mean()
        if w != "all":
            eps_scores[w]["uniform"] = uni[:, sl].mean()
    along["uniform"] = uni
    return {"temperatures": temps, "loglik": scores, "loglik_eps_argmax": eps_scores,
            "along": along, "ceiling": ceiling}


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    env = subject.env
    agents = agents_for(subject)
    base = jax.random.PRNGKey(config.key)
    K = env.num_actions
    names = [*agents, *(f"{k} (own policy, T=1)" for k, a in agents.items() if stochastic(a)),
             "uniform"]
    temps = {name: [] for name in agents}
    scores = {w: {name: [] for name in names} for w in ("early", "late", "all")}
    eps_scores = {w: {name: [] for name in names} for w in ("early", "late")}
    along = {name: [] for name in names}
    ceiling = {w: [] for w in ("early", "late", "all")}
    for i, m in enumerate(subject.models):
        C.say(f"{config.subject} seed {config.seeds[i]}: the model on training tasks (fit) "
              f"and held-out tasks (score)")
        f = fingerprint_model(subject, m, i, agents)
        for name in agents:
            temps[name].append(f["temperatures"][name])
        for table, out in (("loglik", scores), ("loglik_eps_argmax", eps_scores)):
            for w, d in out.items():
                for label in names:
                    d[label].append(f[table][w][label])
        for label in names:
            along[label].append(f["along"][label])
        for w in ceiling:
            ceiling[w].append(f["ceiling"][w])
    results = {"temperatures": {k: {"per_seed": v} for k, v in temps.items()},
               "loglik": {w: {k: C.over_seeds(v) for k, v in d.items()} for w, d in scores.items()},
               "loglik_eps_argmax": {w: {k: C.over_seeds(v) for k, v in d.items()}
                                     for w, d in eps_scores.items()},
               "ceiling_minus_model_entropy": {w: C.over_seeds(v) for w, v in ceiling.items()},
               "eps": EPS, "windows": (f"bandits: pulls {K + 1}-{K + 10} and 91-100"
                                       if subject.bandit else "episodes 1-10 and 191-200")}
    for w in ("early", "late"):
        for table in ("loglik", "loglik_eps_argmax"):
            d = results[table][w]
            results[table][f"{w}_ranking"] = sorted(d, key=lambda k: -d[k]["mean"])
            # the best agent in every seed?
            per = np.array([d[k]["per_seed"] for k in d])
            names = list(d)
            results[table][f"{w}_best_per_seed"] = [names[j] for j in per.argmax(0)]
    if subject.bandit:
        key = jax.random.fold_in(base, 44)
        regret = {}
        for name, agent in agents.items():
            ro = A.agent_rollout(agent, env, subject.tasks, key, subject.episodes) \
                if not stochastic(agent) else None
            if ro is None:  # Thompson acts by sampling: the source's own implementation
                import source_agents
                src = source_agents.get("thompson")
                h, _ = ev.source_learning(src, source_agents.make_config(
                    src, "bernoulli-bandit", num_steps=subject.episodes), env, subject.tasks, key)
                actions = np.asarray(h.action)
            else:
                actions = np.asarray(ro.action)
            regret[name] = C.over_tasks(_pseudo_regret(env, subject.tasks, actions)[:, -1])
        results["agents_own_pseudo_regret_100"] = regret
    plot(subject, along)
    return results


def plot(subject: C.Subject, along: dict) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    H = subject.horizon
    for name, lls in along.items():
        x = np.concatenate(lls)  # (rows, T)
        per = x.reshape(x.shape[0], -1, H).mean(-1)  # per episode (bandits: per pull)
        mean, ci = ev.mean_and_ci(per)
        e = np.arange(1, len(mean) + 1)
        ax.plot(e, mean, label=name)
        ax.fill_between(e, mean - ci, mean + ci, alpha=0.2)
    ax.set_xlabel("pull" if subject.bandit else "episode")
    ax.set_ylabel("E log p_agent(model's action)")
    ax.set_ylim(-3, 0)  # bandits' pulls 1-5 fall far below (module docstring)
    ax.set_title(f"{subject.config.subject}: the model's actions under reference agents\n"
                 f"(held-out tasks, {len(subject.models)} seeds; T fitted on training tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, C.output_paths(EXPERIMENT, subject.config)[1])  # atomic


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 4, {record['config']['subject']}: mean log-likelihood of the model's "
          f"actions (± 95% t over seeds) ===")
    print("  temperatures: " + "; ".join(
        f"{k} {', '.join(f'{t:.3g}' for t in v['per_seed'])}" for k, v in r["temperatures"].items()))
    for table in ("loglik", "loglik_eps_argmax"):
        for w in ("early", "late"):
            d = r[table][w]
            print(f"  {table:18s} {w:5s}: " + "; ".join(
                f"{k} {d[k]['mean']:.3f} ± {d[k]['ci95']:.3f}" for k in r[table][f"{w}_ranking"]))
            print(f"  {'':18s} best per seed: {r[table][f'{w}_best_per_seed']}")
    print("  ceiling (minus the model's entropy): " + "; ".join(
        f"{w} {v['mean']:.3f}" for w, v in r["ceiling_minus_model_entropy"].items()))
    if "agents_own_pseudo_regret_100" in r:
        print("  own pseudo-regret (100 pulls): " + "; ".join(
            f"{k} {v['mean']:.1f}" for k, v in r["agents_own_pseudo_regret_100"].items()))


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
