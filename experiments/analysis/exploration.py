"""How often does a goal-blind policy find the hidden goal of a dark MiniGrid layout?

    python -m experiments.exploration                        # dark FourRooms, 256 held-out layouts
    python -m experiments.exploration --layouts 756 --episodes 50 --out results/exploration.json

An in-context learner on dark FourRooms must first find a goal it cannot see; until then
it can only explore. This measures, on held-out layouts, the fraction of layouts in which
a memoryless policy has reached the goal at least once within the first k episodes
(MiniGrid ends an episode at the goal, so an episode with a positive return found it):
uniform actions over all 7 (the noise of plain noise distillation), uniform over the 3
moves, and ``env.explore_action`` (a persistent random walk from the view; the noise of
``noise="explore"``) at several turn probabilities. The fraction within k episodes bounds
what "explore like this, then go back to the goal" can earn by episode k.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

import envs
from ad import evaluate as ev
from ad.utils import atomic_write_text, provenance


@dataclasses.dataclass(frozen=True)
class ExplorePolicy:
    """``env.explore_action`` for a batch of ``n`` streams (hashable: a static jit arg)."""
    env: object
    n: int
    turn_prob: float

    def __call__(self, key, obs):
        keys = jax.random.split(key, self.n)
        return jax.vmap(lambda k, o: self.env.explore_action(k, o, self.turn_prob))(keys, obs)


def found_within(curve: np.ndarray, ks) -> dict[int, float]:
    """Fraction of rows whose first positive-return episode is among the first k."""
    hit = np.asarray(curve) > 0
    return {int(k): float(hit[:, :k].any(axis=1).mean()) for k in ks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.exploration",
                                description=__doc__.split("\n")[0])
    p.add_argument("--env", default="minigrid-fourrooms-dark", help="a dark MiniGrid env")
    p.add_argument("--num-layouts", type=int, default=4096,
                   help="size of the layout bank (the fourrooms-dark settings use 4,096)")
    p.add_argument("--layouts", type=int, default=256, help="held-out layouts measured")
    p.add_argument("--episodes", type=int, default=50, help="episodes per layout")
    p.add_argument("--turn-probs", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.3],
                   help="turn probabilities of the explorer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    env = envs.make(args.env, num_layouts=args.num_layouts)
    if not hasattr(env, "explore_action"):
        p.error(f"--env {args.env}: has no explore_action (a MiniGrid env is needed)")
    tasks = env.tasks("test")
    n = min(args.layouts, int(jax.tree.leaves(tasks)[0].shape[0]))
    tasks = jax.tree.map(lambda x: x[:n], tasks)
    num_steps = args.episodes * env.max_episode_steps  # at least that many episodes end
    policies = {"uniform, 7 actions": ev.UniformPolicy(n, env.num_actions),
                "uniform, 3 moves": ev.UniformPolicy(n, 3)}
    policies.update({f"explore, turn_prob {q:g}": ExplorePolicy(env, n, q)
                     for q in args.turn_probs})
    ks = sorted({k for k in (1, 5, 10, 20, 50, args.episodes) if k <= args.episodes})
    print(f"{args.env}: {n} held-out layouts, fraction that found the goal within k episodes")
    print(f"{'policy':28s}" + "".join(f"{'k=' + str(k):>8s}" for k in ks))
    rows = {}
    for name, policy in policies.items():
        rollout = ev.policy_rollout(env, tasks, jax.random.key(args.seed), num_steps, policy)
        rows[name] = found_within(ev.episode_curve(rollout, args.episodes), ks)
        print(f"{name:28s}" + "".join(f"{rows[name][k]:8.2f}" for k in ks))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(
            {"args": vars(args), "layouts": n, "found_within": rows, **provenance()}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
