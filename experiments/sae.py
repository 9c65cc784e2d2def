"""Sparse autoencoders on a trained AD model's activations, end to end (docs/sae.md).

    python -m experiments.sae store  --run RUN --out DIR        # activation stores (train, test)
    python -m experiments.sae sweep  --stores DIR --out DIR     # SAE grid per hook + metrics
    python -m experiments.sae label  --stores DIR --sweep DIR   # features vs ground truth
    python -m experiments.sae browse --stores DIR --sweep DIR --out site/   # static browser
    python -m experiments.sae summary --sweeps DIR [DIR ...] --out docs/sae  # figures + JSON

Each step is resumable (stores resume shard by shard; a sweep skips the widths whose
results exist) and writes JSON with its config and provenance. Stores, SAE weights and
generated pages belong under data/ or scratch, never in git.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _store(args) -> None:
    from ad.interp.sae.store import StoreConfig, write_store

    hooks = tuple(args.hooks)
    splits = (("train", args.train_tasks, args.train_rollouts),
              ("test", args.test_tasks, args.test_rollouts))
    for split, num_tasks, rollouts in splits:
        cfg = StoreConfig(run=args.run, hooks=hooks, split=split, num_tasks=num_tasks,
                          rollouts_per_task=rollouts, num_steps=args.steps, seed=args.seed)
        store = write_store(Path(args.out) / split, cfg, shard_size=args.shard_size)
        print(f"{split}: {store.num_histories} histories x {store.num_steps} steps "
              f"({store.num_histories * store.num_steps:,} positions) -> {store.path}")


def _sweep(args) -> None:
    from ad.interp.sae.sweep import SweepConfig, run_sweep
    from ad.interp.sae.train import TrainConfig

    cfg = SweepConfig(hooks=tuple(args.hooks) if args.hooks else None,
                      train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                        lr=args.lr), seed=args.seed)
    records = run_sweep(args.stores, args.out, cfg)
    print(f"{'hook':28s} {'row':14s} {'setting':>8s} {'L0':>7s} {'FVU':>7s} {'cos':>6s} "
          f"{'dead':>5s}")
    for r in records:
        for i, s in enumerate(r["settings"]):
            t = r["test"]
            print(f"{r['hook']:28s} {r['row']:14s} {s:8g} {t['l0'][i]:7.2f} {t['fvu'][i]:7.4f} "
                  f"{t['cosine'][i]:6.3f} {t['dead'][i]:5.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.sae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("store", help="closed-loop activation stores on train and test tasks")
    s.add_argument("--run", required=True, help="trained model run directory")
    s.add_argument("--out", required=True, help="directory for <out>/train and <out>/test")
    s.add_argument("--hooks", nargs="+",
                   default=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
                   help="per-position hooks to record (default: both residual outputs)")
    s.add_argument("--steps", type=int, default=100, help="steps per rollout (default 100)")
    s.add_argument("--train-tasks", type=int, default=2048,
                   help="training-split tasks (finite task sets: at most the whole split)")
    s.add_argument("--train-rollouts", type=int, default=2, help="rollouts per training task")
    s.add_argument("--test-tasks", type=int, default=512, help="held-out tasks")
    s.add_argument("--test-rollouts", type=int, default=2, help="rollouts per held-out task")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=int, default=64, help="histories per shard")
    s.set_defaults(func=_store)

    s = sub.add_parser("sweep", help="train the SAE grid on <stores>/train, score on /test")
    s.add_argument("--stores", required=True, help="directory holding train/ and test/ stores")
    s.add_argument("--out", required=True, help="where SAE rows (weights + JSON) are saved")
    s.add_argument("--hooks", nargs="*", help="hooks to sweep (default: all stored)")
    s.add_argument("--steps", type=int, default=300, help="optimiser steps per SAE")
    s.add_argument("--batch-size", type=int, default=512, help="positions per step")
    s.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sweep)

    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
