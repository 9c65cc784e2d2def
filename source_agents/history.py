"""The learning-history record: what every source agent returns and datasets store.

A history is one recorded stream: one agent, one task, consecutive environment steps
across episodes, in the order the learner lived them. At step ``t`` the agent saw
``obs[t]``, took ``action[t]`` and the step returned ``reward[t]``, ``terminated[t]``
and ``truncated[t]``; when either flag is set, ``obs[t + 1]`` is the first observation
of the next episode of the same task (the env auto-resets).

``intended_action`` (optional, ``None`` for most sources): the action the source's own
policy chose at step ``t`` before injected noise replaced it (the memory diagnostic's
epsilon steps, ``source_agents.memory``). ``action`` is always
what was executed, so the stream stays the one the env lived; a distillation run may
take its targets from ``intended_action`` instead (``DistillConfig.targets``), so that
the model sees the perturbed contexts but learns the source's unperturbed choices.

Collected histories are batched: every leaf gains a leading axis of histories, e.g.
``action`` is ``(num_histories, num_steps)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LearningHistory(NamedTuple):
    obs: Any  # pytree, leaves (T, *obs_shape): what the agent saw before acting
    action: jax.Array  # (T,) int32
    reward: jax.Array  # (T,) float32
    terminated: jax.Array  # (T,) bool
    truncated: jax.Array  # (T,) bool
    intended_action: Any = None  # (T,) int32 or None: the source's choice before noise


def episode_returns(reward, done, max_episodes: int | None = None) -> np.ndarray:
    """Per-episode returns of one stream (host side, NumPy).

    Only completed episodes count (a trailing partial episode is dropped). With
    ``max_episodes`` the result is padded with NaN to that length, so streams with
    different episode counts (early termination) stack into one array.
    """
    reward = np.asarray(reward, np.float64)
    done = np.asarray(done, bool)
    ends = np.flatnonzero(done)
    cumsum = np.concatenate([[0.0], np.cumsum(reward)])
    returns = np.diff(cumsum[np.concatenate([[0], ends + 1])])
    if max_episodes is not None:
        out = np.full(max_episodes, np.nan)
        out[: min(len(returns), max_episodes)] = returns[:max_episodes]
        return out
    return returns


def episode_returns_jax(reward: jax.Array, done: jax.Array, num_episodes: int) -> jax.Array:
    """Per-episode returns inside jit: ``(num_episodes,)``, episodes past the end are 0.

    Episode index of step t = number of episode ends strictly before t.
    """
    episode = jnp.cumsum(done) - done.astype(jnp.int32)
    return jax.ops.segment_sum(reward, episode, num_segments=num_episodes)
