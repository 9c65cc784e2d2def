"""How well does a distilled model imitate its source at each stage of the source's learning?

    python -m experiments.imitation runs/key-to-door/ad-seed0            # its training data
    python -m experiments.imitation RUN --data data/k2d-test --out results/k2d/imitation.json

In-context evaluation says *whether* AD improves; this says *where* imitation breaks. The
model reads whole learning histories teacher-forced (one forward over each stream with the
same band as in a rollout, so every step sees what it would see there), and the tool
reports, per stretch of the history (``--bins`` equal spans of steps): the mean negative
log-likelihood of the source's actions, how often the model's most likely action is the
source's, the model's policy entropy, and the source's mean return over the episodes that
end in that stretch. A model that imitates converged behaviour but not the learning
stretch has learnt to exploit a context, not to improve one. Run it on histories from
held-out tasks (``python -m experiments.collect --split test ...``, same source settings)
to separate imitation from memorising tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ad.dataset import load_dataset, returns_table
from ad.checkpoints import LoadedModel, load_model
from ad.inputs import stream_inputs
from ad.utils import atomic_write_text, provenance


def per_step_imitation(model: LoadedModel, obs, action, reward, done,
                       forward=None) -> dict[str, np.ndarray]:
    """Teacher-forced ``nll``, ``correct`` and ``entropy`` per step, each ``(B, T)``.

    ``obs/action/reward/done`` are whole streams ``(B, T, ...)`` starting at step 0;
    ``forward``: ``jax.jit(model.apply)``, to reuse one compilation over many calls.
    """
    cfg = model.config
    action = np.asarray(action, np.int32)
    inputs = stream_inputs(jax.tree.map(lambda o: np.asarray(o, np.int32), obs), action,
                           np.asarray(reward, np.float32), np.asarray(done, bool), cfg)
    logits = (forward or jax.jit(model.apply))(inputs)
    nll, correct, entropy = _scores(logits, action)
    return {"nll": np.asarray(nll), "correct": np.asarray(correct),
            "entropy": np.asarray(entropy)}


@jax.jit
def _scores(logits, action):
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, action[..., None], axis=-1)[..., 0]
    correct = logits.argmax(-1) == action
    entropy = -(jnp.exp(logp) * logp).sum(-1)
    return nll, correct, entropy


def imitation_table(model: LoadedModel, dataset, histories: int, bins: int,
                    batch_size: int = 16, progress: bool = True) -> dict:
    """Per-stretch imitation figures over the first ``histories`` histories of ``dataset``."""
    n_hist = min(histories, dataset.num_histories)
    T = dataset.num_steps
    if not 1 <= bins <= T:
        raise ValueError(f"bins must be in [1, {T}] (the steps of each history in "
                         f"{dataset.path}), got {bins}")
    edges = np.linspace(0, T, bins + 1).round().astype(int)
    sums = {k: np.zeros(bins) for k in ("nll", "correct", "entropy")}
    ret_sum, ret_count = np.zeros(bins), np.zeros(bins)
    forward = jax.jit(model.apply)
    chunks = range(0, n_hist, batch_size)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="imitation", unit="batch", leave=False)
    for lo in chunks:
        idx = np.arange(lo, lo + batch_size) % n_hist  # pad the last batch: one compile
        rows = dataset.read_windows(idx, np.zeros(len(idx), np.int64), T)
        done = np.logical_or(rows.terminated, rows.truncated)
        per_step = per_step_imitation(model, rows.obs, rows.action, rows.reward, done, forward)
        real = np.arange(lo, lo + batch_size) < n_hist
        for k in sums:
            sums[k] += np.add.reduceat(per_step[k][real].sum(axis=0), edges[:-1])
        # each completed episode's return, binned by the stretch its last step falls in
        returns, counts = returns_table(rows.reward, done)
        for b in np.flatnonzero(real):
            which = np.searchsorted(edges, np.flatnonzero(done[b]), side="right") - 1
            np.add.at(ret_sum, which, returns[b, :counts[b]])
            np.add.at(ret_count, which, 1)
    steps = np.diff(edges) * n_hist
    rows_out = []
    for i in range(bins):
        rows_out.append({
            "steps": [int(edges[i]), int(edges[i + 1])],
            "nll": float(sums["nll"][i] / steps[i]),
            "accuracy": float(sums["correct"][i] / steps[i]),
            "entropy": float(sums["entropy"][i] / steps[i]),
            "source_return": (float(ret_sum[i] / ret_count[i]) if ret_count[i] else None),
            "episodes": int(ret_count[i]),
        })
    return {"histories": n_hist, "steps_per_history": T, "bins": rows_out,
            "uniform_nll": float(np.log(model.config.num_actions))}


def plot_imitation(table: dict, path: Path, title: str) -> Path:
    from ad.plots import plt, save_figure  # the Agg backend is set there

    x = [(b["steps"][0] + b["steps"][1]) / 2 for b in table["bins"]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(x, [b["nll"] for b in table["bins"]], "o-", color="tab:blue", label="NLL of source action")
    ax.plot(x, [b["entropy"] for b in table["bins"]], "s--", color="tab:cyan", label="model entropy")
    ax.plot(x, [b["accuracy"] for b in table["bins"]], "^-", color="tab:green", label="top-1 accuracy")
    ax.axhline(table["uniform_nll"], color="gray", ls=":", lw=1, label="uniform NLL")
    ax.set_xlabel("step of the (stored) history")
    ax.set_ylabel("nats / accuracy")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(x, [b["source_return"] if b["source_return"] is not None else np.nan
                  for b in table["bins"]], "d-", color="tab:orange", label="source return")
    twin.set_ylabel("source return per episode", color="tab:orange")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.imitation", description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run directory (or its model/)")
    p.add_argument("--data", default="", help="histories to read (default: the model's "
                   "training dataset); use a test-split collection for held-out tasks")
    p.add_argument("--histories", type=int, default=256, help="histories read (default: 256)")
    p.add_argument("--bins", type=int, default=10, help="stretches of each history (default: 10)")
    p.add_argument("--batch-size", type=int, default=16, help="histories per forward pass")
    p.add_argument("--out", default="", help="JSON path (a PNG is written beside it); "
                   "default: <run>/imitation.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("histories", "bins", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model = load_model(args.run)
    data = args.data or model.dataset
    if not data:
        p.error(f"{args.run}: the model does not record its dataset; pass --data")
    dataset = load_dataset(data)
    if dataset.spec.env != model.env_name:
        p.error(f"--data {data}: histories of env {dataset.spec.env!r}, but the model was "
                f"trained on {model.env_name!r}")
    try:
        table = imitation_table(model, dataset, args.histories, args.bins, args.batch_size,
                                progress=not args.quiet)
    except ValueError as e:
        p.error(str(e))
    split = dataset.spec.split
    print(f"{model.run_dir}: {table['histories']} {split}-split histories of {data} "
          f"({table['steps_per_history']} steps each), uniform NLL {table['uniform_nll']:.3f}")
    print(f"{'steps':>13s} {'NLL':>7s} {'acc':>6s} {'entropy':>8s} {'source return':>14s}")
    for b in table["bins"]:
        ret = "-" if b["source_return"] is None else f"{b['source_return']:.2f}"
        print(f"{b['steps'][0]:>6d}-{b['steps'][1]:<6d} {b['nll']:7.3f} {b['accuracy']:6.3f} "
              f"{b['entropy']:8.3f} {ret:>14s}")
    out = Path(args.out) if args.out else model.run_dir / "imitation.json"
    atomic_write_text(out, json.dumps({"run": str(model.run_dir), "data": str(data),
                                       "split": split, **table, **provenance()}, indent=1))
    png = plot_imitation(table, out.with_suffix(".png"),
                         f"{model.run_dir.parent.name}/{model.run_dir.name} on "
                         f"{Path(data).name} ({split} split)")
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
