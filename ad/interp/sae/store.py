"""Activation stores: a trained model's activations in closed-loop in-context rollouts, with
what was true at every position, in the project's dataset format.

``write_store(out, StoreConfig(...))`` runs the model in context (``ad.evaluate.
ad_rollout(..., record=hooks)``, the rollouts every evaluation uses) on tasks of one split
and writes each rollout as one history of an ``ad.dataset`` dataset, so the dataset's
guarantees hold unchanged: shards written atomically, checksums, ``meta.json`` last,
validation on load, and resume — re-running the same command after a kill keeps the
finished shards and writes only the missing ones. History ``i`` draws its randomness from
``fold_in(key(seed), i)`` alone, so a resumed or re-sharded store holds the same values.

A history's ``obs`` pytree carries three groups (file stems ``obs.<group>.<name>``):

* ``env`` — the observation the model saw (what ``obs`` holds in a source's history);
* ``act.<hook>`` — ``(T, *hook shape)`` float32: the hook's decode-step value at each step
  (the token that predicts ``action[t]``; one token per step for these models);
* ``meta.<name>`` — per-position ground truth (``position_meta``): episode index, step in
  episode, previous action and reward, the policy the action was sampled from, and the
  env's task and belief variables — bandits: pulls and reward sums of each arm so far,
  empirical and Beta(1, 1) posterior means, the UCB1 index and the arm UCB1 would pull
  (the source's rule), the best arm; Dark Room: goal found yet, at the goal, distance to
  the goal, distinct cells visited so far, the goal cell.

``action``, ``reward``, ``terminated``/``truncated`` and the task ``params`` are the
dataset's ordinary fields. ``ActivationStore`` reads one back (validated) as flat
``(positions, ...)`` arrays for training SAEs and labelling features.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ad import evaluate as ev
from ad.dataset import DatasetSpec, DatasetWriter, load_dataset
from ad.hooks import hook_axes
from source_agents.history import LearningHistory

PyTree = Any
SOURCE = "ad-activation-store"  # the DatasetSpec.source of every store


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """What one activation store holds."""

    run: str
    """the trained model's run directory (``ad.checkpoints.load_model``)"""
    hooks: tuple[str, ...] = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    """hook names recorded at every step (per-position hooks only)"""
    split: str = "train"
    """task split: "train" (SAE training data) or "test" (held-out: every metric)"""
    num_tasks: int = 64
    """tasks (finite task sets: at most the whole split, which is then used entire)"""
    rollouts_per_task: int = 4
    """independent in-context rollouts per task (one history each)"""
    num_steps: int = 100
    """steps per rollout (bandit: pulls; Dark Room: 20 per episode)"""
    seed: int = 0
    """history i uses fold_in(key(seed), i); the task draw uses key(seed)"""
    temperature: float = 1.0
    """sampling temperature of the policy (1: the policy itself)"""

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(f"StoreConfig.split must be 'train' or 'test', got {self.split!r}")
        for name in self.hooks:
            axes = hook_axes(name)  # unknown names raise here, naming the valid ones
            if axes[1] not in ("pos", "step") or len(axes) != 3:
                raise ValueError(f"StoreConfig.hooks: {name!r} has axes {axes}; a store "
                                 "records per-position vectors (batch, pos, features)")
        for field in ("num_tasks", "rollouts_per_task", "num_steps"):
            if getattr(self, field) < 1:
                raise ValueError(f"StoreConfig.{field} must be >= 1, got {getattr(self, field)}")


# ----------------------------------------------------------------------------------------
# Ground truth at each position
# ----------------------------------------------------------------------------------------
def _prev(x: np.ndarray, fill) -> np.ndarray:
    """x[:, t - 1] at t (``fill`` at t = 0)."""
    out = np.empty_like(x)
    out[:, 0] = fill
    out[:, 1:] = x[:, :-1]
    return out


def _before(x: np.ndarray) -> np.ndarray:
    """Running sum over steps strictly before t (axis 1)."""
    c = np.cumsum(x, axis=1)
    return c - x


def position_meta(obs: np.ndarray, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
                  params: PyTree, num_actions: int) -> dict[str, np.ndarray]:
    """Per-position ground truth of ``n`` streams (``(n, T)`` arrays; ``params`` leaves
    ``(n, ...)``): everything true *when the model chose* ``action[t]`` (so belief
    quantities count the steps before ``t`` only). Bandits are recognised by ``means``,
    the Dark Room family by ``goal``; other envs get the generic fields."""
    action, reward, done = (np.asarray(action, np.int32), np.asarray(reward, np.float32),
                            np.asarray(done, bool))
    n, T = action.shape
    episode = (np.cumsum(done, 1) - done).astype(np.int32)
    starts = np.concatenate([np.ones((n, 1), bool), done[:, :-1]], 1)
    t = np.broadcast_to(np.arange(T), (n, T))
    step = (t - np.maximum.accumulate(np.where(starts, t, 0), axis=1)).astype(np.int32)
    meta = {"episode": episode, "step_in_episode": step,
            "prev_action": _prev(action, num_actions),  # num_actions = "none" (stream start)
            "prev_reward": _prev(reward, 0.0)}
    if hasattr(params, "means"):
        means = np.asarray(params.means, np.float32)  # (n, A)
        pulled = np.eye(num_actions, dtype=np.float32)[action]  # (n, T, A)
        counts = _before(pulled)
        sums = _before(pulled * reward[..., None])
        emp = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        pulls = np.maximum(t, 1)[..., None].astype(np.float32)
        # UCB1 (the bandit source): untried arms first (lowest index), else argmax index
        bonus = np.sqrt(2.0 * np.log(pulls) / np.maximum(counts, 1))
        ucb = np.where(counts > 0, emp + bonus, np.inf)
        meta.update({
            "arm_counts": counts.astype(np.float32), "arm_reward_sums": sums.astype(np.float32),
            "arm_emp_means": emp.astype(np.float32),
            "arm_post_means": ((sums + 1.0) / (counts + 2.0)).astype(np.float32),
            "arm_ucb": np.where(np.isinf(ucb), 1e3, ucb).astype(np.float32),
            "ucb1_arm": np.argmax(ucb, -1).astype(np.int32),
            "greedy_arm": np.argmax(np.where(counts > 0, emp, -1.0), -1).astype(np.int32),
            "best_arm": np.broadcast_to(np.argmax(means, -1)[:, None], (n, T)).astype(np.int32),
        })
    if hasattr(params, "goal"):
        goal = np.asarray(params.goal, np.int32)[:, None, :]  # (n, 1, 2)
        cell = np.asarray(obs, np.int32)  # (n, T, 2)
        size = int(max(cell.max(), goal.max())) + 1
        cell_id = cell[..., 0] * size + cell[..., 1]
        first_visit = np.zeros((n, T), bool)
        for b in range(n):  # host-side bookkeeping, O(n T)
            _, idx = np.unique(cell_id[b], return_index=True)
            first_visit[b, idx] = True
        meta.update({
            "goal_found": (_before(reward > 0) > 0),
            "at_goal": np.all(cell == goal, -1),
            "goal_distance": np.abs(cell - goal).sum(-1).astype(np.int32),
            "cells_visited": _before(first_visit).astype(np.int32),  # distinct, before t
            "goal_x": np.broadcast_to(goal[..., 0], (n, T)).astype(np.int32),
            "goal_y": np.broadcast_to(goal[..., 1], (n, T)).astype(np.int32),
        })
    return {k: np.ascontiguousarray(v) for k, v in meta.items()}


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------
def store_spec(cfg: StoreConfig, model, num_histories: int) -> DatasetSpec:
    from ad.checkpoints import model_files_digest

    env = model.env
    return DatasetSpec(
        env=model.env_name, env_overrides=dict(model.env_overrides),
        env_config=dataclasses.asdict(env), split=cfg.split, source=SOURCE,
        source_config={**dataclasses.asdict(cfg), "run": str(Path(cfg.run).resolve()),
                       "model_digest": model_files_digest(cfg.run),
                       "model_config": dataclasses.asdict(model.config)},
        num_histories=num_histories, seed=cfg.seed,
        extra={"kind": "activation-store", "hooks": list(cfg.hooks)})


def store_tasks(cfg: StoreConfig, env) -> PyTree:
    """The store's tasks, each repeated ``rollouts_per_task`` times (history order)."""
    tasks = ev.eval_tasks(env, cfg.split, cfg.num_tasks, jax.random.key(cfg.seed))
    return ev.repeat_tasks(tasks, cfg.rollouts_per_task)


def rollout_histories(model, cfg: StoreConfig, tasks: PyTree, first: int):
    """Rollouts of histories ``first, first + 1, ...`` (one per row of ``tasks``), each
    with its own key, so a history's values do not depend on the shard it is written in.
    Returns a ``LearningHistory`` whose ``obs`` carries the env obs, the activations and
    the ground truth (module docstring)."""
    n = jax.tree.leaves(tasks)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(
        jnp.arange(first, first + n))
    ro = _vmapped_rollout(model.params, model.config, model.env, tasks, keys,
                          cfg.num_steps, cfg.temperature, tuple(cfg.hooks))
    ro = jax.device_get(ro)
    obs = np.asarray(ro.obs)
    done = np.asarray(ro.done)
    meta = position_meta(obs, ro.action, ro.reward, done, jax.device_get(tasks),
                         model.config.num_actions)
    meta["policy"] = np.asarray(ro.policy, np.float32)
    acts = {name: np.asarray(v, np.float32).reshape(n, cfg.num_steps, -1)
            for name, v in ro.activations.items()}
    return LearningHistory(obs={"env": obs, "act": acts, "meta": meta},
                           action=np.asarray(ro.action), reward=np.asarray(ro.reward),
                           terminated=done, truncated=np.zeros_like(done))


def _vmapped_rollout(params, config, env, tasks, keys, num_steps, temperature, hooks):
    ro = _rollout_fn(config, env, num_steps, temperature, hooks)(params, tasks, keys)
    return jax.tree.map(lambda x: x[:, 0], ro)


@functools.lru_cache(maxsize=8)
def _rollout_fn(config, env, num_steps, temperature, hooks):
    """One compiled rollout per (model shape, env, length, hooks), reused by every shard
    (a fresh ``jit`` per call would retrace and recompile for each shard)."""
    def one(params, task, key):  # a batch of one task per key: each history its own key
        return ev.ad_rollout(params, config, env, jax.tree.map(lambda x: x[None], task), key,
                             num_steps, temperature, record_policy=True, record=hooks)
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def write_store(out: str | Path, cfg: StoreConfig, *, model=None, shard_size: int = 64,
                progress: bool = True):
    """Write (or resume) the store at ``out``; returns the finished ``ActivationStore``."""
    from tqdm.auto import tqdm

    from ad.checkpoints import load_model

    model = model or load_model(cfg.run)
    tasks = store_tasks(cfg, model.env)
    n = jax.tree.leaves(tasks)[0].shape[0]
    with DatasetWriter(out, store_spec(cfg, model, n)) as writer:
        pending = writer.pending(shard_size)
        bar = tqdm(total=n, initial=writer.num_completed, disable=not progress,
                   desc=f"store {Path(out).name}", unit="rollout")
        for start, stop in pending:
            sub = jax.tree.map(lambda x: x[start:stop], tasks)
            writer.write_shard(start, rollout_histories(model, cfg, sub, start), sub)
            bar.update(stop - start)
        bar.close()
        writer.finalize()
    return ActivationStore(out)


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------
class ActivationStore:
    """A finished store, validated on open (``verify`` also checks every checksum)."""

    def __init__(self, path: str | Path, verify: bool = False):
        self.dataset = load_dataset(path, verify=verify)
        if self.dataset.spec.source != SOURCE:
            raise ValueError(f"{path}: not an activation store (source "
                             f"{self.dataset.spec.source!r}, expected {SOURCE!r})")
        self.path = Path(path)
        self.hooks: list[str] = list(self.dataset.spec.extra["hooks"])
        self.num_histories = self.dataset.num_histories
        self.num_steps = self.dataset.num_steps
        self.config = self.dataset.spec.source_config

    def _read(self, stem: str) -> np.ndarray:
        if stem not in self.dataset._leaves:
            raise KeyError(f"{self.path}: no leaf {stem!r}; stored: "
                           f"{sorted(self.dataset.names('obs'))}")
        return self.dataset._gather_rows(stem, np.arange(self.num_histories))

    def activations(self, hook: str) -> np.ndarray:
        """(histories, T, d) float32."""
        if hook not in self.hooks:
            raise KeyError(f"{self.path}: hook {hook!r} not stored; stored: {self.hooks}")
        return self._read(f"obs.act.{hook}")

    def meta(self, name: str) -> np.ndarray:
        """(histories, T, ...) ground truth ``name`` (``position_meta``; ``policy``)."""
        return self._read(f"obs.meta.{name}")

    @property
    def meta_names(self) -> list[str]:
        return [n[len("obs.meta."):] for n in self.dataset.names("obs.meta")]

    def obs(self) -> np.ndarray:
        return self._read("obs.env")

    def step(self, field: str) -> np.ndarray:
        """(histories, T): ``action``, ``reward``, ``terminated`` or ``truncated``."""
        return self.dataset.step_table(field)

    def task_params(self) -> PyTree:
        return self.dataset.task_params()

    def task_ids(self) -> np.ndarray:
        """(histories,) int: the task of each history (rollouts of one task share it)."""
        return np.arange(self.num_histories) // int(self.config["rollouts_per_task"])

    def stream(self):
        """The lived streams as an ``ad.interp.streams.Stream`` (teacher-forced replays)."""
        from ad.interp.streams import Stream

        return Stream(obs=self.obs(), action=self.step("action"), reward=self.step("reward"),
                      done=self.step("terminated") | self.step("truncated"))
