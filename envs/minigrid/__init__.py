"""MiniGrid in pure JAX, proven step-for-step equal to the ``minigrid`` package.

    from envs.minigrid import MINIGRID_ENVS
    env = MINIGRID_ENVS["minigrid-doorkey-8x8"]()          # or (max_steps=..., num_layouts=...)
    params = env.sample_params(key, "train")              # a layout made by minigrid
    obs, state = env.reset(key, params)                   # obs: {"image", "direction"}
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Modules: ``core`` (pure grid functions: step, view, visibility), ``envs`` (the env
families and ``MINIGRID_ENVS``), ``layouts`` (layout banks built from ``minigrid``
resets, content-hash splits, exact optima), ``wrappers`` (``HideGoalObs`` for the real
env). Semantics are documented in ``envs.minigrid.envs``.
"""

from envs.minigrid.core import ACTION_NAMES, IMAGE_CHANNEL_SIZES, NUM_ACTIONS
from envs.minigrid.envs import MINIGRID_ENVS, MiniGrid, MiniGridParams, MiniGridState
from envs.minigrid.layouts import (
    LayoutBank,
    build_layout_bank,
    layout_from_minigrid,
    layout_hash,
    load_layout_bank,
)
from envs.minigrid.wrappers import HideGoalObs

__all__ = [
    "ACTION_NAMES",
    "IMAGE_CHANNEL_SIZES",
    "MINIGRID_ENVS",
    "NUM_ACTIONS",
    "HideGoalObs",
    "LayoutBank",
    "MiniGrid",
    "MiniGridParams",
    "MiniGridState",
    "build_layout_bank",
    "layout_from_minigrid",
    "layout_hash",
    "load_layout_bank",
]
