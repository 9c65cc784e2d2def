"""The source at the matched stage of its learning (experiment 4's PPO reference).

"The same task's source at the same episode index": the source learns each held-out task
from scratch (``common.source_histories``' run, same tasks and key) keeping the network
parameters every update acted with (``source_agents.ppo.make_train(snapshots=True)``).
At a step of the model's stream in its episode ``e`` (0-based), the reference is the
policy the source acted with at the start of *its* episode ``e`` on the same task (its
last episode once ``e`` passes it), applied to the model's observation: what the source
would do there at the stage of learning the model's context has reached, counted in
episodes. Its values are log-probabilities (a stochastic agent, like Thompson sampling).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import source_agents
from experiments.study import common as C


def stage_updates(source_done: np.ndarray, rollout_len: int, done: np.ndarray) -> np.ndarray:
    """(B, T) int: for each step of streams ``done`` (B, T), the source update whose
    parameters acted at the start of the source's episode of the same index (row by row;
    ``source_done`` (B, T_src) are the source's episode ends, ``rollout_len`` its steps
    per update)."""
    source_done, done = np.asarray(source_done, bool), np.asarray(done, bool)
    B = done.shape[0]
    episode = np.cumsum(done, axis=1) - done  # model episode of each step (0-based)
    out = np.empty(done.shape, np.int64)
    for b in range(B):
        starts = np.concatenate([[0], np.flatnonzero(source_done[b]) + 1])
        starts = starts[starts < source_done.shape[1]]  # episodes the source began
        out[b] = starts[np.minimum(episode[b], len(starts) - 1)] // rollout_len
    return out


@functools.partial(jax.jit, static_argnums=0)
def _row(apply, snaps, u, o):
    """One row: step t applies snapshot ``u[t]`` to observation ``o[t]`` (compiled once per
    ``apply`` and shape)."""
    return jax.vmap(lambda ui, oi: apply(jax.tree.map(lambda x: x[ui], snaps), oi)[0])(u, o)


def matched_log_probs(apply, snapshots, updates: np.ndarray, obs) -> np.ndarray:
    """(B, T, A): ``apply(snapshots[b][updates[b, t]], obs[b, t])``'s log-probabilities;
    ``snapshots`` leaves (B, num_updates, ...), ``obs`` leaves (B, T, ...)."""
    return np.stack([np.asarray(_row(apply, jax.tree.map(lambda x: x[b], snapshots),
                                    jnp.asarray(updates[b]), jax.tree.map(lambda x: x[b], obs)))
                     for b in range(updates.shape[0])])


@functools.lru_cache(maxsize=4)
def _apply(env, config):
    return source_agents.get("ppo").make_apply(env, config)


@functools.lru_cache(maxsize=4)
def _trainer(env, config):
    """The jitted, vmapped source run with snapshots: compiled once per env, config and batch
    shape (held-out and training tasks of one process share it)."""
    return jax.jit(jax.vmap(source_agents.get("ppo").make_train(env, config, snapshots=True)))


def source_snapshots(subject: C.Subject, tasks=None):
    """The source learning ``tasks`` from scratch with the parameters of every update:
    (full history, snapshots with leaves (B, U, ...)). By default the held-out tasks: the
    run of ``common.source_histories`` (same tasks and key, so the same histories)."""
    tasks = subject.tasks if tasks is None else tasks
    setting = subject.config.setting
    if setting.source != "ppo":
        raise ValueError(f"matched stage: only for a PPO source, not {setting.source!r}")
    config = source_agents.make_config(source_agents.get("ppo"), setting.env,
                                       **setting.source_overrides)
    key = C.source_key(subject.config)
    n = jax.tree.leaves(tasks)[0].shape[0]

    def fn():
        return _trainer(subject.env, config)(jax.random.split(key, n), tasks)

    history, snaps = C.memo(subject.config, "source-snapshots", repr(config), (tasks, key), fn)
    return history, snaps, config


def matched_source(subject: C.Subject, stream, tasks=None) -> np.ndarray:
    """(B, T, A): the PPO source's log-probabilities at the matched stage on ``stream``
    (the model's streams on ``tasks``, default the held-out tasks; row b on task b)."""
    history, snaps, config = source_snapshots(subject, tasks)
    source_done = np.asarray(history.terminated) | np.asarray(history.truncated)
    updates = stage_updates(source_done, config.rollout_len, np.asarray(stream.done))
    return matched_log_probs(_apply(subject.env, config), snaps, updates, stream.obs)

