"""Steps per second of the JAX MiniGrid ports against the ``minigrid`` package.

Each measured configuration steps ``num_envs`` environments with uniformly random
actions for ``--steps`` steps:

- port: ``jit(scan(vmap(env.step)))`` with auto-reset, one layout per env drawn from
  the train split; compile time is excluded (one warm-up call), then the best of
  ``--repeats`` timed calls is reported. Each step's observations (and the final
  observations) and rewards are reduced into a checksum, so the work a learner needs
  is really done (otherwise XLA drops the unused rendering).
- minigrid: the raw ``minigrid`` env (no gymnasium wrappers) stepped in a Python loop in
  this one process, resetting when an episode ends. Stepping N envs in one process is N
  times the work of one, so its steps/s does not depend on N and is measured once per
  env and quoted for every N.
- navix (optional, only if ``import navix`` works): ``jit(scan(vmap(env.step)))`` of
  NAVIX's own env of the same name (its 7x7 symbolic first-person observation, which
  is centred on the agent and has no occlusion, so it does less work than minigrid's
  view), measured like the port. NAVIX is not a dependency of this project.

    python benchmarks/minigrid_throughput.py                    # table + JSON on stdout
    python benchmarks/minigrid_throughput.py --out results.json --num-envs 1 1024 4096

The JSON records the config, package versions, device, CPU count and git commit.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs.minigrid import MINIGRID_ENVS
from envs.minigrid.layouts import make_minigrid_env

NAVIX_IDS = {"minigrid-empty-8x8": "Navix-Empty-8x8-v0", "minigrid-doorkey-8x8": "Navix-DoorKey-8x8-v0"}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    envs: tuple[str, ...] = ("minigrid-empty-8x8", "minigrid-doorkey-8x8")  # ported env names
    num_envs: tuple[int, ...] = (1, 1024, 4096)  # batch sizes for the JAX implementations
    steps: int = 200  # scan length of one timed JAX call
    repeats: int = 3  # timed JAX calls per configuration (best is reported)
    minigrid_seconds: float = 3.0  # wall time spent stepping the minigrid package
    seed: int = 0  # PRNG seed for layouts and actions
    navix: bool = True  # also time NAVIX when it imports


def _checksum(*trees) -> jax.Array:
    leaves = jax.tree.leaves(trees)
    return sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves)


def _time_jax(fn: Callable, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def port_steps_per_second(name: str, num_envs: int, cfg: BenchConfig) -> float:
    env = MINIGRID_ENVS[name]()
    key = jax.random.key(cfg.seed)
    tasks = env.tasks("train")
    index = jax.random.randint(key, (num_envs,), 0, tasks.seed.shape[0])
    params = jax.tree.map(lambda leaf: leaf[index], tasks)
    _, state = jax.vmap(env.reset)(jax.random.split(key, num_envs), params)

    @jax.jit
    def run(key, state):
        def body(state, t):
            k_act, k_step = jax.random.split(jax.random.fold_in(key, t))
            actions = jax.random.randint(k_act, (num_envs,), 0, env.num_actions)
            keys = jax.random.split(k_step, num_envs)
            obs, state, reward, _, _, info = jax.vmap(env.step)(keys, state, actions, params)
            # consume every output a learner reads, so XLA cannot skip rendering them
            return state, _checksum(obs, info["final_obs"], reward)

        return jax.lax.scan(body, state, jnp.arange(cfg.steps))

    seconds = _time_jax(run, key, state, repeats=cfg.repeats)
    return num_envs * cfg.steps / seconds


def minigrid_steps_per_second(name: str, cfg: BenchConfig) -> float:
    cls = MINIGRID_ENVS[name]
    raw = make_minigrid_env(cls.gym_id, dict(cls.gym_kwargs))
    rng = np.random.default_rng(cfg.seed)
    raw.reset(seed=cfg.seed)
    actions = rng.integers(0, 7, size=100_000)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < cfg.minigrid_seconds:
        for a in actions[steps % 99_000 : steps % 99_000 + 1000]:
            _, _, terminated, truncated, _ = raw.step(int(a))
            if terminated or truncated:
                raw.reset()
        steps += 1000
    return steps / (time.perf_counter() - t0)


def navix_steps_per_second(name: str, num_envs: int, cfg: BenchConfig) -> float | None:
    try:
        import navix as nx
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    # NAVIX's closest observation: a 7x7x3 symbolic egocentric crop (centred on the
    # agent, no occlusion), with minigrid's time limit.
    horizon = MINIGRID_ENVS[name]().horizon
    env = nx.make(
        NAVIX_IDS[name], max_steps=horizon, observation_fn=nx.observations.symbolic_first_person
    )
    key = jax.random.key(cfg.seed)
    timestep = jax.vmap(env.reset)(jax.random.split(key, num_envs))

    @jax.jit
    def run(key, timestep):
        def body(timestep, t):
            actions = jax.random.randint(jax.random.fold_in(key, t), (num_envs,), 0, 7)
            timestep = jax.vmap(env.step)(timestep, actions)
            return timestep, _checksum(timestep.observation, timestep.reward)

        return jax.lax.scan(body, timestep, jnp.arange(cfg.steps))

    seconds = _time_jax(run, key, timestep, repeats=cfg.repeats)
    return num_envs * cfg.steps / seconds


def _versions() -> dict:
    out = {"python": platform.python_version(), "jax": jax.__version__}
    for pkg in ("minigrid", "gymnasium", "numpy", "navix"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)), text=True
        ).strip()
    except Exception:  # noqa: BLE001
        return None


def run_benchmark(cfg: BenchConfig) -> dict:
    rows = []
    for name in cfg.envs:
        if name not in MINIGRID_ENVS:
            raise ValueError(f"--envs: unknown env {name!r}; choose from {sorted(MINIGRID_ENVS)}")
        mg = minigrid_steps_per_second(name, cfg)
        for n in cfg.num_envs:
            port = port_steps_per_second(name, n, cfg)
            nav = navix_steps_per_second(name, n, cfg) if cfg.navix else None
            rows.append({
                "env": name, "num_envs": n, "port_sps": port, "minigrid_sps": mg,
                "navix_sps": nav, "port_over_minigrid": port / mg,
                "port_over_navix": None if nav is None else port / nav,
            })
            print(f"  {name} n={n}: port {port:,.0f}/s  minigrid {mg:,.0f}/s"
                  + ("" if nav is None else f"  navix {nav:,.0f}/s"), file=sys.stderr, flush=True)
    return {
        "config": dataclasses.asdict(cfg),
        "results": rows,
        "versions": _versions(),
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
    }


def format_table(result: dict) -> str:
    head = f"{'env':<22}{'envs':>6}{'port steps/s':>15}{'minigrid':>11}{'x minigrid':>12}{'navix':>13}{'x navix':>9}"
    lines = [head, "-" * len(head)]
    for r in result["results"]:
        nav = "-" if r["navix_sps"] is None else f"{r['navix_sps']:,.0f}"
        xnav = "-" if r["port_over_navix"] is None else f"{r['port_over_navix']:.2f}"
        lines.append(
            f"{r['env']:<22}{r['num_envs']:>6}{r['port_sps']:>15,.0f}{r['minigrid_sps']:>11,.0f}"
            f"{r['port_over_minigrid']:>12,.1f}{nav:>13}{xnav:>9}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = BenchConfig()
    parser.add_argument("--envs", nargs="+", default=list(d.envs), help="ported env names")
    parser.add_argument("--num-envs", nargs="+", type=int, default=list(d.num_envs),
                        help="batch sizes for the JAX implementations")
    parser.add_argument("--steps", type=int, default=d.steps, help="scan length of a timed call")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed calls (best kept)")
    parser.add_argument("--minigrid-seconds", type=float, default=d.minigrid_seconds,
                        help="seconds spent timing the minigrid package per env")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-navix", action="store_true", help="skip NAVIX even if installed")
    parser.add_argument("--out", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    for field in ("steps", "repeats"):
        if getattr(args, field) < 1:
            raise ValueError(f"--{field} must be >= 1, got {getattr(args, field)}")
    if any(n < 1 for n in args.num_envs):
        raise ValueError(f"--num-envs must all be >= 1, got {args.num_envs}")
    cfg = BenchConfig(
        envs=tuple(args.envs), num_envs=tuple(args.num_envs), steps=args.steps,
        repeats=args.repeats, minigrid_seconds=args.minigrid_seconds, seed=args.seed,
        navix=not args.no_navix,
    )
    result = run_benchmark(cfg)
    print(format_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
