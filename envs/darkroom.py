"""Dark Room and Dark Room Hard (Laskin et al. 2022): find an invisible goal in a grid.

Semantics (both variants):
- A ``size``×``size`` grid; the agent starts every episode at the centre cell
  ``(size // 2, size // 2)``. The observation is the agent's cell as an int32 pair
  ``(x, y)`` only: the goal is never observed, so finding it again in a new episode
  needs memory of earlier episodes.
- 5 actions: 0 = no-op, 1 = right (x+1), 2 = left (x-1), 3 = down (y+1), 4 = up (y-1).
  A move into the outer wall leaves the agent where it is.
- Every episode lasts exactly ``horizon`` steps (default 20) and ends with
  ``truncated=True``; ``terminated`` is always False.
- The task is the goal cell (``DarkRoomParams.goal``, int32 (x, y)).

Dark Room (``darkroom``, 9×9): +1 for every step whose move ends on the goal (staying
on it with the no-op keeps paying). A goal at Manhattan distance d ≥ 1 from the centre
is worth ``horizon + 1 - d`` (arrive after d steps, then stay), the centre goal
``horizon``; over all 81 goals the mean optimum is 1340/81 ≈ 16.54.

Dark Room Hard (``darkroom-hard``, 17×17): +1 only on the first step of an episode
that ends on the goal; arriving does not end the episode. Optimum 1 for every goal
within reach (all of them at the default size and horizon).

Fixed held-out split (both variants): goal ``(x, y)`` is a test goal iff
``(x + 2*y) % 5 == 0``. This lattice spreads held-out goals evenly over the room, so
each is surrounded by training goals. Dark Room: 16 test / 65 train goals, held-out
mean optimum 16.625 vs 16.543 over all goals; the centre goal is a training goal.
Dark Room Hard: 58 test / 231 train goals.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import ArraySpec, Environment, check_split

# (dx, dy) per action: no-op, right, left, down, up.
MOVES = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.int32)


@struct.dataclass
class DarkRoomParams:
    goal: jax.Array  # (2,) int32, the goal cell (x, y)


@struct.dataclass
class DarkRoomState:
    pos: jax.Array  # (2,) int32, the agent's cell (x, y)
    t: jax.Array  # () int32, steps taken in this episode
    reached: jax.Array  # () bool, goal already reached in this episode (Hard only pays once)


def is_test_cell(x, y):
    """The fixed held-out rule shared by the Dark Room family (see module docstring)."""
    return (x + 2 * y) % 5 == 0


def move(pos: jax.Array, action: jax.Array, size: int) -> jax.Array:
    """Apply one of the 5 grid actions; the outer wall stops the move."""
    return jnp.clip(pos + jnp.asarray(MOVES)[action], 0, size - 1)


def greedy_step_towards(pos: jax.Array, target: jax.Array) -> jax.Array:
    """A shortest-path action from ``pos`` to ``target`` (x first, then y; no-op on arrival)."""
    dx, dy = target[0] - pos[0], target[1] - pos[1]
    return jnp.where(
        dx > 0, 1, jnp.where(dx < 0, 2, jnp.where(dy > 0, 3, jnp.where(dy < 0, 4, 0)))
    ).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DarkRoom(Environment):
    """Dark Room: +1 for every step that ends on the invisible goal (module docstring)."""

    name: ClassVar[str] = "darkroom"
    pay_once: ClassVar[bool] = False
    step_uses_key: ClassVar[bool] = False  # deterministic dynamics and start cell
    reset_uses_key: ClassVar[bool] = False

    size: int = 9  # WARN: static (sets shapes and the task set), cannot vmap
    horizon: int = 20  # WARN: static, cannot vmap

    def __post_init__(self):
        self._positive(size=self.size, horizon=self.horizon)

    @property
    def num_actions(self) -> int:
        return 5

    @property
    def start(self) -> jax.Array:
        return jnp.full((2,), self.size // 2, jnp.int32)

    def observation_spec(self):
        return ArraySpec((2,), jnp.int32, self.size)

    # ---- tasks ----------------------------------------------------------------------
    def _goals(self, split: str) -> np.ndarray:
        check_split(split)
        xs, ys = np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="xy")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int32)
        test = is_test_cell(cells[:, 0], cells[:, 1])
        return cells[test if split == "test" else ~test]

    def tasks(self, split: str) -> DarkRoomParams:
        return DarkRoomParams(goal=jnp.asarray(self._goals(split)))

    def sample_params(self, key: jax.Array, split: str = "train") -> DarkRoomParams:
        goals = jnp.asarray(self._goals(split))
        return DarkRoomParams(goal=goals[jax.random.randint(key, (), 0, goals.shape[0])])

    def optimal_return(self, params: DarkRoomParams) -> jax.Array:
        # From the fixed start the shortest path to the goal takes d = |dx| + |dy| steps.
        d = jnp.abs(params.goal - self.start).sum(-1)
        arrive = jnp.maximum(d, 1)  # at the centre goal the first paying step is a no-op
        reachable = arrive <= self.horizon
        if self.pay_once:
            return jnp.where(reachable, 1.0, 0.0)
        return jnp.where(reachable, self.horizon + 1.0 - arrive, 0.0)

    def optimal_action(self, key, state: DarkRoomState, params: DarkRoomParams) -> jax.Array:
        return greedy_step_towards(state.pos, params.goal)

    # ---- dynamics ---------------------------------------------------------------------
    def reset_env(self, key, params):
        state = DarkRoomState(pos=self.start, t=jnp.int32(0), reached=jnp.bool_(False))
        return state.pos, state

    def step_env(self, key, state: DarkRoomState, action, params: DarkRoomParams):
        pos = move(state.pos, action, self.size)
        on_goal = jnp.all(pos == params.goal)
        paid = jnp.logical_and(on_goal, jnp.logical_not(state.reached)) if self.pay_once else on_goal
        t = state.t + 1
        state = DarkRoomState(pos=pos, t=t, reached=jnp.logical_or(state.reached, on_goal))
        truncated = t >= self.horizon
        return pos, state, paid.astype(jnp.float32), jnp.bool_(False), truncated, {}


@dataclasses.dataclass(frozen=True)
class DarkRoomHard(DarkRoom):
    """Dark Room Hard: 17×17, +1 only on the first arrival at the goal in an episode."""

    name: ClassVar[str] = "darkroom-hard"
    pay_once: ClassVar[bool] = True

    size: int = 17
    horizon: int = 20
