"""Shortest paths to the goal in navigation-only MiniGrid layouts (pure JAX).

A state is ``(x, y, direction)``; the actions that move it are left, right and forward
(the others never help when there is nothing to pick up, drop or toggle). Success is a
forward move onto the goal, as in ``minigrid``. Lava is a dead end (entering it ends the
episode with reward 0), walls and closed doors block.

``goal_distance(grid)`` is the table ``dist[y, x, d]`` of the fewest actions from the
agent at ``(x, y)`` facing ``d`` to success, computed by value iteration (a synchronous
Bellman-Ford sweep, equivalent to breadth-first search since every action costs 1) until
it stops changing; ``UNREACHABLE`` (int32 max) where success is impossible. For the
layouts it is defined on it agrees with ``layouts.optimal_steps`` at the start state.

``shortest_path_action(dist, grid, pos, direction)`` is an action that decreases the
distance by one, preferring forward, then left, then right on ties (deterministic, so
a demonstrator walks the same path in every episode of a task). Both functions are
jit- and vmap-able; the ``MiniGrid`` envs store ``dist`` per layout in their params
(computed once per bank) and expose it as ``env.optimal_action``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid.core import DIR_TO_VEC, FORWARD, GOAL, LAVA, LEFT, RIGHT, can_overlap

UNREACHABLE = np.iinfo(np.int32).max
# Above any finite distance, small enough that 1 + BIG never overflows int32.
_BIG = np.int32(1 << 30)


def _ahead(grid: jax.Array):
    """For every (y, x, d): the cell ahead's kind, as (is_goal, is_free, y', x') arrays."""
    h, w = grid.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")  # (H, W)
    vec = jnp.asarray(DIR_TO_VEC)  # (4, 2) as (dx, dy)
    fx = xs[..., None] + vec[:, 0]  # (H, W, 4)
    fy = ys[..., None] + vec[:, 1]
    inside = (fx >= 0) & (fx < w) & (fy >= 0) & (fy < h)
    fxc, fyc = jnp.clip(fx, 0, w - 1), jnp.clip(fy, 0, h - 1)
    cell = grid[fyc, fxc]  # (H, W, 4, 3)
    obj = cell[..., 0]
    is_goal = inside & (obj == GOAL)
    is_free = inside & can_overlap(cell) & (obj != GOAL) & (obj != LAVA)
    return is_goal, is_free, fyc, fxc


def goal_distance(grid: jax.Array) -> jax.Array:
    """``(H, W, 3)`` layout grid -> ``(H, W, 4)`` int32 fewest actions to the goal."""
    grid = jnp.asarray(grid)
    h, w = grid.shape[:2]
    is_goal, is_free, fy, fx = _ahead(grid)
    d_idx = jnp.arange(4)

    def sweep(dist):
        fwd = jnp.where(is_goal, 1,
                        jnp.where(is_free, 1 + dist[fy, fx, d_idx], _BIG))
        left = 1 + jnp.roll(dist, 1, axis=-1)  # (d - 1) % 4 at index d
        right = 1 + jnp.roll(dist, -1, axis=-1)  # (d + 1) % 4
        return jnp.minimum(jnp.minimum(fwd, jnp.minimum(left, right)), _BIG)

    def cond(carry):
        dist, prev, i = carry
        return jnp.any(dist != prev) & (i < h * w * 4)

    def body(carry):
        dist, _, i = carry
        return sweep(dist), dist, i + 1

    start = jnp.full((h, w, 4), _BIG, jnp.int32)
    dist, _, _ = jax.lax.while_loop(cond, body, (sweep(start), start, jnp.int32(1)))
    return jnp.where(dist >= _BIG, UNREACHABLE, dist).astype(jnp.int32)


def shortest_path_action(dist: jax.Array, grid: jax.Array, pos: jax.Array,
                         direction: jax.Array) -> jax.Array:
    """An action on a shortest path from ``(pos, direction)`` (forward > left > right on ties).

    Where the goal is unreachable every action is equally useless; forward is returned.
    """
    grid = jnp.asarray(grid)
    h, w = grid.shape[:2]
    x, y = pos[0], pos[1]
    vec = jnp.asarray(DIR_TO_VEC)[direction]
    fx, fy = x + vec[0], y + vec[1]
    inside = (fx >= 0) & (fx < w) & (fy >= 0) & (fy < h)
    cell = grid[jnp.clip(fy, 0, h - 1), jnp.clip(fx, 0, w - 1)]
    big = jnp.int32(_BIG)
    capped = jnp.minimum(dist, big)  # UNREACHABLE -> _BIG, so 1 + it cannot overflow
    fwd = jnp.where(inside & (cell[0] == GOAL), 1,
                    jnp.where(inside & can_overlap(cell) & (cell[0] != LAVA),
                              1 + capped[jnp.clip(fy, 0, h - 1), jnp.clip(fx, 0, w - 1), direction],
                              big))
    left = 1 + capped[y, x, (direction + 3) % 4]
    right = 1 + capped[y, x, (direction + 1) % 4]
    costs = jnp.stack([fwd, left, right])
    return jnp.asarray([FORWARD, LEFT, RIGHT], jnp.int32)[jnp.argmin(costs)]


__all__ = ["UNREACHABLE", "goal_distance", "shortest_path_action"]
