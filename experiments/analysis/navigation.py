"""Navigation in Key-to-Door: does the policy head for the cell it pursues, and when?

    python -m experiments.navigation runs/key-to-door-memory-early/ad-seed0
    python -m experiments.navigation RUN --tasks 128 --windows 768 --out results/k2d/navigation.json

At every step where a move can bring the agent closer to the cell it pursues (the key
while it is not held, then the door), the measure is the policy's probability mass on
such moves (Manhattan distance, walls respected): 1 for a shortest-path walker, about
0.4 for a uniform policy. It is reported by the number of successful episodes (key and
door) the stream has completed so far (0, 1, 2, 3-5, 6+) and by phase (key or door),
for the model in two situations:

- **teacher-forced**: the model reads windows of the histories it was distilled from
  (training tasks, the dataset's recorded actions), and its policy is scored at the
  last ``window - context`` steps of each window, which see a full band;
- **closed loop**: the model acts in context on held-out tasks, sampling its actions
  (as ``experiments.run``), and its policy is scored at every step it took.

Averages over all steps weigh long failed episodes (up to 50 wandering steps) far more
than short successful ones, so the table also gives them over *phase starts* only: an
episode's first step (key phase) and the first step after the key is picked up (door
phase), one per episode and phase.

A model that imitates well but acts badly on its own contexts shows a gap between the
two at the same number of successes: its own earlier episodes then look unlike the
data's at that stage, and it conditions on them. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from ad import evaluate as ev
from ad.dataset import load_dataset
from ad.checkpoints import load_model
from ad.inputs import episode_start_from_done
from ad.model import ADTransformer
from ad.windows import WindowSampler
from ad.utils import atomic_write_text, provenance
from envs.darkroom import MOVES

BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 5), (6, None))  # successes so far: inclusive ranges


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def closer_mask(obs: np.ndarray, target: np.ndarray, size: int) -> np.ndarray:
    """``(..., 2)`` cells and targets -> ``(..., A)`` bool: the actions whose move (walls
    stop it) ends strictly closer to ``target`` in Manhattan distance."""
    after = np.clip(obs[..., None, :] + MOVES, 0, size - 1)  # (..., A, 2)
    return (np.abs(after - target[..., None, :]).sum(-1)
            < np.abs(obs - target).sum(-1)[..., None])


def tally(mass: np.ndarray, successes: np.ndarray, has_key: np.ndarray,
          scored: np.ndarray) -> dict:
    """Mean mass per (phase, bucket of successes so far) over the ``scored`` steps."""
    out = {}
    for phase, held in (("key", False), ("door", True)):
        rows = {}
        for lo, hi in BUCKETS:
            sel = scored & (has_key == held) & (successes >= lo)
            if hi is not None:
                sel &= successes <= hi
            n = int(sel.sum())
            rows[bucket_name(lo, hi)] = {"mass": float(mass[sel].mean()) if n else None,
                                         "steps": n}
        out[phase] = rows
    return out


def running_episode_return(reward: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
    """``(..., T)``: the reward collected in each step's episode before that step (0 at an
    episode start); float64 prefix sums, exact for the grid tasks' integer rewards."""
    reward = np.asarray(reward, np.float64)
    T = reward.shape[-1]
    total = np.concatenate([np.zeros(reward.shape[:-1] + (1,)), np.cumsum(reward, -1)[..., :-1]],
                           axis=-1)  # reward before step t, over the whole stream
    last = np.maximum.accumulate(np.where(episode_start, np.arange(T), 0), axis=-1)
    return total - np.take_along_axis(total, last, axis=-1)


def stream_counts(reward: np.ndarray, done: np.ndarray):
    """Per step of ``(N, S)`` streams: successes (episodes paying 2) completed before it,
    whether the key is held when it is taken (reward so far in its episode >= 1), and
    whether it is the first step of its phase (an episode's first step, or the first
    step after the key was picked up)."""
    start = episode_start_from_done(done)
    so_far = running_episode_return(reward, start)
    success_end = done & (so_far + reward >= 2)
    before = np.cumsum(success_end, axis=1) - success_end
    has_key = so_far >= 1
    got_key = np.concatenate([np.zeros((len(done), 1), bool), has_key[:, 1:] & ~has_key[:, :-1]
                              & ~start[:, 1:]], axis=1)
    return before, has_key, start | got_key


def teacher_forced(model, windows: int, batch: int = 64, seed: int = 123) -> dict:
    cfg = model.config
    dataset = load_dataset(model.dataset)
    T = cfg.training_window()
    if dataset.num_steps < T:
        raise ValueError(f"{model.dataset}: histories of {dataset.num_steps} steps are shorter "
                         f"than the {T}-step training windows this tool reads")
    sampler = WindowSampler(dataset, cfg, T, batch, seed)
    policy = jax.jit(lambda p, x: jax.nn.softmax(
        ADTransformer(cfg).apply({"params": p}, x, train=False)))
    done = dataset.step_table("terminated") | dataset.step_table("truncated")
    successes, has_key, phase_start = stream_counts(dataset.step_table("reward"), done)
    params = dataset.task_params()
    key_cell, door_cell = np.asarray(params.key_cell), np.asarray(params.door_cell)
    size = cfg.obs_num_values
    masses, succ, held, scored, first = [], [], [], [], []
    for step in range((windows + batch - 1) // batch):
        history, start = sampler.indices(step)
        b = sampler.batch(step)
        pi = np.asarray(policy(model.params, b.inputs))[:, cfg.context:]
        t = start[:, None] + np.arange(cfg.context, T)[None]
        h = history[:, None]
        hk = has_key[h, t]
        target = np.where(hk[..., None], door_cell[history][:, None], key_cell[history][:, None])
        closer = closer_mask(np.asarray(b.inputs.obs)[:, cfg.context:], target, size)
        masses.append((pi * closer).sum(-1))
        succ.append(successes[h, t])
        held.append(hk)
        scored.append(closer.any(-1))
        first.append(phase_start[h, t])
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    mass, succ, held, scored, first = map(cat, (masses, succ, held, scored, first))
    return {"all_steps": tally(mass, succ, held, scored),
            "phase_start": tally(mass, succ, held, scored & first)}


def closed_loop(model, tasks: int, episodes: int, seed: int = 1) -> dict:
    env = model.env
    test = ev.eval_tasks(env, "test", tasks, jax.random.PRNGKey(seed))
    rollout = ev.ad_rollout(model.params, model.config, env, test, jax.random.PRNGKey(seed + 1),
                            episodes * env.horizon, record_policy=True)
    obs, pi, reward, done = (np.asarray(x) for x in (rollout.obs, rollout.policy,
                                                      rollout.reward, rollout.done))
    successes, has_key, first = stream_counts(reward, done)
    target = np.where(has_key[..., None], np.asarray(test.door_cell)[:, None],
                      np.asarray(test.key_cell)[:, None])
    closer = closer_mask(obs, target, env.size)
    mass, scored = (pi * closer).sum(-1), closer.any(-1)
    return {"all_steps": tally(mass, successes, has_key, scored),
            "phase_start": tally(mass, successes, has_key, scored & first)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m experiments.navigation",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="a trained Key-to-Door model (run directory or its model/)")
    p.add_argument("--tasks", type=int, default=128, help="held-out tasks for the closed loop")
    p.add_argument("--episodes", type=int, default=100,
                   help="closed-loop length, in episodes of the env's horizon")
    p.add_argument("--windows", type=int, default=768,
                   help="training windows read teacher-forced")
    p.add_argument("--out", default=None,
                   help="JSON path (default: navigation.json in the run directory)")
    args = p.parse_args(argv)
    model = load_model(args.run)
    if model.env_name != "key-to-door":
        raise ValueError(f"{args.run}: a {model.env_name!r} model; this tool measures Key-to-Door")
    if not model.dataset:
        raise ValueError(f"{args.run}: the model does not record its dataset")
    result = {"teacher_forced": teacher_forced(model, args.windows),
              "closed_loop": closed_loop(model, args.tasks, args.episodes),
              "run": str(args.run), "tasks": args.tasks, "episodes": args.episodes,
              "windows": args.windows, **provenance()}
    print("policy mass on moves towards the pursued cell, by successes so far")
    print(f"{'phase':6} {'successes':>9} {'teacher-forced':>15} {'closed loop':>12}"
          f" {'(phase starts only)':>22}")
    for phase in ("key", "door"):
        for name in result["closed_loop"]["all_steps"][phase]:
            cells = []
            for scope in ("all_steps", "phase_start"):
                for mode in ("teacher_forced", "closed_loop"):
                    row = result[mode][scope][phase][name]
                    cells.append("-" if row["mass"] is None else f"{row['mass']:.3f}")
            print(f"{phase:6} {name:>9} {cells[0]:>15} {cells[1]:>12} {cells[2]:>11}"
                  f" {cells[3]:>10}")
    out = Path(args.out) if args.out else model.run_dir / "navigation.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
