"""Experiment 9, over training: is in-context learning transient over the training run?

    python -m experiments.study.over_training --runs /work/scratch/runs --rollouts 4 --cache DIR

Experiments 1, 4 and 5 are repeated on up to 8 snapshots of one training run per subject
(seed 0 unless ``--seeds`` says otherwise; ``DistillConfig(snapshots=True)`` keeps the model
at step 0, every power of two and the last step, ``ad.checkpoints.snapshot_steps``).
Which snapshots: ``choose_steps`` — step 0, the last step, and between them the powers of
two from ``MIN_STEP`` (32: earlier ones are still inside the learning-rate warm-up, next
to the initialisation) thinned to at most ``MAX_CHECKPOINTS - 2`` evenly spaced in
log-step (bandit, 1500 steps, and Dark Room, 2000: 0, 32, 64, ..., 1024, last).

At each snapshot, on the held-out tasks of experiments 1-8 and with the keys experiments 1
and 4 use for that seed (the last snapshot is the trained model, so its numbers equal
theirs, but for the Dark Room temperatures):

* Exp 1 (``rewards.closed_loop_model``): the closed-loop improvement (bandits pulls 91-100
  minus 1-5; Dark Room episodes 191-200 minus 1-5) with true, zeroed and flipped rewards,
  95% intervals over tasks;
* Exp 4 (``fingerprint.fingerprint_model``): every deterministic reference agent's
  (experiment 4's but the stochastic ones: Thompson sampling, whose Monte-Carlo policy
  would cost a minute per bandit snapshot, and PPO at the matched stage) expected log-likelihood of the model's policy, early and late (softmax
  with fitted temperature; Dark Room: fitted on ``FIT_GOALS`` of the 65 training goals),
  and the best agent of each window;
* Exp 5 (``probe_measure``, a minimal version): a linear probe on the source's held-out
  histories (teacher-forced, the same stream for every snapshot), split by task — bandits:
  R² of the UCB1 index of every arm; Dark Room: accuracy of "a reward has been read in
  this stream" — at the best residual hook, against the embedding-only probe (and the
  majority class).

"Transient in-context learning" predicts the improvement rises then falls over training
and the nearest agent moves away from the source (or to memorisation); "stable" predicts
it rises and stays. Writes ``<out>/over_training-<subject>.{json,png}``: per seed and
snapshot the three measures, and ``summary`` (per seed: the steps, the series, the peak
step and the last snapshot's improvement minus the peak's with a paired 95% interval
over tasks).
"""

from __future__ import annotations

import sys
from functools import partial

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ad.checkpoints import load_model, snapshot_dir, snapshot_steps  # noqa: E402
from ad.interp import agents as A  # noqa: E402
from ad.interp.cache import run_with_cache  # noqa: E402
from ad.interp.probes import probe_hook  # noqa: E402
from ad.interp.streams import Stream, to_inputs  # noqa: E402
from ad.plots import save_figure  # noqa: E402
from experiments.study import common as C  # noqa: E402
from experiments.study import fingerprint as F  # noqa: E402
from experiments.study import rewards as R  # noqa: E402

EXPERIMENT = "over_training"
SEEDS = (0,)  # one training run per subject by default (C.main's --seeds default)
MAX_CHECKPOINTS = 8
MIN_STEP = 32  # powers of two below this are still inside the warm-up (100 / 200 steps)
CONDITIONS = ("true", "zero", "flip")
# Dark Room: the fingerprint's temperatures are fitted on 32 of the 65 training goals (x 2
# rollouts; experiment 4 uses all 65): a third of a snapshot's time otherwise
FIT_GOALS = 32
PROBE_EPISODES = 10  # Dark Room: the probe reads the source stream's first 10 kept episodes


def choose_steps(available, max_checkpoints: int = MAX_CHECKPOINTS,
                 min_step: int = MIN_STEP) -> list[int]:
    """Step 0, the last step, and between them the steps ``>= min_step`` (a run's snapshots:
    powers of two) thinned to ``max_checkpoints - 2`` at evenly spaced indices — evenly in
    log-step, as powers of two are evenly spaced there (``np.linspace``, rounded)."""
    steps = sorted(set(int(s) for s in available))
    if not steps or steps[0] != 0 or len(steps) < 2:
        raise ValueError(f"choose_steps: needs snapshots at step 0 and a later one, got {steps}; "
                         f"train with DistillConfig(snapshots=True)")
    if max_checkpoints < 2:
        raise ValueError(f"choose_steps: max_checkpoints must be >= 2, got {max_checkpoints}")
    middle = [s for s in steps[1:-1] if s >= min_step]
    k = max_checkpoints - 2
    if len(middle) > k:
        middle = [middle[j] for j in np.unique(np.round(np.linspace(0, len(middle) - 1, k))
                                               .astype(int))]
    return [0, *middle, steps[-1]]


# ----------------------------------------------------------------------------------------
# Experiment 5, minimal
# ----------------------------------------------------------------------------------------
def probe_stream(subject: C.Subject) -> Stream:
    """The stream every snapshot's probe reads: the source's held-out histories (the form
    the model was trained on); Dark Room cropped to its first ``PROBE_EPISODES`` episodes
    (the model is causal, so the crop changes no activation)."""
    stream, _ = C.source_histories(subject)
    if not subject.bandit:
        T = PROBE_EPISODES * subject.horizon
        stream = jax.tree.map(lambda x: np.asarray(x)[:, :T], stream)
    return stream


def probe_labels(subject: C.Subject, stream: Stream) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels (B, T[, K]), positions (B, T) bool, probe kind). Bandits: UCB1's index of
    every arm at each step (``ad.interp.agents.along_stream``: from the steps before it),
    from step K on (every arm tried: UCB1's first K pulls). Dark Room: whether a reward has
    been read before the step (the token of step t reads reward t-1), every step."""
    if subject.bandit:
        K = subject.env.num_actions
        labels = np.asarray(A.along_stream(A.UCB1(K), stream.obs, stream.action,
                                           stream.reward, stream.done))
        positions = np.broadcast_to(np.arange(labels.shape[1]) >= K, labels.shape[:2])
        return labels, positions, "ridge"
    paid = np.cumsum(np.asarray(stream.reward) > 0, axis=1)
    found = np.concatenate([np.zeros_like(paid[:, :1]), paid[:, :-1]], 1) > 0
    return found, np.ones(found.shape, bool), "logistic"


@partial(jax.jit, static_argnames=("config", "names"))
def _activations(params, inputs, config, names):
    """{hook: activation} of one forward (compiled once for every snapshot of a run)."""
    return dict(run_with_cache(params, config, inputs, names_filter=list(names))[1])


def probe_measure(subject: C.Subject, model, stream: Stream | None = None) -> dict:
    """Experiment 5 in brief, for one model (the full experiment 5 lives in
    ``experiments/study/probes.py``): a linear probe (``ad.interp.probes.probe_hook``,
    5-fold split by task, a task's rollouts together) of ``probe_labels`` at every layer's
    residual output (``blocks.{l}.hook_resid_post``) on ``stream`` (default ``probe_stream``), the
    best hook's held-out score beside the embedding-only probe (``hook_embed``), the
    shuffled-label control and, for Dark Room, the majority class's accuracy. Scores are
    R² (bandits, averaged over arms) or accuracy (Dark Room); picking the best hook on the
    same folds flatters it slightly, the same at every snapshot."""
    stream = probe_stream(subject) if stream is None else stream
    labels, positions, kind = probe_labels(subject, stream)
    hooks = [f"blocks.{l}.hook_resid_post" for l in range(model.config.num_layers)]
    acts = _activations(model.params, to_inputs(stream, model.config), model.config,
                        ("hook_embed", *hooks))
    acts = {k: np.asarray(v) for k, v in acts.items()}
    groups = np.arange(labels.shape[0]) // subject.rollouts_per_task  # the task
    out = {"kind": kind, "label": ("UCB1 index of every arm (R², mean over arms)" if subject.bandit
                                   else "a reward read yet (accuracy)"),
           "positions": int(positions.sum())}
    if kind == "logistic":
        y = labels[positions]
        out["majority"] = float(max(y.mean(), 1 - y.mean()))
        if y.all() or not y.any():  # one class: nothing to probe
            return {**out, "best_hook": None, "score": float("nan"), "embed": float("nan"),
                    "shuffled": float("nan"), "per_hook": {}}
    res = {h: probe_hook(acts, h, labels, groups, positions, kind, baseline=None)
           for h in [*hooks, "hook_embed"]}
    best = max(hooks, key=lambda h: res[h].score)
    return {**out, "best_hook": best, "score": res[best].score,
            "embed": res["hook_embed"].score, "shuffled": res[best].control_score,
            "per_hook": {h: r.score for h, r in res.items()}}


# ----------------------------------------------------------------------------------------
# One snapshot, one run, the experiment
# ----------------------------------------------------------------------------------------
def snapshot_measures(subject: C.Subject, model, seed: int, stream: Stream, agents: dict,
                      label: str) -> dict:
    """Experiments 1, 4 and 5 on one snapshot, with the keys experiments 1 and 4 use for
    training seed ``seed``; per-task improvements kept for paired differences."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(subject.config.key), 0),
                             100 + seed)  # experiment 1's key for this seed
    closed = R.closed_loop_model(subject, model, key, CONDITIONS, label)
    per_task = {c: C.task_improvement(v["curve"], subject.rollouts_per_task)
                for c, v in closed.items()}
    C.say(f"{subject.config.subject} {label}: fingerprint and probe")
    fp = F.fingerprint_model(subject, model, seed, agents,
                             fit_tasks=None if subject.bandit else FIT_GOALS)
    fingerprint = {}
    for w in ("early", "late"):
        scores = {k: float(v) for k, v in fp["loglik"][w].items()}
        fingerprint[w] = {"best": max(scores, key=scores.get), "scores": scores,
                          "ceiling": float(fp["ceiling"][w])}
    return {"improvement": {c: C.over_tasks(v) for c, v in per_task.items()},
            "improvement_per_task": {c: v.tolist() for c, v in per_task.items()},
            "fingerprint": fingerprint, "temperatures": fp["temperatures"],
            "probe": probe_measure(subject, model, stream)}


def summarise(steps: list[int], rows: list[dict]) -> dict:
    """One run's series over its snapshots, its peak (true-reward improvement) and the
    last snapshot minus the peak, paired over tasks (the same tasks and keys at every
    snapshot; the peak is picked on the same data, so the drop is biased away from 0 by
    the noise of the maximum: read it beside its interval)."""
    imp = {c: [r["improvement"][c]["mean"] for r in rows] for c in CONDITIONS}
    peak = int(np.argmax(imp["true"]))
    drop = (np.asarray(rows[-1]["improvement_per_task"]["true"])
            - np.asarray(rows[peak]["improvement_per_task"]["true"]))
    return {"steps": steps,
            **{f"improvement_{c}": v for c, v in imp.items()},
            "improvement_true_ci95": [r["improvement"]["true"]["ci95"] for r in rows],
            "best_agent_early": [r["fingerprint"]["early"]["best"] for r in rows],
            "best_agent_late": [r["fingerprint"]["late"]["best"] for r in rows],
            "probe_score": [r["probe"]["score"] for r in rows],
            "probe_embed": [r["probe"]["embed"] for r in rows],
            "peak_step": steps[peak],
            "last_minus_peak_true_improvement": C.over_tasks(drop)}


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    # experiment 4's agents but the stochastic ones: Thompson sampling's Monte-Carlo policy
    # costs about a minute per bandit snapshot on 2 cores (it tracked Gittins there), and PPO
    # at the matched stage relearns every training task (experiment 4c scores it once)
    agents = {k: v for k, v in F.agents_for(subject).items() if not F.stochastic(v)}
    C.say(f"{config.subject}: the source's held-out histories (the probes' stream)")
    stream = probe_stream(subject)
    runs = []
    for seed, run_dir in zip(config.seeds, config.run_dirs()):
        steps = choose_steps(snapshot_steps(run_dir))
        rows = []
        for step in steps:
            model = load_model(snapshot_dir(run_dir, step))
            rows.append({"step": step, **snapshot_measures(subject, model, seed, stream, agents,
                                                           f"seed {seed} step {step}")})
        runs.append({"seed": seed, "run_dir": str(run_dir), "snapshots": rows,
                     "summary": summarise(steps, rows)})
    results = {"runs": runs,
               "summary": {str(r["seed"]): r["summary"] for r in runs},
               "rule": (f"step 0, the last step and the powers of two >= {MIN_STEP} between, "
                        f"thinned evenly in log-step to {MAX_CHECKPOINTS} snapshots in all"),
               "max_checkpoints": MAX_CHECKPOINTS, "min_step": MIN_STEP,
               "metric": {"improvement": "return per episode (bandits: reward per pull), "
                                         "late minus early, true rewards recorded",
                          "fingerprint": "expected log-likelihood of the model's policy "
                                         "(softmax, fitted T; experiment 4's windows)",
                          "probe": runs[0]["snapshots"][0]["probe"]["label"]}}
    plot(subject, results)
    return results


def _x(steps) -> np.ndarray:
    """log2 of the step, step 0 one octave left of the first positive step."""
    steps = np.asarray(steps, float)
    first = steps[steps > 0].min() if (steps > 0).any() else 1.0
    return np.log2(np.where(steps > 0, steps, first / 2))


def plot(subject: C.Subject, results: dict) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in results["runs"]:
        s = run["summary"]
        x = _x(s["steps"])
        tag = f"seed {run['seed']}"
        for c in CONDITIONS:
            ci = [r["improvement"][c]["ci95"] for r in run["snapshots"]]
            axes[0].errorbar(x, s[f"improvement_{c}"], yerr=ci, marker="o", capsize=3,
                             label=f"{c} rewards, {tag}")
        for w, style in (("early", "--"), ("late", "-")):  # one colour per agent
            for j, name in enumerate(run["snapshots"][0]["fingerprint"][w]["scores"]):
                y = [r["fingerprint"][w]["scores"][name] for r in run["snapshots"]]
                axes[1].plot(x, y, style, marker=".", color=f"C{j}", label=f"{name}, {w}")
        axes[2].plot(x, s["probe_score"], "-o", label=f"best residual hook, {tag}")
        axes[2].plot(x, s["probe_embed"], "--o", label=f"embedding only, {tag}")
        if "majority" in run["snapshots"][0]["probe"]:
            axes[2].plot(x, [r["probe"]["majority"] for r in run["snapshots"]], ":",
                         label="majority class")
    steps = results["runs"][0]["summary"]["steps"]
    for ax, title, ylabel in zip(axes, ("exp 1: in-context improvement", "exp 4: fingerprint",
                                        "exp 5: probe"),
                                 ("late − early return", "E log p_agent(model's action)",
                                  results["metric"]["probe"])):
        ax.set_xticks(_x(steps), [str(s) for s in steps], rotation=45, fontsize=8)
        ax.set_xlabel("training step (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[1].set_ylim(-3, 0)
    fig.suptitle(f"{subject.config.subject}: over training (held-out tasks, "
                 f"{'bandits' if subject.bandit else 'goals'} x rollouts = {subject.n})")
    fig.tight_layout()
    save_figure(fig, C.output_paths(EXPERIMENT, subject.config)[1])  # atomic


def print_summary(record: dict) -> None:
    r = record["results"]
    print(f"\n=== experiment 9, {record['config']['subject']}: over training "
          f"(improvement ± 95% over tasks; best agent early / late; probe vs embedding) ===")
    for run in r["runs"]:
        print(f"-- seed {run['seed']}")
        for row in run["snapshots"]:
            imp = row["improvement"]
            p = row["probe"]
            print(f"  step {row['step']:5d}: " + "  ".join(
                f"{c} {imp[c]['mean']:+.3f} ± {imp[c]['ci95']:.3f}" for c in CONDITIONS)
                + f"  | {row['fingerprint']['early']['best']} / {row['fingerprint']['late']['best']}"
                + f"  | probe {p['score']:.3f} (embed {p['embed']:.3f}"
                + (f", majority {p['majority']:.3f})" if "majority" in p else ")"))
        s = run["summary"]
        d = s["last_minus_peak_true_improvement"]
        print(f"  peak at step {s['peak_step']}; last minus peak {d['mean']:+.3f} ± {d['ci95']:.3f}")


def main(argv=None) -> int:
    return C.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
