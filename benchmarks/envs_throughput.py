"""Random-policy throughput of every registered env, against the ``minigrid`` package.

    .venv/bin/python benchmarks/envs_throughput.py [--out results/envs_throughput.json]

What is measured: for each registered env and each number of parallel envs (default
1, 1,024 and 8,192), ``jit(vmap(rollout))`` where ``rollout`` is a ``lax.scan`` of
``env.step`` (auto-resetting, one task per env drawn from the train split) under a
uniformly random policy. The compiled rollout is called repeatedly, carrying the env
states across calls, until at least ``--min-seconds`` have passed; compilation and a
warm-up call are excluded and every call ends with ``block_until_ready``. Each
rollout also sums its rewards, so no step can be optimised away (the mean reward per
step is reported as a sanity check: ≈1/81 for Dark Room under a random walk).

Two ways of drawing the random actions:
- ``xorshift`` (headline): each env carries a 32-bit xorshift state (seeded from its
  JAX key) and maps its top 16 bits to ``[0, num_actions)`` with a multiply-shift: a
  few integer ops per step, so the env's own step is what is timed.
- ``threefry``: ``jax.random.randint(fold_in(key, t), ...)`` per env and step, the
  textbook JAX way; at this scale the counter-based RNG costs more than a Dark Room
  step, so this column mostly measures threefry.

The ``minigrid`` baseline is ``gymnasium.make("MiniGrid-Empty-8x8-v0")`` stepped in
one Python process with uniformly random actions (NumPy), resetting at episode ends
(resets count in the time). Prints a table and the ratio of Dark Room at the largest
number of envs to minigrid, and writes JSON with versions, platform and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import envs  # noqa: E402

POLICIES = ("xorshift", "threefry")


@dataclasses.dataclass(frozen=True)
class Config:
    num_envs: tuple[int, ...] = (1, 1024, 8192)  # parallel envs per measurement
    min_seconds: float = 1.0  # timed wall time per measurement (repeated calls)
    minigrid_id: str = "MiniGrid-Empty-8x8-v0"  # baseline env of the minigrid package
    seed: int = 0  # JAX and NumPy seed
    out: str = "results/envs_throughput.json"  # where the JSON goes



# The MiniGrid ports have their own benchmark (benchmarks/minigrid_throughput.py).
CORE_ENVS = [n for n in envs.registered() if not n.startswith("minigrid-")]

def scan_length(num_envs: int) -> int:
    """Steps per compiled call: long enough to amortise dispatch, short to compile."""
    return max(200, 200_000 // num_envs) if num_envs > 1 else 20_000


def xorshift_action(x: jax.Array, num_actions: int) -> tuple[jax.Array, jax.Array]:
    x = x ^ (x << 13)
    x = x ^ (x >> 17)
    x = x ^ (x << 5)
    return ((x >> 16) * num_actions >> 16).astype(jnp.int32), x


def make_rollout(env, policy: str, num_steps: int):
    """A pure ``(carry, params) -> (carry, reward_sum)`` scan of ``num_steps`` steps."""

    def rollout(carry, params):
        key, state, rng, t0 = carry

        def body(c, t):
            key, state, rng, total = c
            step_key = jax.random.fold_in(key, t)
            if policy == "xorshift":
                action, rng = xorshift_action(rng, env.num_actions)
            else:
                action = jax.random.randint(jax.random.fold_in(step_key, 1), (), 0, env.num_actions)
            _, state, reward, _, _, _ = env.step(step_key, state, action, params)
            return (key, state, rng, total + reward), None

        steps = t0 + jnp.arange(num_steps)
        (key, state, rng, total), _ = jax.lax.scan(body, (key, state, rng, 0.0), steps)
        return (key, state, rng, t0 + num_steps), total

    return rollout


def bench_env(name: str, num_envs: int, policy: str, cfg: Config) -> dict:
    env = envs.make(name)
    num_steps = scan_length(num_envs)
    keys = jax.random.split(jax.random.key(cfg.seed), num_envs)
    task_keys, reset_keys, run_keys = jnp.moveaxis(
        jax.vmap(lambda k: jax.random.split(k, 3))(keys), 1, 0
    )
    params = jax.jit(jax.vmap(lambda k: env.sample_params(k, "train")))(task_keys)
    _, state = jax.jit(jax.vmap(env.reset))(reset_keys, params)
    rng = jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32) | 1)(run_keys)  # nonzero
    carry = (run_keys, state, rng, jnp.zeros(num_envs, jnp.int32))
    fn = jax.jit(jax.vmap(make_rollout(env, policy, num_steps)))
    carry, total = fn(carry, params)  # compile + warm-up
    jax.block_until_ready(total)
    calls, reward, start = 0, 0.0, time.perf_counter()
    while True:
        carry, total = fn(carry, params)
        jax.block_until_ready((carry, total))
        calls += 1
        reward += float(total.sum())
        elapsed = time.perf_counter() - start
        if elapsed >= cfg.min_seconds:
            break
    steps = calls * num_steps * num_envs
    return dict(
        env=name,
        num_envs=num_envs,
        policy=policy,
        steps=steps,
        seconds=elapsed,
        steps_per_s=steps / elapsed,
        mean_reward_per_step=reward / steps,
    )


def bench_minigrid(cfg: Config) -> dict:
    import gymnasium
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids)

    env = gymnasium.make(cfg.minigrid_id)
    rng = np.random.default_rng(cfg.seed)
    env.reset(seed=cfg.seed)
    n = env.action_space.n
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            _, _, terminated, truncated, _ = env.step(int(rng.integers(n)))
            if terminated or truncated:
                env.reset()
        steps += 1000
        elapsed = time.perf_counter() - start
        if elapsed >= cfg.min_seconds:
            break
    return dict(env=cfg.minigrid_id, steps=steps, seconds=elapsed, steps_per_s=steps / elapsed)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv=None) -> Config:
    defaults = Config()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--out", default=defaults.out, help="JSON output path (default: %(default)s)")
    p.add_argument(
        "--num-envs",
        type=int,
        nargs="+",
        default=list(defaults.num_envs),
        help="numbers of parallel envs (default: %(default)s)",
    )
    p.add_argument(
        "--min-seconds",
        type=float,
        default=defaults.min_seconds,
        help="timed seconds per measurement (default: %(default)s)",
    )
    p.add_argument("--minigrid-id", default=defaults.minigrid_id, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    a = p.parse_args(argv)
    if any(n < 1 for n in a.num_envs):
        p.error(f"--num-envs must be >= 1, got {a.num_envs}")
    if a.min_seconds <= 0:
        p.error(f"--min-seconds must be > 0, got {a.min_seconds}")
    return Config(tuple(a.num_envs), a.min_seconds, a.minigrid_id, a.seed, a.out)


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    rows = []
    for name in CORE_ENVS:
        for num_envs in cfg.num_envs:
            for policy in POLICIES:
                rows.append(bench_env(name, num_envs, policy, cfg))
                r = rows[-1]
                print(
                    f"  {name:20s} {num_envs:6d} envs {policy:9s} "
                    f"{r['steps_per_s'] / 1e6:9.2f} M steps/s",
                    flush=True,
                )
    mg = bench_minigrid(cfg)

    big = max(cfg.num_envs)
    print(f"\nsteps/s (random policy), {jax.default_backend()}, {os.cpu_count()} CPU cores")
    header = f"{'env':20s} {'policy':9s}" + "".join(f"{n:>12d}" for n in cfg.num_envs)
    print(header + "   (parallel envs)")
    for name in CORE_ENVS:
        for policy in POLICIES:
            cells = [r["steps_per_s"] for r in rows if r["env"] == name and r["policy"] == policy]
            print(f"{name:20s} {policy:9s}" + "".join(f"{c:12.3g}" for c in cells))
    print(f"{cfg.minigrid_id:30s} {mg['steps_per_s']:12.3g}   (one process)")
    ratios = {}
    for policy in POLICIES:
        dr = next(
            r
            for r in rows
            if r["env"] == "darkroom" and r["num_envs"] == big and r["policy"] == policy
        )
        ratios[policy] = dr["steps_per_s"] / mg["steps_per_s"]
        print(f"Dark Room at {big} envs / minigrid ({policy} actions): {ratios[policy]:,.0f}x")

    result = dict(
        benchmark="envs_throughput",
        config=dataclasses.asdict(cfg),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        versions=dict(
            jax=jax.__version__,
            jaxlib=getattr(jax.lib, "__version__", None) or jax.__version__,
            numpy=np.__version__,
            python=platform.python_version(),
            gymnasium=__import__("gymnasium").__version__,
            minigrid=__import__("minigrid").__version__,
        ),
        platform=dict(
            backend=jax.default_backend(),
            devices=[d.device_kind for d in jax.devices()],
            machine=platform.platform(),
            cpu_count=os.cpu_count(),
        ),
        git_commit=git_commit(),
        results=rows,
        minigrid=mg,
        darkroom_over_minigrid=dict(num_envs=big, **ratios),
    )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
