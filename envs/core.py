"""The environment contract shared by every task distribution in this package.

An environment is a frozen dataclass of *static* configuration (grid size, horizon,
number of arms: anything that fixes array shapes) plus pure functions of explicit
keys, states and task parameters. The task itself (goal cell, arm means, ...) is an
``EnvParams`` pytree, so ``jax.vmap`` over tasks works and one compiled function
serves every task.

Subclasses implement ``reset_env``/``step_env`` (one episode, no auto-reset) and the
task interface; this base class adds the auto-resetting ``step`` used by learners:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

After an episode ends (``terminated | truncated``) the returned ``obs``/``state``
already start the next episode of the *same task*; ``info["final_obs"]`` holds the
true last observation of the finished episode (and ``info["final_state"]`` its state)
so learners can bootstrap on truncation. ``reward[t]`` is what the step taking ``action[t]`` returned.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
SPLITS = ("train", "test")


class ArraySpec(NamedTuple):
    """Shape, dtype and inclusive value range of one observation leaf.

    ``num_values`` is set for discrete leaves (each entry lies in
    ``[0, num_values)``), so encoders can build embedding tables from the spec alone.
    """

    shape: tuple[int, ...]
    dtype: Any
    num_values: int | None = None


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leaf-wise ``jnp.where(pred, a, b)`` over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


@dataclasses.dataclass(frozen=True)
class Environment:
    """Base class: static config as dataclass fields, pure JAX functions as methods.

    Subclasses define ``name``, ``num_actions`` and the abstract methods below, and
    validate their fields in ``__post_init__`` (raising ``ValueError`` naming the field).
    """

    name: ClassVar[str] = "base"
    # Whether ``step_env`` / ``reset_env`` draw random numbers from their key. When at
    # most one of them does, ``step`` hands that one the key unsplit: same
    # distribution, one threefry hash less per step (the hot path of every learner).
    step_uses_key: ClassVar[bool] = True
    reset_uses_key: ClassVar[bool] = True

    # ---- static structure -------------------------------------------------------
    @property
    def num_actions(self) -> int:
        raise NotImplementedError

    @property
    def max_episode_steps(self) -> int:
        """Upper bound on an episode's length (the time limit); evaluations of E episodes
        run ``E * max_episode_steps`` steps. Envs without a ``horizon`` field override it."""
        return int(self.horizon)  # type: ignore[attr-defined]

    def observation_spec(self) -> PyTree:
        """A pytree of ``ArraySpec`` with the structure of one observation."""
        raise NotImplementedError

    # ---- tasks --------------------------------------------------------------------
    def sample_params(self, key: jax.Array, split: str = "train") -> PyTree:
        """One task of ``split`` ("train" or "test"); the splits never share a task."""
        raise NotImplementedError

    def tasks(self, split: str) -> PyTree:
        """Every task of ``split`` as one batched pytree (finite task sets only)."""
        raise NotImplementedError(f"{self.name} has a continuous task distribution")

    @property
    def finite_tasks(self) -> bool:
        return type(self).tasks is not Environment.tasks

    def optimal_return(self, params: PyTree) -> jax.Array:
        """Exact expected return of an optimal policy in one episode of this task."""
        raise NotImplementedError

    def optimal_action(self, key: jax.Array, state: PyTree, params: PyTree) -> jax.Array:
        """An action of an optimal policy (defined where the optimal policy is known)."""
        raise NotImplementedError

    def source_features(self, state: PyTree) -> jax.Array:
        """Extra Markov-state features a *source* agent may use but AD never sees.

        Default: none (shape ``(0,)``). Key-to-Door returns the has-key bit, because
        the agent's cell alone is not Markov there. Recorded histories keep only ``obs``.
        """
        return jnp.zeros((0,), jnp.float32)

    # ---- dynamics: one episode ----------------------------------------------------
    def reset_env(self, key: jax.Array, params: PyTree) -> tuple[PyTree, PyTree]:
        raise NotImplementedError

    def step_env(self, key: jax.Array, state: PyTree, action: jax.Array, params: PyTree):
        """One step without auto-reset: ``(obs, state, reward, terminated, truncated, info)``."""
        raise NotImplementedError

    # ---- dynamics: what learners call ---------------------------------------------
    def reset(self, key: jax.Array, params: PyTree) -> tuple[PyTree, PyTree]:
        return self.reset_env(key, params)

    def next_episode(self, key: jax.Array, state: PyTree, params: PyTree):
        """First ``(obs, state)`` of the episode ``step`` auto-resets into.

        ``reset_env`` by default; an env may override it to reuse work cached in the
        current ``state`` (MiniGrid keeps the task's start view instead of re-rendering).
        """
        return self.reset_env(key, params)

    def step(self, key: jax.Array, state: PyTree, action: jax.Array, params: PyTree):
        """Step and, if the episode ended, reset into the next episode of the same task."""
        if self.step_uses_key and self.reset_uses_key:
            key_step, key_reset = jax.random.split(key)
        else:
            key_step = key_reset = key  # at most one of them reads it
        obs, next_state, reward, terminated, truncated, info = self.step_env(
            key_step, state, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        reset_obs, reset_state = self.next_episode(key_reset, state, params)
        # final_state lets sources bootstrap from env.source_features of the true last
        # state (e.g. Key-to-Door's has-key bit), which final_obs alone does not carry.
        info = dict(info, final_obs=obs, final_state=next_state)
        return (
            tree_select(done, reset_obs, obs),
            tree_select(done, reset_state, next_state),
            reward,
            terminated,
            truncated,
            info,
        )

    # ---- helpers --------------------------------------------------------------------
    def _positive(self, **fields: int) -> None:
        for field, value in fields.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(
                    f"{self.name}: {field} must be an int, got {value!r} ({type(value).__name__})"
                )
            if value < 1:
                raise ValueError(f"{self.name}: {field} must be >= 1, got {value}")
