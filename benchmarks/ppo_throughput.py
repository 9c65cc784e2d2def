"""PPO source throughput: env steps per second *including learning*, and useful FLOP/s.

    .venv/bin/python benchmarks/ppo_throughput.py                 # 1, 256, 1024 histories
    .venv/bin/python benchmarks/ppo_throughput.py --num-histories 1 256 --out /tmp/p.json

Runs ``jax.jit(jax.vmap(ppo.make_train(env, config)))`` with the env's preset config
(``ppo.default_config``, the one that meets the quality target) for each number of
histories, timing one full history after compilation. Tasks cycle through the env's
train split. For the largest run it also reports the quality the preset reached (mean
return of the last 10% of episodes against ``env.optimal_return``), so speed and
quality are measured on the same configuration.

Useful FLOPs are counted analytically from the network's dense layers: with M the
multiply-accumulates of one forward pass, an env step costs one acting forward (2M),
one bootstrap critic forward on the true next state (2M) and ``num_epochs`` forward +
backward passes (3 × 2M each). The machine's fp32 matmul peak is a timed 2048³
``jnp.dot`` in the same process. Prints a table and writes JSON (config, versions, date).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs
from source_agents import ppo
from source_agents.history import episode_returns
from source_agents.networks import make_encoder


def forward_macs(in_dim: int, config: ppo.Config, num_actions: int) -> int:
    """Multiply-accumulates of one actor-critic forward pass (dense layers only)."""
    def mlp(out: int) -> int:
        sizes = [in_dim, *config.hidden_sizes, out]
        return sum(a * b for a, b in itertools.pairwise(sizes))

    if config.shared_torso:
        return mlp(num_actions + 1)
    return mlp(num_actions) + mlp(1)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of an n×n×n ``jnp.dot`` (best of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def quality(env, tasks, history) -> dict:
    """Per-history mean return over the last 10% of episodes, against the optimum."""
    opt = np.asarray(jax.vmap(env.optimal_return)(tasks))
    done = np.asarray(history.terminated | history.truncated)
    reward = np.asarray(history.reward)
    final = []
    for i in range(reward.shape[0]):
        r = episode_returns(reward[i], done[i])
        final.append(r[-max(1, len(r) // 10):].mean())
    final = np.asarray(final)
    frac = final / opt
    return {
        "mean_final_return": float(final.mean()),
        "mean_fraction_of_optimum": float(frac.mean()),
        "fraction_of_histories_at_90pct": float((frac >= 0.9).mean()),
        "episodes_per_history": int(done[0].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="darkroom", help="registered env name")
    parser.add_argument("--num-histories", type=int, nargs="+", default=[1, 256, 1024],
                        help="histories vmapped together, one run each")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="override the preset history length (env steps)")
    parser.add_argument("--out", default="results/ppo_throughput.json", help="JSON output path")
    args = parser.parse_args()
    for n in args.num_histories:
        if n < 1:
            raise ValueError(f"--num-histories must be >= 1, got {n}")

    env = envs.make(args.env)
    overrides = {} if args.num_steps is None else {"num_steps": args.num_steps}
    config = ppo.default_config(args.env, **overrides)
    train = jax.jit(jax.vmap(ppo.make_train(env, config)))
    all_tasks = env.tasks("train")
    num_tasks = jax.tree.leaves(all_tasks)[0].shape[0]

    in_dim = make_encoder(env, config.encoding).dim
    macs = forward_macs(in_dim, config, env.num_actions)
    flops_per_step = 2 * macs * (2 + 3 * config.num_epochs)
    peak = matmul_peak()

    rows = []
    for n in args.num_histories:
        index = jnp.arange(n) % num_tasks
        tasks = jax.tree.map(lambda a, index=index: a[index], all_tasks)
        keys = jax.random.split(jax.random.key(n), n)
        t = time.perf_counter()
        compiled = train.lower(keys, tasks).compile()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        history = jax.block_until_ready(compiled(keys, tasks))
        run_s = time.perf_counter() - t
        sps = n * config.num_steps / run_s
        row = {
            "num_histories": n, "compile_s": compile_s, "run_s": run_s,
            "env_steps_per_s": sps, "useful_flops_per_s": sps * flops_per_step,
            "fraction_of_matmul_peak": sps * flops_per_step / peak,
        }
        if n == max(args.num_histories):
            row["quality"] = quality(env, tasks, history)
        rows.append(row)

    print(f"PPO on {args.env}: {config.num_steps} steps/history, "
          f"{flops_per_step} useful FLOPs/env step, fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'histories':>9} {'compile s':>9} {'run s':>7} {'env steps/s':>12} "
          f"{'GFLOP/s':>8} {'% peak':>7}")
    for r in rows:
        print(f"{r['num_histories']:>9} {r['compile_s']:>9.1f} {r['run_s']:>7.2f} "
              f"{r['env_steps_per_s']:>12,.0f} {r['useful_flops_per_s'] / 1e9:>8.2f} "
              f"{100 * r['fraction_of_matmul_peak']:>6.1f}%")
    q = rows[-1].get("quality") or next(r["quality"] for r in rows if "quality" in r)
    print(f"quality at {max(args.num_histories)} histories: {json.dumps(q)}")

    result = {
        "benchmark": "ppo_throughput",
        "env": args.env,
        "config": dataclasses.asdict(config),
        "flops_per_env_step": flops_per_step,
        "matmul_peak_flops_per_s": peak,
        "rows": rows,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
