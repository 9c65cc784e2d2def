"""Dark Key-to-Door (Laskin et al. 2022): find an invisible key, then an invisible door.

Semantics:
- A ``size``×``size`` grid (default 9×9); each episode starts on a cell drawn uniformly
  at random from the whole grid (in ``reset_env``, from its key). The observation is
  the agent's cell as an int32 pair ``(x, y)`` only (spec ``ArraySpec((2,), int32,
  size)``, gymnasium ``MultiDiscrete([size, size])``): neither the key, the door nor
  whether the key is held is observed.
- The same 5 actions as Dark Room (0 = no-op, 1 = right, 2 = left, 3 = down, 4 = up;
  walls stop a move).
- +1 for the first step of the episode that *ends* on the key cell (the key is picked
  up; a start on the key cell does not pick it up, but a no-op there does). Then +1
  for the first step that ends on the door cell while holding the key, which
  terminates the episode (``terminated=True``). Reaching the door without the key
  does nothing. If key and door share a cell, the step that ends there pays 2 and
  terminates.
- Episodes are truncated after ``horizon`` steps (default 50): ``truncated=True`` on
  step ``horizon`` unless that step terminated (``terminated`` wins, so the two flags
  are never both set).
- ``state.has_key`` records whether the key is held; ``info["has_key"]`` reports it
  after the step (before any auto-reset). ``source_features(state)`` exposes it as a
  float32 ``(1,)`` array for source agents, since the cell alone is not Markov.
- The task is the pair (key cell, door cell), ``KeyToDoorParams``; there are
  ``size**4`` tasks (key and door may coincide).

Fixed held-out split: task ``(kx, ky, dx, dy)`` is a test task iff
``(kx + 2*ky + 3*dx + 4*dy) % 5 == 0``; every other pair is a training task. About one
pair in five is held out, spread evenly over key and door cells (9×9: 1,313 test /
5,248 train of 6,561 pairs).

Optimal return (exact): from start ``s``, picking up the key takes
``a = max(|s - key|_1, 1)`` steps (a no-op when starting on it) and reaching the door
from the key ``b = |key - door|_1`` more; the optimum of one episode is 2 if
``a + b <= horizon``, 1 if only ``a <= horizon``, else 0, and ``optimal_return`` is its
mean over the uniform start distribution. At the defaults (a + b <= 32 < 50) it is 2
for every task. ``optimal_action`` walks a shortest path to the key while it is not
held (a no-op when standing on it, which picks it up), then to the door.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import ArraySpec, Environment, check_split
from envs.darkroom import greedy_step_towards, move


@struct.dataclass
class KeyToDoorParams:
    key_cell: jax.Array  # (2,) int32, the key's cell (x, y)
    door_cell: jax.Array  # (2,) int32, the door's cell (x, y)


@struct.dataclass
class KeyToDoorState:
    pos: jax.Array  # (2,) int32, the agent's cell (x, y)
    t: jax.Array  # () int32, steps taken in this episode
    has_key: jax.Array  # () bool, the key has been picked up in this episode


def is_test_pair(kx, ky, dx, dy):
    """The fixed held-out rule of Key-to-Door (see module docstring)."""
    return (kx + 2 * ky + 3 * dx + 4 * dy) % 5 == 0


@dataclasses.dataclass(frozen=True)
class KeyToDoor(Environment):
    """Dark Key-to-Door: +1 for the key, then +1 for the door, which ends the episode."""

    name: ClassVar[str] = "key-to-door"
    step_uses_key: ClassVar[bool] = False  # only the reset (random start cell) is random

    size: int = 9  # WARN: static (sets shapes and the task set), cannot vmap
    horizon: int = 50  # WARN: static, cannot vmap

    def __post_init__(self):
        self._positive(size=self.size, horizon=self.horizon)

    @property
    def num_actions(self) -> int:
        return 5

    def observation_spec(self):
        return ArraySpec((2,), jnp.int32, self.size)

    def _cells(self) -> np.ndarray:
        """All cells as (size**2, 2) int32 (x, y), x fastest."""
        xs, ys = np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="xy")
        return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int32)

    # ---- tasks ----------------------------------------------------------------------
    def _pairs(self, split: str) -> np.ndarray:
        """All (kx, ky, dx, dy) of ``split`` as (n, 4) int32, key cell major."""
        check_split(split)
        cells = self._cells()
        n = cells.shape[0]
        pairs = np.concatenate(
            [np.repeat(cells, n, axis=0), np.tile(cells, (n, 1))], axis=1
        )  # (n*n, 4)
        test = is_test_pair(*pairs.T)
        return pairs[test if split == "test" else ~test]

    def tasks(self, split: str) -> KeyToDoorParams:
        pairs = jnp.asarray(self._pairs(split))
        return KeyToDoorParams(key_cell=pairs[:, :2], door_cell=pairs[:, 2:])

    def sample_params(self, key: jax.Array, split: str = "train") -> KeyToDoorParams:
        pairs = jnp.asarray(self._pairs(split))
        pair = pairs[jax.random.randint(key, (), 0, pairs.shape[0])]
        return KeyToDoorParams(key_cell=pair[:2], door_cell=pair[2:])

    def optimal_return(self, params: KeyToDoorParams) -> jax.Array:
        starts = jnp.asarray(self._cells())  # (size**2, 2)
        to_key = jnp.maximum(jnp.abs(starts - params.key_cell).sum(-1), 1)
        to_door = jnp.abs(params.key_cell - params.door_cell).sum(-1)
        per_start = jnp.where(
            to_key + to_door <= self.horizon, 2.0, jnp.where(to_key <= self.horizon, 1.0, 0.0)
        )
        return per_start.mean()

    def optimal_action(self, key, state: KeyToDoorState, params: KeyToDoorParams) -> jax.Array:
        target = jnp.where(state.has_key, params.door_cell, params.key_cell)
        return greedy_step_towards(state.pos, target)

    def source_features(self, state: KeyToDoorState) -> jax.Array:
        return state.has_key.astype(jnp.float32)[..., None]

    # ---- dynamics ---------------------------------------------------------------------
    def reset_env(self, key, params):
        pos = jax.random.randint(key, (2,), 0, self.size, jnp.int32)
        state = KeyToDoorState(pos=pos, t=jnp.int32(0), has_key=jnp.bool_(False))
        return pos, state

    def step_env(self, key, state: KeyToDoorState, action, params: KeyToDoorParams):
        pos = move(state.pos, action, self.size)
        picked = jnp.logical_and(jnp.all(pos == params.key_cell), jnp.logical_not(state.has_key))
        has_key = jnp.logical_or(state.has_key, picked)
        # Holding the key after this step's pickup is what lets a shared cell pay 2.
        opened = jnp.logical_and(jnp.all(pos == params.door_cell), has_key)
        reward = picked.astype(jnp.float32) + opened.astype(jnp.float32)
        t = state.t + 1
        truncated = jnp.logical_and(t >= self.horizon, jnp.logical_not(opened))
        state = KeyToDoorState(pos=pos, t=t, has_key=has_key)
        return pos, state, reward, opened, truncated, {"has_key": has_key}
