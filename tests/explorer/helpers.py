"""Helpers for the explorer's tests: a small model and host-made streams (no compiles)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np


def build_model(run_dir: Path, scale: float = 8.0, env_name: str = "darkroom"):
    """A small model with random weights (kernels scaled up so that its policy is far from
    uniform and reacts to edits), saved as a finished run: Dark Room-shaped by default."""
    import envs
    from ad.checkpoints import save_model
    from ad.config import ArchConfig, ModelConfig
    from ad.model import init_params

    env = envs.make(env_name)
    cfg = ModelConfig.for_env(env, ArchConfig(
        context=20, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, dropout=0.0,
        obs_encoder="xy" if env_name == "darkroom" else ""))
    params = init_params(cfg, jax.random.key(3))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * scale if "kernel" in str(p[-1]) or "embed" in str(p[-1]) else x,
        params)
    save_model(run_dir, cfg, params, env=env_name, env_overrides={},
               source="noise" if env_name == "darkroom" else "ucb")
    return run_dir


def walk(session, task: int, episodes: int, seed: int = 0):
    """A Dark Room stream of uniformly random moves on the task, made on the host (no
    compile): the env's move rule and pay rule (``streams.move_goal``)."""
    from envs.darkroom import MOVES

    from ad.interp import streams
    from ad.interp.streams import Stream

    rng = np.random.default_rng(seed)
    H, n = session.env.horizon, episodes * session.env.horizon
    action = rng.integers(0, 5, n).astype(np.int32)
    obs = np.zeros((n, 2), np.int32)
    for t in range(n):
        obs[t] = session.env.size // 2 if t % H == 0 else np.clip(
            obs[t - 1] + MOVES[action[t - 1]], 0, session.env.size - 1)
    done = (np.arange(n) % H) == H - 1
    s = Stream(obs[None], action[None], np.zeros((1, n), np.float32), done[None])
    goal = np.asarray(session.tasks.goal)[task]
    return streams.move_goal(s, goal, session.env)
