"""Experiment 5: whose quantities does the model compute — its source's, a Bayes agent's,
or only where it is in the stream?

    python -m experiments.study.probes --runs /work/tut/runs --rollouts 4

Streams: the source's held-out histories (``common.source_histories``), teacher-forced —
the same streams for every seed. Labels per step, each the state *before* the step
(``ad.interp.agents.states_along``, the one reference implementation), or the source's own:

* bandit, per arm (5 targets, R² averaged over arms): UCB1's empirical mean, count and
  index (the source), the Beta(1, 1) posterior mean (Bayes), the step index (nuisance),
  and the UCB index's residual after a linear regression on the posterior means (and the
  reverse): what one explains beyond the other. Probed from the first step where every arm
  has been pulled (UCB1's quantities are then finite).
* Dark Room: PPO's critic value at the step (``make_train(internals=True)``: the
  parameters that acted), goal found yet (logistic: accuracy against the majority class),
  distance to the goal once found (only steps where it is), the fraction of cells ruled
  out (the goal-posterior agent's belief), episode index and step in episode.

Linear probes (``ad.interp.probes.probe``: 5 folds split by task) on every residual hook
at the tokens that predict actions, at most ``MAX_ROWS`` positions (seeded sample), with
the shuffled-label control (same folds) and the embedding-only control (``hook_embed``).

Causal check: at the best hook for the key label (bandit: the UCB index; Dark Room: goal
found, steered along a ridge fit of the 0/1 label) add ±1 SD of the label along the probe
direction (``alpha · w / |w|²`` raises the probe's prediction by ``alpha``) at every action
position, and the same norm along a random direction; amended before the run (the probe's
step proved ~7% of the activations' norm on the bandit): also ±1 SD along the label's
*activation pattern* (``pattern``: the shift of the activations that accompanies a 1-SD
change of the label, ``Cov(x, y) / SD(y)``), with its own norm-matched random control.
Bandit: row b steers arm b mod 5 and
the change in that arm's probability is measured (teacher-forced; and in closed loop, the
sampling probability over 100 pulls); Dark Room: the change in the probability of a
shortest-path action (teacher-forced) and in the mean return per episode (closed loop).
Writes ``<out>/probes-<subject>.{json,png}``.
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

import source_agents  # noqa: E402
from ad import evaluate as ev  # noqa: E402
from ad import hooks  # noqa: E402
from ad.interp import agents as A  # noqa: E402
from ad.interp.cache import run_with_cache  # noqa: E402
from ad.interp.probes import probe  # noqa: E402
from ad.interp.streams import Stream, episode_index, step_in_episode, to_inputs  # noqa: E402
from ad.plots import save_figure  # noqa: E402
from experiments.collect import episode_selection  # noqa: E402
from experiments.study import common as C  # noqa: E402

EXPERIMENT = "probes"
MAX_ROWS = 20_000  # positions per probe (a seeded sample): bounds the time of every fit
CONDITIONS = ("none", "probe+", "probe-", "random+", "random-",  # the steering conditions
              "pattern+", "pattern-", "random-pattern+", "random-pattern-")
KEY_LABEL = {"bandit": "ucb_index", "darkroom": "goal_found"}


class Label(NamedTuple):
    """One probed quantity at the sampled positions."""

    values: np.ndarray  # (n,) or (n, k) ridge targets; (n,) bool for logistic
    kind: str  # "ridge" or "logistic"
    group: str  # "source", "bayes" or "nuisance"
    rows: np.ndarray  # (n,) int: the positions' rows (streams) in the sample
    cols: np.ndarray  # (n,) int: their steps


def residual_hooks(config) -> list[str]:
    """Every distinct residual-stream hook (``resid_pre`` of block l is ``resid_post`` of
    l - 1, and block 0's is the embedding, so they are left out)."""
    return (["hook_embed"] + [f"blocks.{l}.hook_resid_{w}" for l in range(config.num_layers)
                              for w in ("mid", "post")] + ["ln_final.hook_normalized"])


def sample(mask: np.ndarray, seed: int, limit: int = MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): at most ``limit`` of the True positions of ``mask`` (B, T), a seeded
    sample in stream order."""
    rows, cols = np.nonzero(mask)
    if len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y`` (n, k) minus its least-squares fit on ``x`` (n, m) with an intercept."""
    design = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)
    return (y - design @ coef).astype(np.float32)


def bandit_labels(stream: Stream, num_arms: int, seed: int) -> dict[str, Label]:
    """UCB1's per-arm mean, count and index, the Beta(1, 1) posterior mean, the step, and
    the residuals of index and posterior mean on each other, at steps where every arm has
    been pulled."""
    args = (stream.obs, stream.action, stream.reward, stream.done)
    stats = A.states_along(A.UCB1(num_arms), *args)
    counts, sums = np.asarray(stats.counts), np.asarray(stats.sums)  # (B, T, K)
    index = np.asarray(A.along_stream(A.UCB1(num_arms), *args))
    rows, cols = sample((counts > 0).all(-1), seed)
    at = lambda x: x[rows, cols]  # noqa: E731
    mean, posterior = at(sums / np.maximum(counts, 1)), at((1 + sums) / (2 + counts))
    lab = lambda v, kind, group: Label(v.astype(np.float32), kind, group, rows, cols)  # noqa: E731
    return {"ucb_mean": lab(mean, "ridge", "source"),
            "ucb_count": lab(at(counts), "ridge", "source"),
            "ucb_index": lab(at(index), "ridge", "source"),
            "posterior_mean": lab(posterior, "ridge", "bayes"),
            "ucb_index_beyond_posterior": lab(residual(at(index), posterior), "ridge", "source"),
            "posterior_beyond_ucb_index": lab(residual(posterior, at(index)), "ridge", "bayes"),
            "step": lab(cols.astype(np.float32), "ridge", "nuisance")}


def darkroom_labels(stream: Stream, size: int, critic: np.ndarray, seed: int) -> dict[str, Label]:
    """PPO's critic value (``critic`` (B, T)), goal found, distance to it once found,
    fraction of cells ruled out, episode index and step in episode."""
    belief = A.states_along(A.GoalPosterior(size), stream.obs, stream.action, stream.reward,
                            stream.done)
    known = np.asarray(belief.known)
    distance = np.abs(np.asarray(stream.obs) - np.asarray(belief.goal)).sum(-1)
    ruled = np.asarray(belief.ruled_out).mean(-1)
    out = {}
    rows, cols = sample(np.ones(known.shape, bool), seed)
    for name, v, kind, group in [("ppo_value", critic, "ridge", "source"),
                                 ("goal_found", known, "logistic", "bayes"),
                                 ("cells_ruled_out", ruled, "ridge", "bayes"),
                                 ("episode", episode_index(stream), "ridge", "nuisance"),
                                 ("step_in_episode", step_in_episode(stream), "ridge",
                                  "nuisance")]:
        v = v[rows, cols]
        out[name] = Label(v if kind == "logistic" else v.astype(np.float32), kind, group,
                          rows, cols)
    r, c = sample(known, seed)
    out["distance_once_found"] = Label(distance[r, c].astype(np.float32), "ridge", "bayes", r, c)
    return dict(sorted(out.items(), key=lambda kv: ["source", "bayes", "nuisance"].index(
        kv[1].group)))


def source_run(subject: C.Subject):
    """Dark Room: the source's held-out histories (``common.source_histories``' run: same
    tasks and key, the same history) with PPO's per-step critic value, both in the kept
    episodes' form: (Stream, value (B, T))."""
    setting = subject.config.setting
    source = source_agents.get(setting.source)
    config = source_agents.make_config(source, setting.env, **setting.source_overrides)
    key = C.source_key(subject.config)

    def fn():
        train = jax.jit(jax.vmap(source.make_train(subject.env, config, internals=True)))
        return train(jax.random.split(key, subject.n), subject.tasks)

    history, internals = C.memo(subject.config, "source-internals", repr(config),
                                (subject.tasks, key), fn)
    take = episode_selection(history, setting.subsample_every)
    return Stream.from_history(take(history)), np.asarray(take(internals.value))


# ----------------------------------------------------------------------------------------
# Activations and probes
# ----------------------------------------------------------------------------------------
def activations(model, stream: Stream, names: list[str], chunk: int = 16) -> dict[str, np.ndarray]:
    """``{hook: (B, T, d)}`` at the tokens that predict actions (teacher-forced)."""
    @jax.jit
    def fwd(inputs):
        _, cache = run_with_cache(model.params, model.config, inputs, names_filter=names)
        return {n: cache.at_steps(n) for n in names}

    B = stream.action.shape[0]
    parts = [fwd(to_inputs(jax.tree.map(lambda x: x[i:i + chunk], stream), model.config))
             for i in range(0, B, chunk)]
    return {n: np.concatenate([np.asarray(p[n]) for p in parts]) for n in names}


def probe_all(acts: dict, labels: dict[str, Label], groups: np.ndarray, seed: int) -> dict:
    """``{label: {hook: scores}}`` and ``{label: {hook: ProbeResult}}`` for every pair."""
    scores, results = {}, {}
    for name, lab in labels.items():
        scores[name], results[name] = {}, {}
        for h, x in acts.items():
            # logistic: 100 Adam steps reach the accuracy of 300 on standardised features
            # (checked on a planted label) at a third of the time
            res = probe(x[lab.rows, lab.cols], lab.values, groups[lab.rows], lab.kind,
                        seed=seed, steps=100)
            results[name][h] = res
            scores[name][h] = {"score": res.score, "shuffled": res.control_score,
                               "fold_scores": res.fold_scores}
    return scores, results


# ----------------------------------------------------------------------------------------
# Steering
# ----------------------------------------------------------------------------------------
def pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(k, d): per label column, the shift of the activations ``x`` (n, d) that accompanies a
    +1 SD change of the label ``y`` (n, k): the regression of x on y times SD(y),
    ``Cov(x, y) / SD(y)`` (the probe's forward model, not its read-out weights)."""
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    y = np.asarray(y, np.float64).reshape(len(x), -1)
    y = y - y.mean(0)
    return (y.T @ x / len(x)) / np.maximum(y.std(0), 1e-12)[:, None]


def steering_vectors(direction: np.ndarray, sd: np.ndarray, arm: np.ndarray,
                     key: jax.Array, patterns: np.ndarray | None = None) -> np.ndarray:
    """(conditions, B, d) in ``CONDITIONS`` order: per row, ``±sd · w / |w|²`` along its
    target's probe direction (``direction`` (k, d), ``sd`` (k,), ``arm`` (B,) the target of
    each row), a random direction of the same norm, ``±patterns`` (k, d: ``pattern``, zero
    if None) and a random direction of its norm; condition 0 ("none") is zero (same graph,
    bit for bit)."""
    w = np.asarray(direction, np.float64).reshape(len(sd), -1)
    step = sd[:, None] * w / (w ** 2).sum(1, keepdims=True)  # (k, d): +1 SD of the label
    pat = np.zeros_like(step) if patterns is None else np.asarray(patterns, np.float64)
    k1, k2 = jax.random.split(key)

    def random_like(v, k):
        r = np.asarray(jax.random.normal(k, w.shape), np.float64)
        return r * np.linalg.norm(v, axis=1, keepdims=True) / np.linalg.norm(r, axis=1,
                                                                          keepdims=True)

    s, r, p, rp = step[arm], random_like(step, k1)[arm], pat[arm], random_like(pat, k2)[arm]
    return np.stack([0 * s, s, -s, r, -r, p, -p, rp, -rp]).astype(np.float32)


def edits(name: str, config, vectors) -> dict:
    """The steering at every token that predicts an action: ``{name: Intervention}`` with
    ``vectors`` (B, d) per row (any number of positions)."""
    if config.tokens_per_step != 1:  # then only every K-th token would be selected
        raise ValueError("steering: models with several tokens per step are not supported")
    return {name: hooks.Intervention(jnp.ones((1, 1, 1), bool), jnp.ones((), jnp.float32),
                                     jnp.asarray(vectors)[:, None, :])}


def steered_policy(model, stream: Stream, name: str, vectors: np.ndarray,
                   chunk: int = 16) -> np.ndarray:
    """(conditions, B, T, A) teacher-forced policies with each condition's steering
    (``vectors`` (conditions, B, d)), all conditions one vmapped graph."""
    @jax.jit
    def fwd(inputs, v):
        run = lambda vi: jax.nn.softmax(hooks.run_with_hooks(  # noqa: E731
            model.params, model.config, inputs, edits(name, model.config, vi)), -1)
        return jax.vmap(run)(v)

    B = stream.action.shape[0]
    parts = [fwd(to_inputs(jax.tree.map(lambda x: x[i:i + chunk], stream), model.config),
                 jnp.asarray(vectors[:, i:i + chunk])) for i in range(0, B, chunk)]
    return np.concatenate([np.asarray(p) for p in parts], axis=1)


def steered_rollouts(subject: C.Subject, model, name: str, vectors: np.ndarray, key,
                     num_steps: int, record_policy: bool = False) -> ev.Rollout:
    """Closed loop: the model in context on the held-out tasks with each condition's
    steering at every decode step (leaves (conditions, N, S)), one ``jit(vmap)``."""
    def run(v):
        return ev.ad_rollout(model.params, model.config, subject.env, subject.tasks, key,
                             num_steps, record_policy=record_policy,
                             hooks=edits(name, model.config, v))

    return jax.jit(jax.vmap(run))(jnp.asarray(vectors))


def per_task(x: np.ndarray, rollouts_per_task: int) -> np.ndarray:
    """(tasks,) the mean of (B, ...) per-row values over each task's adjacent rows."""
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1).mean(1)
    return x.reshape(-1, rollouts_per_task).mean(1)


def steering(subject: C.Subject, model, stream: Stream, name: str, res, sd: np.ndarray,
             key, start: int, patterns: np.ndarray) -> dict:
    """Per condition: the per-task change against no steering, teacher-forced and closed
    loop (module docstring)."""
    B = stream.action.shape[0]
    rpt = subject.rollouts_per_task
    if subject.bandit:
        arm = np.arange(B) % len(sd)
    else:
        arm = np.zeros(B, int)
    vectors = steering_vectors(res.direction, sd, arm, key, patterns)
    pi = steered_policy(model, stream, name, vectors)
    if subject.bandit:  # the probability of the steered arm, from pull ``start`` on
        tf = np.take_along_axis(pi, arm[None, :, None, None], -1)[..., start:, 0]
    else:
        tf = np.stack([C.quality(subject, stream, p) for p in pi])
    steps = subject.episodes * subject.horizon
    ro = steered_rollouts(subject, model, name, vectors, jax.random.fold_in(key, 1), steps,
                          record_policy=subject.bandit)
    if subject.bandit:
        cl = np.take_along_axis(np.asarray(ro.policy), arm[None, :, None, None], -1)[..., start:, 0]
    else:
        cl = np.stack([ev.episode_curve(ev.Rollout(a, r, d), subject.episodes)
                       for a, r, d in zip(ro.action, ro.reward, ro.done)])
    out = {}
    for c, cond in enumerate(CONDITIONS[1:], 1):
        out[cond] = {"teacher_forced": per_task(tf[c] - tf[0], rpt),
                     "closed_loop": per_task(cl[c] - cl[0], rpt)}
    out["none"] = {"teacher_forced": per_task(tf[0], rpt), "closed_loop": per_task(cl[0], rpt)}
    out["vectors"] = vectors
    return out


# ----------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------
def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    if subject.bandit:
        stream, _ = C.source_histories(subject)
        labels = bandit_labels(stream, subject.env.num_actions, config.key)
        start = subject.env.num_actions  # UCB1 has pulled every arm once
    else:
        stream, critic = source_run(subject)
        labels = darkroom_labels(stream, subject.env.size, critic, config.key)
        start = 0
    groups = np.arange(subject.n) // subject.rollouts_per_task  # a task's rows: one group
    key_label = KEY_LABEL[config.subject]
    names = residual_hooks(subject.models[0].config)
    per_seed, steer = [], []
    for i, m in enumerate(subject.models):
        C.say(f"{config.subject} seed {config.seeds[i]}: {len(labels)} labels x {len(names)} "
              f"hooks on {stream.action.shape} source steps")
        acts = activations(m, stream, names)
        scores, results = probe_all(acts, labels, groups, config.key)
        per_seed.append(scores)
        best = max(names[1:], key=lambda h: scores[key_label][h]["score"])
        lab = labels[key_label]
        y = lab.values.astype(np.float32)
        y = y if y.ndim == 2 else y[:, None]
        res = results[key_label][best]
        if res.kind == "logistic":  # steer in label units: the ridge fit of the 0/1 label
            res = probe(acts[best][lab.rows, lab.cols], y, groups[lab.rows], "ridge",
                        seed=config.key)
        C.say(f"{config.subject} seed {config.seeds[i]}: steering {key_label} at {best}")
        effect = steering(subject, m, stream, best, res, y.std(0),
                          jax.random.fold_in(jax.random.PRNGKey(config.key), 500 + i), start,
                          pattern(acts[best][lab.rows, lab.cols], y))
        vectors = effect.pop("vectors")
        steer.append({"hook": best, "sd": y.std(0), **effect,
                      # the size of +1 SD along the probe against the activations there
                      "step_norm": float(np.linalg.norm(vectors[1], axis=-1).mean()),
                      "pattern_norm": float(np.linalg.norm(vectors[5], axis=-1).mean()),
                      "activation_norm": float(np.linalg.norm(
                          acts[best][lab.rows, lab.cols], axis=-1).mean())})
    results = summarise(subject, labels, names, per_seed, steer, key_label)
    plot(subject, results)
    return results


def summarise(subject, labels, names, per_seed, steer, key_label) -> dict:
    """Per label: the best non-embedding hook per seed, its score and controls over seeds;
    the steering effects per condition ("none": the unsteered values themselves, the others:
    their change from it) over tasks per seed and over seeds."""
    summary = {}
    for name, lab in labels.items():
        best = [max(names[1:], key=lambda h: s[name][h]["score"]) for s in per_seed]
        entry = {"kind": lab.kind, "group": lab.group, "positions": int(len(lab.rows)),
                 "best_hook_per_seed": best,
                 "best": C.over_seeds([s[name][h]["score"] for s, h in zip(per_seed, best)]),
                 "best_shuffled": C.over_seeds([s[name][h]["shuffled"]
                                                for s, h in zip(per_seed, best)]),
                 "embed": C.over_seeds([s[name]["hook_embed"]["score"] for s in per_seed]),
                 "gain_over_embed": C.over_seeds([s[name][h]["score"]
                                                  - s[name]["hook_embed"]["score"]
                                                  for s, h in zip(per_seed, best)]),
                 "by_hook": {h: C.over_seeds([s[name][h]["score"] for s in per_seed])
                             for h in names}}
        if lab.kind == "logistic":
            entry["majority"] = float(max(lab.values.mean(), 1 - lab.values.mean()))
        summary[name] = entry
    steering_out = {"label": key_label, "hooks_per_seed": [s["hook"] for s in steer],
                    "sd_per_seed": [s["sd"] for s in steer],
                    "step_norm_per_seed": [s["step_norm"] for s in steer],
                    "pattern_norm_per_seed": [s["pattern_norm"] for s in steer],
                    "activation_norm_per_seed": [s["activation_norm"] for s in steer],
                    "measure": ("probability of the steered arm" if subject.bandit else
                                "teacher-forced: probability of a shortest-path action; "
                                "closed loop: mean return per episode")}
    for cond in CONDITIONS:
        steering_out[cond] = {}
        for mode in ("teacher_forced", "closed_loop"):
            steering_out[cond][mode] = {
                "over_seeds": C.over_seeds([s[cond][mode].mean() for s in steer]),
                "per_seed_over_tasks": [C.over_tasks(s[cond][mode]) for s in steer]}
    for mode in ("teacher_forced", "closed_loop"):  # the probe against its random control
        steering_out[f"probe_minus_random_{mode}"] = C.over_seeds(
            [(s["probe+"][mode] - s["random+"][mode]).mean() for s in steer])
        steering_out[f"pattern_minus_random_{mode}"] = C.over_seeds(
            [(s["pattern+"][mode] - s["random-pattern+"][mode]).mean() for s in steer])
    return {"hooks": names, "labels": list(labels), "max_rows": MAX_ROWS, "summary": summary,
            "per_seed": per_seed, "steering": steering_out}


def plot(subject: C.Subject, results: dict) -> None:
    names, labels = results["hooks"], results["labels"]
    cols = 4
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    x = np.arange(len(names))
    for ax, name in zip(axes.ravel(), labels):
        entry = results["summary"][name]
        for s in results["per_seed"]:
            ax.plot(x, [s[name][h]["score"] for h in names], "o-", ms=3, alpha=0.8)
            ax.plot(x, [s[name][h]["shuffled"] for h in names], "x:", color="0.5", ms=3)
        if "majority" in entry:
            ax.axhline(entry["majority"], color="k", lw=0.8, ls="--")
        ax.set_title(f"{name} ({entry['group']})", fontsize=9)
        ax.set_xticks(x, [h.replace("blocks.", "").replace("hook_", "").replace(
            ".normalized", "") for h in names], rotation=45, fontsize=7)
        ax.set_ylabel("accuracy" if entry["kind"] == "logistic" else "held-out R²", fontsize=8)
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(labels):]:
        ax.axis("off")
    fig.suptitle(f"{subject.config.subject}: linear probes by hook (lines: seeds; x: shuffled "
                 f"labels; first point: embedding only)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, C.output_paths(EXPERIMENT, subject.config)[1])  # atomic


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 5, {record['config']['subject']}: best hook per label (held-out "
          f"R² / accuracy) vs controls, per seed ===")
    for name, e in r["summary"].items():
        extra = f"; majority {e['majority']:.3f}" if "majority" in e else ""
        print(f"  {name:28s} [{e['group']}] best {C.fmt(e['best'])} at {e['best_hook_per_seed']}")
        print(f"  {'':28s} embed {C.fmt(e['embed'])}; shuffled {C.fmt(e['best_shuffled'])}{extra}")
    s = r["steering"]
    print(f"  steering {s['label']} at {s['hooks_per_seed']} ({s['measure']}), change vs none; "
          f"|step| {', '.join(f'{v:.2f}' for v in s['step_norm_per_seed'])}, |pattern| "
          f"{', '.join(f'{v:.2f}' for v in s.get('pattern_norm_per_seed', []))} against "
          f"|activation| {', '.join(f'{v:.2f}' for v in s['activation_norm_per_seed'])}:")
    for cond in CONDITIONS[1:]:
        if cond not in s:  # a record made before the pattern conditions
            continue
        print(f"    {cond:15s} teacher-forced {C.fmt(s[cond]['teacher_forced']['over_seeds'])}; "
              f"closed loop {C.fmt(s[cond]['closed_loop']['over_seeds'])}")
    print(f"    probe+ minus random+: teacher-forced "
          f"{C.fmt(s['probe_minus_random_teacher_forced'])}; closed loop "
          f"{C.fmt(s['probe_minus_random_closed_loop'])}")
    if "pattern_minus_random_closed_loop" in s:
        print(f"    pattern+ minus random-pattern+: teacher-forced "
              f"{C.fmt(s['pattern_minus_random_teacher_forced'])}; closed loop "
              f"{C.fmt(s['pattern_minus_random_closed_loop'])}")


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
