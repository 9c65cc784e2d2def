"""Retention: after k successful episodes in a row, how likely is the next one to succeed?

    python -m experiments.retention runs/key-to-door-mlp/ad-seed0
    python -m experiments.retention RUN --tasks 256 --episodes 200 --out results/k2d/retention.json

An in-context learner that has found a goal should keep going back to it, so its
probability of success right after one success ought to be high. A model that imitates a
slow learner instead reproduces the slow learner's hesitation: its success probability
climbs with the length of the streak of successes in its context, as the source's climbs
with the gradient steps those successes paid for. This tool measures that curve,
``P(success at episode e | exactly k successes right before e)`` for k = 0, 1, 2, ...
(the last bucket is "k or more"), side by side for

- **AD** acting in context on held-out tasks (sampled actions, as ``experiments.run``);
- **the source as distilled**: the stored histories the model was trained on (training
  tasks, only the kept episodes when the dataset was subsampled): what AD imitated;
- **the source learning from scratch** on the same held-out tasks, every episode.

An episode succeeds when its return is at least ``--frac`` (default 0.9) times the
task's optimal return (``env.optimal_return``): in Key-to-Door, both key and door.
The ``k = 0`` bucket is the rate of (re)discovery. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from ad import evaluate as ev
from ad.dataset import load_dataset, returns_table
from ad.checkpoints import load_model
from ad.utils import atomic_write_text, provenance
from experiments.collect import resolve_source


def streaks(success: np.ndarray) -> np.ndarray:
    """``(N, E)`` bool -> ``(N, E)`` int: successes in a row right before each episode."""
    success = np.asarray(success, bool)
    out = np.zeros(success.shape, np.int64)
    for e in range(1, success.shape[1]):
        out[:, e] = np.where(success[:, e - 1], out[:, e - 1] + 1, 0)
    return out


def retention_table(success: np.ndarray, valid: np.ndarray | None = None,
                    max_streak: int = 10) -> list[dict]:
    """``P(success | streak == k)`` for k < ``max_streak`` and ``streak >= max_streak``.

    ``success`` ``(N, E)`` bool; ``valid`` ``(N, E)`` marks real episodes (histories of
    different lengths are padded; a padded episode ends every streak). Each row:
    ``{"streak", "at_least", "episodes", "p_success"}`` (``p_success`` None when empty).
    """
    success = np.asarray(success, bool)
    valid = np.ones(success.shape, bool) if valid is None else np.asarray(valid, bool)
    k = streaks(success & valid)
    rows = []
    for s in range(max_streak + 1):
        sel = valid & ((k >= s) if s == max_streak else (k == s))
        n = int(sel.sum())
        rows.append({"streak": s, "at_least": s == max_streak, "episodes": n,
                     "p_success": float(success[sel].mean()) if n else None})
    return rows


def first_success_split(success: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Split the streak-0 bucket by what the context holds, and how tasks fare overall.

    - ``discovery``: ``P(success | no success yet in this stream)``: finding it at all;
    - ``recovery``: ``P(success | the last episode failed, the one before it succeeded)``:
      going back after one slip, the success two episodes back in the context;
    - ``recovery_any``: ``P(success | the last episode failed, some earlier one
      succeeded)``: going back after any number of failures;
    - ``ever``: the fraction of streams with at least one success;
    - ``after_first``: the success rate over all episodes after a stream's first success;
    - ``follow_up``: ``P(success | the episode right before was the stream's first
      success)``: acting on one success, the moment an in-context learner is made for.
    Each is ``{"p", "episodes"}`` (``"streams"`` for ``ever``); ``p`` None when empty.
    """
    success = np.asarray(success, bool)
    valid = np.ones(success.shape, bool) if valid is None else np.asarray(valid, bool)
    success = success & valid
    before = np.cumsum(success, axis=1) - success  # successes before each episode
    last_failed = np.concatenate([np.ones((len(success), 1), bool), ~success[:, :-1]], axis=1)
    slipped = np.zeros(success.shape, bool)  # failed right after a success
    slipped[:, 2:] = success[:, :-2] & ~success[:, 1:-1] & valid[:, 1:-1]

    def rate(sel):
        n = int(sel.sum())
        return {"p": float(success[sel].mean()) if n else None, "episodes": n}

    ever = success.any(axis=1)
    return {"discovery": rate(valid & (before == 0)),
            "recovery": rate(valid & slipped),
            "recovery_any": rate(valid & (before > 0) & last_failed),
            "ever": {"p": float(ever.mean()) if len(ever) else None, "streams": int(len(ever))},
            "after_first": rate(valid & (before > 0)),
            "follow_up": rate(valid & (before == 1) & ~last_failed)}


def _source_from_spec(spec):
    """The source and its Config as recorded in a dataset's spec (JSON lists -> tuples)."""
    source = resolve_source(spec.source)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.source_config.items()}
    return source, source.Config(**fields)


def measure(run: str, tasks: int, episodes: int, frac: float, max_streak: int,
            histories: int, seed: int = 1234) -> dict:
    model = load_model(run)
    env = model.env
    if not model.dataset:
        raise ValueError(f"{run}: the model does not record its dataset")
    dataset = load_dataset(model.dataset)
    spec = dataset.spec
    key = jax.random.PRNGKey(seed)
    test = ev.eval_tasks(env, "test", tasks, key)
    n = jax.tree.leaves(test)[0].shape[0]
    optimum = np.asarray(jax.vmap(env.optimal_return)(test))[:, None]
    out = {}

    def tables(success, valid=None):  # both views of one success array
        return dict(table=retention_table(success, valid, max_streak),
                    split=first_success_split(success, valid))

    r = ev.ad_rollout(model.params, model.config, env, test, jax.random.fold_in(key, 100),
                      episodes * env.max_episode_steps)
    ad_returns = ev.episode_curve(r, episodes)
    out["AD in context (held-out tasks)"] = dict(
        **tables(ad_returns >= frac * optimum),
        mean_return=float(ad_returns.mean()), rows=n, episodes=episodes)

    m = min(histories, dataset.num_histories)
    rows = dataset.read_windows(np.arange(m), np.zeros(m, np.int64), dataset.num_steps)
    stored, counts = returns_table(rows.reward, np.logical_or(rows.terminated, rows.truncated))
    valid = np.arange(stored.shape[1])[None] < counts[:, None]
    opt_train = np.asarray(jax.vmap(env.optimal_return)(dataset.task_params(np.arange(m))))
    every = spec.extra.get("subsample_every", 1)
    out[f"source as distilled (training histories{f', every {every}th episode' if every > 1 else ''})"] = dict(
        **tables(np.nan_to_num(stored) >= frac * opt_train[:, None], valid),
        mean_return=float(np.nanmean(stored)), rows=m, episodes=int(counts.max()))

    source, config = _source_from_spec(spec)
    _, src_returns = ev.source_learning(source, config, env, test, jax.random.fold_in(key, 7),
                                        episodes)
    out["source from scratch (held-out tasks)"] = dict(
        **tables(src_returns >= frac * optimum),
        mean_return=float(src_returns.mean()), rows=n, episodes=int(src_returns.shape[1]))
    return {"run": str(model.run_dir), "env": model.env_name, "dataset": str(model.dataset),
            "success": f"return >= {frac} x the task's optimal return", "curves": out}


def plot_retention(result: dict, path: Path) -> Path:
    from ad.plots import plt, save_figure  # the Agg backend is set there

    styles = [dict(color="tab:blue", marker="o", lw=2), dict(color="tab:orange", marker="s"),
              dict(color="tab:orange", marker="^", ls="--")]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (label, c), style in zip(result["curves"].items(), styles):
        pts = [(r["streak"], r["p_success"]) for r in c["table"]
               if r["p_success"] is not None and r["episodes"] >= 20]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
    last = result["curves"][next(iter(result["curves"]))]["table"][-1]["streak"]
    ax.set_xticks(range(last + 1), [str(s) for s in range(last)] + [f"{last}+"])
    ax.set_xlabel("successful episodes in a row right before")
    ax.set_ylabel("P(this episode succeeds)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{Path(result['run']).parent.name}: {result['success']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.retention", description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run directory (or its model/)")
    p.add_argument("--tasks", type=int, default=128, help="held-out tasks (default: 128)")
    p.add_argument("--episodes", type=int, default=200, help="in-context episodes (default: 200)")
    p.add_argument("--histories", type=int, default=512,
                   help="stored training histories read (default: 512)")
    p.add_argument("--frac", type=float, default=0.9,
                   help="success: return >= frac x optimum (default: 0.9)")
    p.add_argument("--max-streak", type=int, default=10, help="last bucket: this many or more")
    p.add_argument("--out", default="", help="JSON path (a PNG is written beside it); "
                   "default: <run>/retention.json")
    args = p.parse_args(argv)
    for name in ("tasks", "episodes", "histories", "max_streak"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.frac <= 1:
        p.error(f"--frac must lie in (0, 1], got {args.frac}")
    try:
        result = measure(args.run, args.tasks, args.episodes, args.frac, args.max_streak,
                         args.histories)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(f"{result['run']}: success = {result['success']}")
    labels = list(result["curves"])
    print(f"{'streak':>7s}" + "".join(f"{lab[:28]:>30s}" for lab in labels))
    for i in range(args.max_streak + 1):
        cells = []
        for lab in labels:
            r = result["curves"][lab]["table"][i]
            cells.append("-" if r["p_success"] is None
                         else f"{r['p_success']:.2f} (n={r['episodes']})")
        s = result["curves"][labels[0]]["table"][i]
        print(f"{str(s['streak']) + ('+' if s['at_least'] else ''):>7s}"
              + "".join(f"{c:>30s}" for c in cells))
    names = {"discovery": "P(success | none yet)", "recovery": "P(success | 1, then 1 failure)",
             "recovery_any": "P(success | 1, then failures)",
             "ever": "streams with a success", "after_first": "success rate after the first",
             "follow_up": "P(success | first success last)"}
    for name, text in names.items():
        cells = []
        for lab in labels:
            r = result["curves"][lab]["split"][name]
            n = r.get("episodes", r.get("streams"))
            cells.append("-" if r["p"] is None else f"{r['p']:.2f} (n={n})")
        print(f"{text:>30s}" + "".join(f"{c:>30s}" for c in cells))
    for lab in labels:
        print(f"mean return, {lab}: {result['curves'][lab]['mean_return']:.3f}")
    out = Path(args.out) if args.out else Path(result["run"]) / "retention.json"
    atomic_write_text(out, json.dumps({**result, **provenance()}, indent=1))
    png = plot_retention(result, out.with_suffix(".png"))
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
