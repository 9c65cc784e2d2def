"""Pure JAX grid functions that reproduce ``minigrid`` 3.2's dynamics and observations.

Every function here is a pure function of integer arrays, so it can be jitted and
vmapped over layouts. The env families in ``envs.minigrid.envs`` compose them.

Conventions (chosen to make parity checks with ``minigrid`` a plain array compare):
- A grid is ``(H, W, 3)`` uint8, row-major: ``grid[y, x] = (object, colour, state)``
  with minigrid's own ``OBJECT_TO_IDX`` / ``COLOR_TO_IDX`` / door-state codes. An empty
  cell is ``(1, 0, 0)`` exactly as ``Grid.encode`` writes it. (minigrid's
  ``Grid.encode`` is ``(W, H, 3)``; a layout converts with ``transpose(1, 0, 2)``.)
- Positions are int32 ``(x, y)`` pairs (minigrid's ``agent_pos``); directions are
  0 = right (+x), 1 = down (+y), 2 = left, 3 = up, as ``DIR_TO_VEC``.
- The observation image is ``(7, 7, 3)`` uint8 indexed ``image[view_x, view_y]``,
  exactly the array ``minigrid``'s ``gen_obs`` returns (column first); the agent sits
  at ``image[3, 6]`` looking towards ``view_y = 0``.
- What the agent carries is one encoded cell ``(3,)``; ``EMPTY_CELL`` means nothing,
  which is also what the agent's own view cell shows then.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# minigrid.core.constants, copied as numbers so the JAX code needs no minigrid import.
OBJECT_TO_IDX = {
    "unseen": 0,
    "empty": 1,
    "wall": 2,
    "floor": 3,
    "door": 4,
    "key": 5,
    "ball": 6,
    "box": 7,
    "goal": 8,
    "lava": 9,
    "agent": 10,
}
COLOR_TO_IDX = {"red": 0, "green": 1, "blue": 2, "purple": 3, "yellow": 4, "grey": 5}
STATE_TO_IDX = {"open": 0, "closed": 1, "locked": 2}
# Values each image channel can take: (object, colour, state).
IMAGE_CHANNEL_SIZES = (len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))

UNSEEN, EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA = range(10)
OPEN, CLOSED, LOCKED = 0, 1, 2
GREY = COLOR_TO_IDX["grey"]

EMPTY_CELL = np.array([EMPTY, 0, 0], np.uint8)
WALL_CELL = np.array([WALL, GREY, 0], np.uint8)  # also what lies outside the grid
UNSEEN_CELL = np.array([UNSEEN, 0, 0], np.uint8)

# minigrid.core.actions.Actions
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
NUM_ACTIONS = 7
ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")

DIR_TO_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int32)
VIEW_SIZE = 7  # minigrid's default agent_view_size, used by every ported env


class GridState(NamedTuple):
    """The mutable part of a MiniGrid episode (everything ``step`` can change)."""

    grid: jax.Array  # (H, W, 3) uint8, current cell encodings
    agent_pos: jax.Array  # (2,) int32, (x, y)
    agent_dir: jax.Array  # () int32, 0..3
    carrying: jax.Array  # (3,) uint8, encoded carried object, EMPTY_CELL if none
    step_count: jax.Array  # () int32, steps taken in this episode


class StepOutcome(NamedTuple):
    """What one ``grid_step`` did, beyond the new state (used for rewards and tests)."""

    reached_goal: jax.Array  # () bool, moved forward onto a goal cell
    entered_lava: jax.Array  # () bool, moved forward onto lava


def _cell_at(grid: jax.Array, pos: jax.Array) -> jax.Array:
    """The encoded cell at ``pos``; out-of-bounds positions read as a wall."""
    h, w = grid.shape[:2]
    x, y = pos[0], pos[1]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    cell = grid[jnp.clip(y, 0, h - 1), jnp.clip(x, 0, w - 1)]
    return jnp.where(inside, cell, jnp.asarray(WALL_CELL))


def can_overlap(cell: jax.Array) -> jax.Array:
    """``WorldObj.can_overlap`` (with ``None``, i.e. empty, overlappable too)."""
    obj = cell[..., 0]
    return (
        (obj == EMPTY)
        | (obj == GOAL)
        | (obj == FLOOR)
        | (obj == LAVA)
        | ((obj == DOOR) & (cell[..., 2] == OPEN))
    )


def can_pickup(cell: jax.Array) -> jax.Array:
    obj = cell[..., 0]
    return (obj == KEY) | (obj == BALL) | (obj == BOX)


def see_behind(cell: jax.Array) -> jax.Array:
    """``WorldObj.see_behind``: walls and closed or locked doors block the view."""
    obj = cell[..., 0]
    return (obj != WALL) & ~((obj == DOOR) & (cell[..., 2] != OPEN))


def _toggled(cell: jax.Array, carrying: jax.Array) -> jax.Array:
    """The cell after the agent toggles it (``Door.toggle``, ``Box.toggle``).

    A locked door opens only for a carried key of its colour; an unlocked door flips
    between open and closed. A box is replaced by its contents; boxes are stored
    without contents (none of the ported envs has a box), so it becomes empty.
    """
    obj, colour, state = cell[0], cell[1], cell[2]
    has_matching_key = (carrying[0] == KEY) & (carrying[1] == colour)
    door_state = jnp.where(
        state == LOCKED,
        jnp.where(has_matching_key, OPEN, LOCKED),
        jnp.where(state == OPEN, CLOSED, OPEN),
    ).astype(cell.dtype)
    door = jnp.stack([obj, colour, door_state])
    return jnp.where(obj == DOOR, door, jnp.where(obj == BOX, jnp.asarray(EMPTY_CELL), cell))


def grid_step(state: GridState, action: jax.Array) -> tuple[GridState, StepOutcome]:
    """One ``MiniGridEnv.step`` without reward or time limit (those are per env).

    Every action's effect is computed and the taken one selected, so there is no
    Python control flow on the traced action.
    """
    grid, pos, direction, carrying = state.grid, state.agent_pos, state.agent_dir, state.carrying
    h, w = grid.shape[:2]
    fwd_pos = pos + jnp.asarray(DIR_TO_VEC)[direction]
    fwd_cell = _cell_at(grid, fwd_pos)
    # Writes go through clipped indices; the agent is always inside the outer wall, so
    # fwd_pos is in bounds whenever a write actually happens.
    fx, fy = jnp.clip(fwd_pos[0], 0, w - 1), jnp.clip(fwd_pos[1], 0, h - 1)

    carrying_nothing = carrying[0] == EMPTY
    is_fwd = action == FORWARD
    moves = is_fwd & can_overlap(fwd_cell)
    new_pos = jnp.where(moves, fwd_pos, pos)

    turn = jnp.where(action == LEFT, -1, jnp.where(action == RIGHT, 1, 0))
    new_dir = (direction + turn) % 4

    picks = (action == PICKUP) & can_pickup(fwd_cell) & carrying_nothing
    # ``if not fwd_cell and self.carrying``: only onto an empty cell.
    drops = (action == DROP) & (fwd_cell[0] == EMPTY) & ~carrying_nothing
    toggles = action == TOGGLE

    new_fwd_cell = jnp.where(
        picks,
        jnp.asarray(EMPTY_CELL),
        jnp.where(drops, carrying, jnp.where(toggles, _toggled(fwd_cell, carrying), fwd_cell)),
    )
    new_grid = grid.at[fy, fx].set(new_fwd_cell)
    new_carrying = jnp.where(picks, fwd_cell, jnp.where(drops, jnp.asarray(EMPTY_CELL), carrying))

    outcome = StepOutcome(
        reached_goal=is_fwd & (fwd_cell[0] == GOAL),
        entered_lava=is_fwd & (fwd_cell[0] == LAVA),
    )
    new_state = GridState(
        grid=new_grid,
        agent_pos=new_pos,
        agent_dir=new_dir.astype(jnp.int32),
        carrying=new_carrying,
        step_count=state.step_count + 1,
    )
    return new_state, outcome


def process_vis(transparent: jax.Array) -> jax.Array:
    """``Grid.process_vis`` on the agent's view: which view cells are visible.

    ``transparent`` is ``(7, 7)`` bool indexed ``[view_x, view_y]`` (``see_behind``).
    minigrid sweeps the rows from the agent's row (``vy = 6``) away from it; in each
    row it spreads visibility rightwards, then leftwards, from a lit see-through cell
    to its neighbour, and every lit see-through cell lights its three neighbours in
    the next row (clipped at the edges).

    Each row is a 7-bit mask (bit i = view_x i) so a sweep is a parallel-prefix fill:
    three shift steps (by 1, 2, 4 cells) instead of a cell-by-cell loop. This keeps
    the vmapped program to a few dozen integer ops per row.
    """
    n = transparent.shape[0]
    full = (1 << n) - 1
    bits = jnp.asarray(1 << np.arange(n), jnp.int32)
    t_rows = (transparent.T.astype(jnp.int32) * bits).sum(-1)  # (n,) one mask per view row

    def fill(lit, t, shift):
        # lit spreads from a lit see-through cell to its neighbour in one direction;
        # `passes` marks runs of see-through cells that a jump of d cells may cross.
        passes = t
        for d in (1, 2, 4):  # static: 1 + 2 + 4 >= n - 1 cells of travel
            lit = lit | shift(lit & passes, d)
            passes = passes & shift(passes, -d)
        return lit & full

    def rightwards(x, d):
        return jnp.left_shift(x, d) if d > 0 else jnp.right_shift(x, -d)

    def leftwards(x, d):
        return jnp.right_shift(x, d) if d > 0 else jnp.left_shift(x, -d)

    def row(lit_from_below, t):
        lit = fill(lit_from_below, t, rightwards)
        lit = fill(lit, t, leftwards)
        spread = lit & t
        up = (spread | jnp.left_shift(spread, 1) | jnp.right_shift(spread, 1)) & full
        return up, lit

    start = jnp.int32(1 << (n // 2))
    _, lit_rows = jax.lax.scan(row, start, t_rows[::-1])  # from vy = n - 1 (the agent's)
    lit_rows = lit_rows[::-1]  # (n,) by view_y
    return (jnp.right_shift(lit_rows[None, :], jnp.arange(n)[:, None]) & 1).astype(bool)


# Top-left (x, y) of the 7x7 window minigrid's get_view_exts slices, per direction,
# relative to the agent.
_WINDOW_TOP_LEFT = np.array([[0, -3], [-3, 0], [-6, -3], [-3, -6]], np.int32)


def _view_window(grid: jax.Array, agent_pos: jax.Array, agent_dir: jax.Array) -> jax.Array:
    """The view cells ``[view_x, view_y]``: slice minigrid's window out of the grid
    padded with walls (``Grid.slice`` reads walls outside the grid), then turn it so
    the agent sits at view ``(3, 6)`` facing view row 0 (minigrid's ``agent_dir + 1``
    left rotations). A slice plus static flips and transposes is much cheaper on CPU
    than gathering the 49 cells one by one."""
    h, w = grid.shape[:2]
    pad = VIEW_SIZE - 1
    padded = jnp.broadcast_to(jnp.asarray(WALL_CELL), (h + 2 * pad, w + 2 * pad, 3))
    padded = padded.at[pad : pad + h, pad : pad + w].set(grid)
    top = agent_pos + jnp.asarray(_WINDOW_TOP_LEFT)[agent_dir] + pad
    s = jax.lax.dynamic_slice(padded, (top[1], top[0], 0), (VIEW_SIZE, VIEW_SIZE, 3))  # [y, x]
    # each entry re-indexes the window as [view_x, view_y] for one facing
    turned = jnp.stack([
        s[:, ::-1],  # facing +x: view (vx, vy) = window row vx, column 6 - vy
        jnp.transpose(s[::-1, ::-1], (1, 0, 2)),  # facing +y
        s[::-1, :],  # facing -x
        jnp.transpose(s, (1, 0, 2)),  # facing -y
    ])
    return turned[agent_dir]


def gen_obs_image(
    grid: jax.Array,
    agent_pos: jax.Array,
    agent_dir: jax.Array,
    carrying: jax.Array,
    see_through_walls: bool,
    hide_goal: bool = False,
) -> jax.Array:
    """``MiniGridEnv.gen_obs()["image"]``: the ``(7, 7, 3)`` uint8 egocentric view.

    ``see_through_walls`` and ``hide_goal`` are static. With ``hide_goal`` a goal
    cell is encoded as empty floor (Dark FourRooms); dynamics are unaffected.
    """
    cells = _view_window(grid, agent_pos, agent_dir)  # (7, 7, 3)
    agent_x, agent_y = VIEW_SIZE // 2, VIEW_SIZE - 1
    if see_through_walls:
        visible = None
    else:
        visible = process_vis(see_behind(cells))
    # The agent's own cell shows what it carries (empty if nothing), after vis. A
    # static mask instead of a scatter: vmapped scatters are slow on CPU.
    at_agent = np.zeros((VIEW_SIZE, VIEW_SIZE, 1), bool)
    at_agent[agent_x, agent_y] = True
    cells = jnp.where(at_agent, carrying.astype(cells.dtype), cells)
    if hide_goal:
        cells = jnp.where((cells[..., 0] == GOAL)[..., None], jnp.asarray(EMPTY_CELL), cells)
    if visible is not None:
        cells = jnp.where(visible[..., None], cells, jnp.asarray(UNSEEN_CELL))
    return cells.astype(jnp.uint8)


def hide_goal_np(image: np.ndarray) -> np.ndarray:
    """NumPy twin of the ``hide_goal`` rule, for observations of the real minigrid."""
    image = np.array(image, copy=True)
    image[image[..., 0] == GOAL] = EMPTY_CELL
    return image
