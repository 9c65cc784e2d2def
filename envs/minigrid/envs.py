"""MiniGrid env families as pure JAX ``Environment``s, step-for-step equal to ``minigrid``.

Each registered env replays layouts made by the real ``minigrid`` package (see
``envs.minigrid.layouts``) with dynamics ported from ``minigrid`` 3.2:

- Actions (7): 0 left, 1 right, 2 forward, 3 pickup, 4 drop, 5 toggle, 6 done (no-op).
- Observation: ``{"image": (7, 7, 3) uint8, "direction": () int32}``, exactly
  ``gen_obs()["image"]`` / ``["direction"]`` of ``minigrid`` (egocentric view indexed
  ``image[view_x, view_y]``, occlusion by walls and closed doors unless the env sees
  through walls, the carried object drawn at the agent's cell). Spec convention: the
  image's ``num_values`` is 11 = ``len(OBJECT_TO_IDX)``, the largest of the three
  channels; per-channel sizes are ``IMAGE_CHANNEL_SIZES = (11, 6, 3)`` (object,
  colour, door state).
- Reward ``1 - 0.9 * step_count / max_steps`` on success, else 0. Success is a forward
  move onto the goal (Unlock: the toggle that opens the locked door). A forward move onto
  lava terminates with 0. ``truncated`` when ``step_count >= max_steps``; both flags can
  be set on the same step, as in ``minigrid``. ``max_steps`` defaults to minigrid's.
- A task (``MiniGridParams``) is one layout; every episode of a task restarts from the
  same grid, start cell and direction, i.e. ``minigrid``'s ``reset(seed=params.seed)``.
  This holds for the random-start variants too (``minigrid-empty-random-*``): there the
  random start is part of what the seed generates, so each start cell x direction is a
  separate task and the held-out split holds out start states. The port draws no
  per-episode randomness; a fixed task across episodes is what in-context RL needs.
- Splits: by layout content hash (``layouts.is_test_layout``), disjoint by
  construction. Exception: families too small to hold anything out (the fixed-start
  Empty rooms have one layout, LavaGapS5 has three) use the whole bank for both splits
  (``no_held_out``).
- ``minigrid-fourrooms-dark``: FourRooms whose goal renders as empty floor, so the goal
  must be found and remembered across episodes. ``envs.minigrid.wrappers.HideGoalObs``
  applies the same rule to the real ``minigrid`` env.
- ``optimal_action`` (navigation families: Empty, FourRooms, LavaGap, SimpleCrossing):
  a shortest-path demonstrator (left / right / forward) from the layout's table
  ``params.goal_distance`` (``envs.minigrid.planning``); following it from the start
  succeeds in exactly ``params.optimal_steps`` actions. DoorKey and Unlock (keys, doors)
  have none.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import ArraySpec, Environment, check_split
from envs.minigrid import layouts, planning
from envs.minigrid.core import (
    DOOR,
    EMPTY_CELL,
    FORWARD,
    LAVA,
    NUM_ACTIONS,
    OBJECT_TO_IDX,
    OPEN,
    TOGGLE,
    VIEW_SIZE,
    WALL,
    GridState,
    gen_obs_image,
    grid_step,
)


@struct.dataclass
class MiniGridParams:
    """One task: a layout produced by ``minigrid``'s ``reset(seed=seed)``."""

    grid: jax.Array  # (H, W, 3) uint8, grid[y, x] = (object, colour, state) at reset
    agent_pos: jax.Array  # (2,) int32, start (x, y)
    agent_dir: jax.Array  # () int32, start direction (0 right, 1 down, 2 left, 3 up)
    goal_pos: jax.Array  # (2,) int32, goal (x, y), (-1, -1) if none
    door_pos: jax.Array  # (2,) int32, locked door (x, y), (-1, -1) if none
    optimal_steps: jax.Array  # () int32, fewest actions to success (int32 max: impossible)
    seed: jax.Array  # () int32, the minigrid seed that generates this layout
    # (H, W, 4) int32: fewest left/right/forward actions from (x, y) facing d to the goal,
    # goal_distance[y, x, d] (planning.goal_distance; int32 max where unreachable).
    goal_distance: jax.Array


class MiniGridState(NamedTuple):
    """One episode in progress. A state belongs to the task (params) that reset it."""

    episode: GridState  # grid, agent, carried object, step count: what steps change
    # (7, 7, 3) uint8, the task's first image. Cached at reset because the auto-reset
    # ``step`` needs it every step; re-rendering it would double the observation work.
    start_image: jax.Array


@functools.lru_cache(maxsize=64)
def _bank(gym_id: str, gym_kwargs: tuple, num_layouts: int, cache_dir: str | None):
    return layouts.load_layout_bank(
        gym_id, num_layouts, gym_kwargs=dict(gym_kwargs), cache_dir=cache_dir
    )


@functools.lru_cache(maxsize=16)
def _goal_distance_program(shape: tuple):
    """``planning.goal_distance`` over a stack of grids, compiled once per bank shape."""
    grids = jax.ShapeDtypeStruct(shape, jnp.uint8)
    return jax.jit(jax.vmap(planning.goal_distance)).lower(grids).compile()


def _bank_arrays(bank: layouts.LayoutBank) -> MiniGridParams:
    """A whole bank as ``MiniGridParams`` of host (NumPy) arrays, distance tables included."""
    grid = np.ascontiguousarray(bank.grid, np.uint8)
    # A compiled executable runs eagerly on concrete arrays, even when this is called
    # inside a trace (sample_params under jit), so the table is always a constant.
    goal_distance = np.asarray(_goal_distance_program(grid.shape)(grid), np.int32)
    return MiniGridParams(
        grid=grid,
        agent_pos=np.asarray(bank.agent_pos, np.int32),
        agent_dir=np.asarray(bank.agent_dir, np.int32),
        goal_pos=np.asarray(bank.goal_pos, np.int32),
        door_pos=np.asarray(bank.door_pos, np.int32),
        optimal_steps=np.asarray(bank.optimal_steps, np.int32),
        seed=bank.seed.astype(np.int32),
        goal_distance=goal_distance,
    )


def bank_to_params(bank: layouts.LayoutBank) -> MiniGridParams:
    """A whole bank as one batched ``MiniGridParams`` (leading axis: layouts)."""
    return jax.tree.map(jnp.asarray, _bank_arrays(bank))


@dataclasses.dataclass(frozen=True)
class MiniGrid(Environment):
    """Base of every ported MiniGrid env; subclasses set the class variables below."""

    name: ClassVar[str] = "minigrid"
    gym_id: ClassVar[str] = ""  # minigrid id that generates the layouts
    gym_kwargs: ClassVar[tuple] = ()  # extra (key, value) kwargs for gymnasium.make
    height: ClassVar[int] = 0  # grid rows (static: sets shapes)
    width: ClassVar[int] = 0  # grid columns
    default_max_steps: ClassVar[int] = 0  # minigrid's default max_steps for this env
    see_through_walls: ClassVar[bool] = False  # minigrid's see_through_walls for this env
    success: ClassVar[str] = "goal"  # "goal" (reach it) or "unlock" (open the locked door)
    hide_goal: ClassVar[bool] = False  # dark variant: the goal renders as empty floor
    # The family is too small to hold layouts out (Empty fixed start: 1 layout,
    # LavaGapS5: 3): both splits are the whole bank.
    no_held_out: ClassVar[bool] = False

    max_steps: int | None = None  # WARN: static, cannot vmap; None = minigrid's default
    num_layouts: int = layouts.SHIPPED_NUM_LAYOUTS  # WARN: static (the task set), cannot vmap
    cache_dir: str | None = None  # layout-bank cache folder; None = layouts.default_cache_dir()

    def __post_init__(self):
        if not self.gym_id:
            raise ValueError("MiniGrid is a base class: use a registered MiniGrid env")
        if self.max_steps is not None:
            self._positive(max_steps=self.max_steps)
        self._positive(num_layouts=self.num_layouts)
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise ValueError(f"{self.name}: cache_dir must be a str or None, got {self.cache_dir!r}")

    # ---- static structure -------------------------------------------------------------
    @property
    def horizon(self) -> int:
        """The episode step limit in force (``max_steps`` or minigrid's default)."""
        return self.default_max_steps if self.max_steps is None else self.max_steps

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    def observation_spec(self):
        return {
            "image": ArraySpec((VIEW_SIZE, VIEW_SIZE, 3), jnp.uint8, len(OBJECT_TO_IDX)),
            "direction": ArraySpec((), jnp.int32, 4),
        }

    # ---- tasks --------------------------------------------------------------------------
    def layout_bank(self) -> layouts.LayoutBank:
        """The whole bank (both splits) this env draws its tasks from."""
        return _bank(self.gym_id, tuple(self.gym_kwargs), self.num_layouts, self.cache_dir)

    def split_bank(self, split: str) -> layouts.LayoutBank:
        check_split(split)
        bank = self.layout_bank()
        if self.no_held_out:
            return bank
        part = bank.take(bank.is_test if split == "test" else ~bank.is_test)
        if len(part) == 0:
            raise ValueError(
                f"{self.name}: the {split!r} split of a {len(bank)}-layout bank is empty; "
                f"raise num_layouts (now {self.num_layouts})"
            )
        return part

    def tasks(self, split: str) -> MiniGridParams:
        check_split(split)
        return jax.tree.map(jnp.asarray, _split_arrays(self, split))

    def sample_params(self, key: jax.Array, split: str = "train") -> MiniGridParams:
        tasks = self.tasks(split)
        index = jax.random.randint(key, (), 0, tasks.seed.shape[0])
        return jax.tree.map(lambda leaf: leaf[index], tasks)

    @property
    def has_demonstrator(self) -> bool:
        """Whether ``optimal_action`` exists: navigation only (no keys or locked doors)."""
        return self.success == "goal" and "DoorKey" not in self.gym_id

    def optimal_action(self, key, state: MiniGridState, params: MiniGridParams) -> jax.Array:
        """A shortest-path action (left / right / forward) to the goal; see ``planning``."""
        if not self.has_demonstrator:
            raise ValueError(f"{self.name}: no shortest-path demonstrator (keys and doors); "
                             "pass noise distillation a demonstrator")
        episode = state.episode
        return planning.shortest_path_action(params.goal_distance, episode.grid,
                                             episode.agent_pos, episode.agent_dir)

    def explore_action(self, key, obs: dict, turn_prob: float) -> jax.Array:
        """A persistent random walk that uses only the current view (no goal, no map):
        forward, unless the cell ahead is a wall or lava or a coin with ``turn_prob``
        comes up; then turn left or right (even odds).

        It is the exploration noise of noise distillation in the dark variants: with the
        goal hidden, uniform actions (4 of 7 do nothing here, and turns undo each other)
        find the goal of a dark FourRooms layout within 50 episodes in 25% of layouts,
        this walk in 77-84% (turn_prob 0.1-0.3; 256 held-out layouts, 100-step episodes;
        ``python -m experiments.exploration``).
        """
        # The agent sits at the bottom centre of its view, facing up: the cell ahead is
        # one row above it.
        ahead = obs["image"][VIEW_SIZE // 2, VIEW_SIZE - 2, 0]
        blocked = (ahead == WALL) | (ahead == LAVA)
        turn_key, coin_key = jax.random.split(key)
        turn = jax.random.randint(turn_key, (), 0, 2, jnp.int32)  # LEFT = 0, RIGHT = 1
        return jnp.where(blocked | (jax.random.uniform(coin_key) < turn_prob), turn,
                         jnp.int32(FORWARD))

    def optimal_return(self, params: MiniGridParams) -> jax.Array:
        steps = params.optimal_steps
        ok = steps <= self.horizon
        return jnp.where(ok, 1.0 - 0.9 * jnp.minimum(steps, self.horizon) / self.horizon, 0.0)

    # ---- dynamics ---------------------------------------------------------------------
    def render(self, episode: GridState) -> jax.Array:
        """The ``(7, 7, 3)`` uint8 image the agent sees in ``episode``."""
        return gen_obs_image(
            episode.grid,
            episode.agent_pos,
            episode.agent_dir,
            episode.carrying,
            see_through_walls=self.see_through_walls,
            hide_goal=self.hide_goal,
        )

    def observe(self, state: MiniGridState) -> dict:
        return {"image": self.render(state.episode), "direction": state.episode.agent_dir}

    def initial_episode(self, params: MiniGridParams) -> GridState:
        return GridState(
            grid=params.grid,
            agent_pos=params.agent_pos,
            agent_dir=params.agent_dir,
            carrying=jnp.asarray(EMPTY_CELL),
            step_count=jnp.int32(0),
        )

    def reset_env(self, key, params: MiniGridParams):
        episode = self.initial_episode(params)
        image = self.render(episode)
        return {"image": image, "direction": episode.agent_dir}, MiniGridState(episode, image)

    def step_env(self, key, state: MiniGridState, action, params: MiniGridParams):
        action = jnp.asarray(action, jnp.int32)
        episode, outcome = grid_step(state.episode, action)
        success = outcome.reached_goal
        if self.success == "unlock":
            # UnlockEnv.step: a toggle after which its door is open ends the episode.
            door = episode.grid[params.door_pos[1], params.door_pos[0]]
            success = success | ((action == TOGGLE) & (door[0] == DOOR) & (door[2] == OPEN))
        terminated = success | outcome.entered_lava
        reward = jnp.where(success, 1.0 - 0.9 * episode.step_count / self.horizon, 0.0)
        truncated = episode.step_count >= self.horizon
        state = MiniGridState(episode, state.start_image)
        obs = self.observe(state)
        return obs, state, reward.astype(jnp.float32), terminated, truncated, {}

    def next_episode(self, key, state: MiniGridState, params: MiniGridParams):
        """The reset view comes from the state's cache instead of being re-rendered:
        same values, half the rendering of an auto-resetting step."""
        reset_state = MiniGridState(self.initial_episode(params), state.start_image)
        return {"image": state.start_image, "direction": params.agent_dir}, reset_state


@functools.lru_cache(maxsize=64)
def _split_arrays(env: MiniGrid, split: str) -> MiniGridParams:
    """``env.tasks(split)`` as host arrays, built once per env config (the distance
    tables cost a sweep). Host arrays, not jax ones: a cached jax array made inside a
    trace would be a leaked tracer."""
    return _bank_arrays(env.split_bank(split))


def _variant(name: str, doc: str, **classvars) -> type[MiniGrid]:
    """A registered env: a frozen dataclass subclass of ``MiniGrid`` with its class vars."""
    cls_name = "MiniGrid" + "".join(p.capitalize() for p in name.split("-")[1:])
    ns = {"name": name, "__doc__": doc, "__module__": __name__, "__qualname__": cls_name}
    ns.update(classvars)
    return dataclasses.dataclass(frozen=True)(type(cls_name, (MiniGrid,), ns))


def _build_registry() -> dict[str, type[MiniGrid]]:
    reg: dict[str, type[MiniGrid]] = {}

    def add(cls):
        reg[cls.name] = cls
        globals()[cls.__name__] = cls  # module attribute, so instances pickle

    for s in (5, 6, 8, 16):
        add(_variant(
            f"minigrid-empty-{s}x{s}", f"Empty {s}x{s}: fixed start (1, 1) facing right.",
            gym_id=f"MiniGrid-Empty-{s}x{s}-v0", height=s, width=s,
            default_max_steps=4 * s * s, see_through_walls=True, no_held_out=True,
        ))
        # minigrid registers Empty-Random only for 5x5 and 6x6; larger rooms use the
        # same EmptyEnv with agent_start_pos=None.
        registered = s in (5, 6)
        add(_variant(
            f"minigrid-empty-random-{s}x{s}",
            f"Empty {s}x{s}: the start cell and direction come from the layout seed.",
            gym_id=f"MiniGrid-Empty-Random-{s}x{s}-v0" if registered else f"MiniGrid-Empty-{s}x{s}-v0",
            gym_kwargs=() if registered else (("agent_start_pos", None),),
            height=s, width=s, default_max_steps=4 * s * s, see_through_walls=True,
        ))
    for dark in (False, True):
        add(_variant(
            "minigrid-fourrooms" + ("-dark" if dark else ""),
            "FourRooms 19x19" + (" with an invisible goal (renders as floor)." if dark else "."),
            gym_id="MiniGrid-FourRooms-v0", height=19, width=19, default_max_steps=100,
            hide_goal=dark,
        ))
    for s in (5, 6, 8, 16):
        add(_variant(
            f"minigrid-doorkey-{s}x{s}", f"DoorKey {s}x{s}: key, locked door, goal.",
            gym_id=f"MiniGrid-DoorKey-{s}x{s}-v0", height=s, width=s,
            default_max_steps=10 * s * s,
        ))
    add(_variant(
        "minigrid-unlock", "Unlock: open the locked door between two 6x6 rooms.",
        gym_id="MiniGrid-Unlock-v0", height=6, width=11, default_max_steps=8 * 36,
        success="unlock",
    ))
    for s in (5, 6, 7):
        add(_variant(
            f"minigrid-lavagap-s{s}", f"LavaGap S{s}: cross a lava column through its gap.",
            gym_id=f"MiniGrid-LavaGapS{s}-v0", height=s, width=s, default_max_steps=4 * s * s,
            no_held_out=s == 5,
        ))
    for s, n in ((9, 1), (9, 2), (9, 3), (11, 5)):
        add(_variant(
            f"minigrid-simplecrossing-s{s}n{n}",
            f"SimpleCrossing S{s}N{n}: {n} wall river(s), one opening each.",
            gym_id=f"MiniGrid-SimpleCrossingS{s}N{n}-v0", height=s, width=s,
            default_max_steps=4 * s * s,
        ))
    return reg


MINIGRID_ENVS: dict[str, type[MiniGrid]] = _build_registry()
