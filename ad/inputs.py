"""What the model reads at each step, built in one place from a stream of steps.

A stream is what a learner lived, step by step: ``obs[t], action[t], reward[t],
done[t]`` (``done`` = terminated or truncated). The model predicts ``action[t]`` from
``obs[t]`` and what it knows of the step before (DESIGN.md): ``Previous`` holds that
record — ``action[t-1]``, ``reward[t-1]``, ``done[t-1]`` and ``obs[t-1]`` — with the
"none" action (``num_actions``), reward 0, done True and a zero observation at the first
step of a stream. ``build_inputs(obs, prev, config)`` turns it into the model's
``StepInputs``; it is the only function that decides which inputs a model gets, and
every consumer calls it: the training window sampler (``ad.windows``), the in-context
rollouts (``ad.evaluate.ad_rollout``, prompting included, and ``gym_rollout``) and the
analysis tools (``stream_inputs`` for teacher-forced replays of whole streams).

Adding a model input therefore touches three files: a flag in ``ad/config.py``, its
``StepInputs`` field and one line of ``build_inputs`` here (plus a ``Previous`` field
if it needs more of the previous step), and its embedding in ``ad/model.py``.

Arrays may be NumPy (the sampler, on the host) or JAX (rollouts, traced); the builder
keeps the kind it is given.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad.config import ModelConfig

PyTree = Any


class StepInputs(NamedTuple):
    """What the model sees at each step of a window (leading dims (B, T))."""

    obs: PyTree  # leaves (B, T, *obs_shape), int32
    prev_action: jax.Array  # (B, T) int32: action[t-1]; num_actions = "none" (stream start)
    prev_reward: jax.Array  # (B, T) float32: reward[t-1]; 0 at a stream start
    # (B, T) bool: step t starts an episode (done[t-1]; True at a stream start). Only for
    # models with episode_start_token; None otherwise.
    episode_start: jax.Array | None = None
    # leaves (B, T, *obs_shape): obs[t-1] (zeros at a stream start, where the model ignores
    # it). Only for models with prev_obs_token; None otherwise.
    prev_obs: PyTree | None = None


class Previous(NamedTuple):
    """The step before each position of a stream (leading dims shared with ``obs``)."""

    action: Any  # int32: action[t-1]; num_actions ("none") at a stream start
    reward: Any  # float32: reward[t-1]; 0 at a stream start
    done: Any  # bool: done[t-1]; True at a stream start (a stream starts an episode)
    obs: PyTree  # obs[t-1]; zeros at a stream start


def _xp(*arrays):
    """NumPy for host arrays, jax.numpy otherwise (traced or device arrays)."""
    leaves = jax.tree.leaves(arrays)
    return np if all(isinstance(x, (np.ndarray, np.generic, int, float, bool))
                     for x in leaves) else jnp


def build_inputs(obs: PyTree, prev: Previous, config: ModelConfig) -> StepInputs:
    """The model's inputs at each step from ``obs[t]`` and the previous step's record."""
    xp = _xp(obs, prev)
    return StepInputs(
        obs=jax.tree.map(lambda o: xp.asarray(o).astype(xp.int32), obs),
        prev_action=xp.asarray(prev.action).astype(xp.int32),
        prev_reward=xp.asarray(prev.reward).astype(xp.float32),
        episode_start=xp.asarray(prev.done).astype(bool) if config.episode_start_token else None,
        prev_obs=(jax.tree.map(lambda o: xp.asarray(o).astype(xp.int32), prev.obs)
                  if config.prev_obs_token else None))


def one_step_inputs(obs: PyTree, prev: Previous, config: ModelConfig) -> StepInputs:
    """``build_inputs`` for one step of N streams (leaves (N, ...)) as a T = 1 window, the
    form the KV-cache decode step takes (rollouts)."""
    add_t = lambda x: jax.tree.map(lambda v: v[:, None], x)  # noqa: E731
    return build_inputs(add_t(obs), Previous(*(add_t(x) for x in prev)), config)


def stream_start(batch_shape: tuple[int, ...], obs_like: PyTree, num_actions: int,
                 xp=jnp) -> Previous:
    """The record every stream starts from: "none" action, reward 0, done, zero obs.

    ``obs_like``: leaves ``(*batch_shape, *obs_shape)`` (their values are not read)."""
    return Previous(action=xp.full(batch_shape, num_actions, xp.int32),
                    reward=xp.zeros(batch_shape, xp.float32),
                    done=xp.ones(batch_shape, bool),
                    obs=jax.tree.map(lambda o: xp.zeros(o.shape, xp.int32), obs_like))


def after_step(action, reward, done, obs) -> Previous:
    """The record the next step reads, once a step has been taken (rollouts)."""
    xp = _xp(action, reward, done, obs)
    return Previous(action=xp.asarray(action).astype(xp.int32),
                    reward=xp.asarray(reward).astype(xp.float32),
                    done=xp.asarray(done).astype(bool),
                    obs=jax.tree.map(lambda o: xp.asarray(o).astype(xp.int32), obs))


def shift_stream(obs: PyTree, action, reward, done, num_actions: int,
                 before: Previous | None = None, starts=None) -> Previous:
    """``Previous`` aligned to every step of windows of a stream (leading dims (..., T)).

    ``prev[t]`` is step ``t-1`` of the window; for the window's first step it is
    ``before`` (the step just before the window, leading dims (...)), or the stream-start
    record where ``before`` is None or where ``starts`` ((...) bool) says the window
    starts its stream.
    """
    xp = _xp(obs, action, reward, done, before)
    action, reward, done = xp.asarray(action), xp.asarray(reward), xp.asarray(done)
    axis = action.ndim - 1  # the time axis of every array
    obs_before = jax.tree.map(lambda o: xp.take(xp.asarray(o), 0, axis=axis), obs)
    first = stream_start(action.shape[:-1], obs_before, num_actions, xp)
    if before is not None:
        keep = (xp.zeros(action.shape[:-1], bool) if starts is None
                else xp.asarray(starts, bool))

        def pick(start_value, b):
            b = xp.broadcast_to(xp.asarray(b).astype(start_value.dtype), start_value.shape)
            return xp.where(keep.reshape(keep.shape + (1,) * (b.ndim - keep.ndim)),
                            start_value, b)
        first = jax.tree.map(pick, first, before)

    def shift(x, b):
        x = xp.asarray(x)
        b = xp.expand_dims(xp.asarray(b).astype(x.dtype), axis)
        return xp.concatenate([b, xp.take(x, xp.arange(x.shape[axis] - 1), axis=axis)],
                              axis=axis)
    return Previous(action=shift(action.astype(xp.int32), first.action),
                    reward=shift(reward.astype(xp.float32), first.reward),
                    done=shift(done.astype(bool), first.done),
                    obs=jax.tree.map(lambda o, b: shift(xp.asarray(o).astype(xp.int32), b),
                                     obs, first.obs))


def stream_inputs(obs: PyTree, action, reward, done, config: ModelConfig,
                  before: Previous | None = None, starts=None) -> StepInputs:
    """Model inputs for windows of a stream: ``build_inputs`` over ``shift_stream``."""
    return build_inputs(obs, shift_stream(obs, action, reward, done, config.num_actions,
                                          before, starts), config)


def episode_start_from_done(done: np.ndarray) -> np.ndarray:
    """``(..., T)`` bool: step ``t`` starts an episode (``t = 0``, or ``done[t-1]``)."""
    done = np.asarray(done, bool)
    return np.concatenate([np.ones(done.shape[:-1] + (1,), bool), done[..., :-1]], axis=-1)


def dummy_inputs(config: ModelConfig, batch_size: int = 1, num_steps: int = 1) -> StepInputs:
    """Stream-start inputs of the right shapes and dtypes (for ``init``)."""
    B, T = batch_size, num_steps
    if config.obs_encoder == "minigrid":
        obs = {"image": jnp.zeros((B, T, *config.obs_shape), jnp.int32),
               "direction": jnp.zeros((B, T), jnp.int32)}
    else:
        obs = jnp.zeros((B, T, *config.obs_shape), jnp.int32)
    return build_inputs(obs, stream_start((B, T), obs, config.num_actions), config)
