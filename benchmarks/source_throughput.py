"""Source throughput side by side: the tabular learners (R-max, PSRL) and PPO.

    .venv/bin/python benchmarks/source_throughput.py                       # Dark Room, 1,024 histories
    .venv/bin/python benchmarks/source_throughput.py --env key-to-door --num-steps 2000

For each source, ``jax.jit(jax.vmap(make_train(env, config)))`` with the env's preset
(``source_agents.make_config``) and the same history length runs ``--num-histories``
histories (tasks cycle through the train split) once after compilation: env steps per
second *including learning* (R-max: a sweep after every step and a plan every
``plan_every`` steps; PSRL: the same plus posterior draws; PPO: its updates), and the
quality reached (``benchmarks.ppo_throughput.quality``: mean return over the last 10% of
episodes against the optimum). For the tabular sources it also times one value-iteration
sweep over all histories' tables (``value_iteration`` vmapped, ``--sweeps`` sweeps per
call). With ``psrl`` it also times ``psrl/jax-gamma``: PSRL with ``jax.random.loggamma`` in
place of ``tabular.log_gamma``, the sampler a user would reach for (on CPU a sequential
loop over the elements). All sources run in one process, one after another, so their ratios are measured
on the same machine state. Prints a table and writes JSON (configs, versions, date).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402
from ad.utils import atomic_write_text  # noqa: E402
import source_agents  # noqa: E402
from benchmarks.ppo_throughput import quality  # noqa: E402
from source_agents import tabular  # noqa: E402


def sweep_seconds(env, config, n: int, sweeps: int) -> float:
    """Seconds per value-iteration sweep over ``n`` histories' tables (R-max's model form)."""
    space = tabular.state_space(env, config.phases)
    S, A, K = space.num_states, env.num_actions, config.max_successors
    model = tabular.empty_model(S, A, K)
    rmax_config = tabular.RMaxConfig(phases=config.phases, gamma=config.gamma)
    mdp = tabular.empirical_mdp(model, rmax_config)
    mdps = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), mdp)
    q = jnp.zeros((n, S, A))
    plan = jax.jit(jax.vmap(lambda m, q: tabular.value_iteration(m, q, config.gamma, sweeps)))
    jax.block_until_ready(plan(mdps, q))
    t = time.perf_counter()
    jax.block_until_ready(plan(mdps, q))
    return (time.perf_counter() - t) / sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="darkroom", help="registered env name (default: darkroom)")
    parser.add_argument("--sources", nargs="+", default=["rmax", "psrl", "ppo"],
                        help="registered sources to time (default: rmax psrl ppo)")
    parser.add_argument("--num-histories", type=int, default=1024, metavar="N",
                        help="histories vmapped together (default: 1024)")
    parser.add_argument("--num-steps", type=int, default=1024, metavar="T",
                        help="env steps per history, the same for every source (default: 1024; PPO needs a multiple of its rollout length, 128)")
    parser.add_argument("--sweeps", type=int, default=50,
                        help="sweeps per timed value-iteration call (default: 50)")
    parser.add_argument("--out", default="results/source_throughput.json", help="JSON output path")
    args = parser.parse_args()
    if args.num_histories < 1 or args.num_steps < 1 or args.sweeps < 1:
        parser.error("--num-histories, --num-steps and --sweeps must be >= 1")

    env = envs.make(args.env)
    all_tasks = env.tasks("train")
    num_tasks = jax.tree.leaves(all_tasks)[0].shape[0]
    n = args.num_histories
    tasks = jax.tree.map(lambda a: a[jnp.arange(n) % num_tasks], all_tasks)
    keys = jax.random.split(jax.random.key(0), n)
    rows = []
    runs = [(name, name) for name in args.sources]
    if "psrl" in args.sources:
        runs.insert(args.sources.index("psrl") + 1, ("psrl/jax-gamma", "psrl"))
    for label, name in runs:
        source = source_agents.get(name)
        config = source_agents.make_config(source, args.env, num_steps=args.num_steps)
        own_sampler = tabular.log_gamma
        if label == "psrl/jax-gamma":  # posterior_draw looks the sampler up at trace time
            tabular.log_gamma = lambda key, alpha: jax.random.loggamma(key, alpha)
        try:
            train = jax.jit(jax.vmap(source.make_train(env, config)))
            t = time.perf_counter()
            compiled = train.lower(keys, tasks).compile()
            compile_s = time.perf_counter() - t
        finally:
            tabular.log_gamma = own_sampler
        t = time.perf_counter()
        history = jax.block_until_ready(compiled(keys, tasks))
        run_s = time.perf_counter() - t
        row = {"source": label, "config": dataclasses.asdict(config), "compile_s": compile_s,
               "run_s": run_s, "env_steps_per_s": n * args.num_steps / run_s,
               "quality": quality(env, tasks, history)}
        if isinstance(config, (tabular.RMaxConfig, tabular.PSRLConfig)):
            row["sweep_s"] = sweep_seconds(env, config, n, args.sweeps)
        rows.append(row)

    print(f"sources on {args.env}: {n} histories x {args.num_steps} steps "
          f"(a shared machine's timings are noisy; ratios are measured in one run)")
    print(f"{'source':>14} {'compile s':>9} {'run s':>8} {'env steps/s':>12} "
          f"{'sweep ms':>9} {'final/opt':>9} {'>=90%':>6}")
    for r in rows:
        sweep = f"{1e3 * r['sweep_s']:9.2f}" if "sweep_s" in r else f"{'-':>9}"
        q = r["quality"]
        print(f"{r['source']:>14} {r['compile_s']:>9.1f} {r['run_s']:>8.2f} "
              f"{r['env_steps_per_s']:>12,.0f} {sweep} {q['mean_fraction_of_optimum']:>9.3f} "
              f"{q['fraction_of_histories_at_90pct']:>6.2f}")

    result = {
        "benchmark": "source_throughput", "env": args.env, "num_histories": n,
        "num_steps": args.num_steps, "sweeps_per_call": args.sweeps, "rows": rows,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
