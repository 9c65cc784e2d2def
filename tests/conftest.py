"""Fixtures shared by several test files (built once per session where they are costly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ad.config import ModelConfig

# A Dark Room-shaped model (5 actions, (2,) grid-cell observations) small enough that a
# compile takes a second; deterministic (no dropout or masking) unless a test says so.
TINY_MODEL = dict(num_actions=5, obs_shape=(2,), obs_num_values=9, d_model=16, num_layers=2,
                  num_heads=2, mlp_dim=32, context=3, dropout=0.0, attn_dropout=0.0,
                  token_mask_prob=0.0)


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(**overrides) -> ModelConfig``: ``TINY_MODEL`` with the given fields."""

    def make(**overrides) -> ModelConfig:
        return ModelConfig(**{**TINY_MODEL, **overrides})

    return make


@pytest.fixture(scope="session")
def darkroom_data(tmp_path_factory) -> Path:
    """A small collected Dark Room dataset: 16 noise-distillation histories of 100 steps
    (5 episodes each), in two shards."""
    from experiments.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("data") / "dr"
    collect(CollectConfig(out=out, env="darkroom", source="noise",
                          source_overrides={"num_steps": 100}, num_histories=16,
                          shard_size=8, verbose=False))
    return out


@pytest.fixture(scope="session")
def darkroom_env():
    """The standard 9x9 Dark Room (81 goals, 20-step episodes)."""
    import envs

    return envs.make("darkroom")
