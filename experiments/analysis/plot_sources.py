"""Plot the source agents' own learning curves stored in datasets (fraction of optimum).

    python -m experiments.plot_sources data/darkroom data/dr-dqn data/k2d-ppo --out sources.png

It also prints each source's fraction of the optimum "by episode k" (``--episodes``; as
in the README, ``ad.evaluate.by_episode_rows``, over the histories that reached k + 5).

Each dataset keeps every history's per-episode returns (``episode_returns``, the full
learning curve even when episodes were subsampled for storage) and its task params, so
the curve is normalised per task by ``env.optimal_return``. Bands are 95% intervals
over histories.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from ad.dataset import load_dataset
from ad.evaluate import by_episode_rows
from ad.plots import plot_curves


def source_fraction_curve(path: str) -> tuple[str, np.ndarray]:
    """(label, (histories, episodes) fraction-of-optimum array, NaN past a history's end)."""
    ds = load_dataset(path)
    env = ds.env
    optimum = np.asarray(jax.vmap(env.optimal_return)(ds.task_params()))
    returns = np.asarray(ds.episode_returns, np.float64)
    keep = optimum > 0
    name = os.path.basename(os.path.normpath(path))  # two datasets of one source stay apart
    label = f"{ds.spec.source} on {ds.spec.env}: {name} ({int(keep.sum())} histories)"
    return label, returns[keep] / optimum[keep, None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.plot_sources", description=__doc__.split("\n")[0])
    p.add_argument("datasets", nargs="+", help="dataset directories written by experiments.collect")
    p.add_argument("--out", default="results/sources.png", help="PNG path (default: results/sources.png)")
    p.add_argument("--episodes", type=int, nargs="+", default=[10, 30, 50, 100], metavar="K",
                   help="print the fraction of optimum by these episodes (default: 10 30 50 100)")
    args = p.parse_args(argv)
    panel = {}
    for path in args.datasets:
        label, frac = source_fraction_curve(path)
        n = np.sum(~np.isnan(frac), axis=0)
        valid = n >= max(2, 0.9 * frac.shape[0])  # episodes most histories reached
        mean = np.nanmean(frac[:, valid], axis=0)
        ci = 1.96 * np.nanstd(frac[:, valid], axis=0, ddof=1) / np.sqrt(n[valid])
        panel[label] = {"mean": mean, "ci": ci}
        print(f"{label}: {mean[-max(1, len(mean) // 10):].mean():.3f} of optimum over the last 10% of episodes")
        # a history that ended before episode k + 5 gives NaN here and is left out
        by = {k: np.nanmean(by_episode_rows(frac, k)) for k in args.episodes
              if np.any(~np.isnan(by_episode_rows(frac, k)))}
        print("  by episode " + ", ".join(f"{k}: {v:.3f}" for k, v in by.items()))
    plot_curves({"source learning curves (the datasets' tasks)": panel}, args.out,
                title="Source agents: return / optimum per episode", ylabel="fraction of optimum")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
