"""Training windows (ad.windows): inputs and targets aligned with the stored histories,
deterministic batches, stream-start windows, Expert Distillation's last steps, and the
intended-action targets of the memory diagnostic."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ad.config import ModelConfig
from ad.dataset import load_dataset
from ad.train import DistillConfig
from ad.windows import WindowSampler
from experiments.collect import CollectConfig, collect


def test_windows_align_inputs_and_targets(darkroom_data):
    """prev_action/prev_reward are the previous step's; target is this step's action."""
    ds = load_dataset(darkroom_data)
    cfg = ModelConfig.for_env(ds.env, episode_start_token=True)
    sampler = WindowSampler(ds, cfg, window=8, batch_size=32, seed=3)
    batch = sampler.batch(0)
    hist, start = sampler.indices(0)
    for b in range(32):
        h = ds.history(int(hist[b]))
        s = int(start[b])
        np.testing.assert_array_equal(batch.target_action[b], h.action[s:s + 8])
        np.testing.assert_array_equal(batch.inputs.obs[b], h.obs[s:s + 8])
        if s == 0:
            assert batch.inputs.prev_action[b, 0] == 5 and batch.inputs.prev_reward[b, 0] == 0
        else:
            assert batch.inputs.prev_action[b, 0] == h.action[s - 1]
            assert batch.inputs.prev_reward[b, 0] == h.reward[s - 1]
        np.testing.assert_array_equal(batch.inputs.prev_action[b, 1:], h.action[s:s + 7])
        np.testing.assert_array_equal(batch.inputs.prev_reward[b, 1:], h.reward[s:s + 7])
        done = np.logical_or(h.terminated, h.truncated)
        first = True if s == 0 else done[s - 1]
        np.testing.assert_array_equal(batch.inputs.episode_start[b],
                                      np.concatenate([[first], done[s:s + 7]]))
    # deterministic: the same step gives the same batch
    again = sampler.batch(0)
    np.testing.assert_array_equal(again.target_action, batch.target_action)
    assert batch.inputs.prev_obs is None
    # a model without the episode-start input gets none
    plain = WindowSampler(ds, ModelConfig.for_env(ds.env), 8, 32, 3).batch(0)
    assert plain.inputs.episode_start is None
    np.testing.assert_array_equal(plain.inputs.prev_action, batch.inputs.prev_action)
    # prev_obs = obs[t-1] (the step before a mid-stream window; unread at a stream start)
    with_prev = WindowSampler(ds, ModelConfig.for_env(ds.env, prev_obs_token=True), window=8,
                              batch_size=32, seed=3).batch(0)
    np.testing.assert_array_equal(with_prev.inputs.obs, batch.inputs.obs)
    for b in range(32):
        h, s = ds.history(int(hist[b])), int(start[b])
        np.testing.assert_array_equal(with_prev.inputs.prev_obs[b, 1:], h.obs[s:s + 7])
        if s > 0:
            np.testing.assert_array_equal(with_prev.inputs.prev_obs[b, 0], h.obs[s - 1])


def test_intended_action_targets_with_executed_inputs(darkroom_data, tmp_path):
    """targets="intended_action": the model predicts the source's choice before its
    epsilon noise while its inputs carry what was executed (the noise)."""
    out = tmp_path / "noisy"
    collect(CollectConfig(out=out, env="darkroom", source="memory",
                          source_overrides={"num_steps": 400, "epsilon": 0.5},
                          num_histories=8, shard_size=8, verbose=False))
    ds = load_dataset(out)
    cfg = ModelConfig.for_env(ds.env)
    sampler = WindowSampler(ds, cfg, window=8, batch_size=32, seed=1, targets="intended_action")
    batch, executed = sampler.batch(0), WindowSampler(ds, cfg, 8, 32, 1).batch(0)
    hist, start = sampler.indices(0)
    for b in range(32):
        h, s = ds.history(int(hist[b])), int(start[b])
        np.testing.assert_array_equal(batch.target_action[b], h.intended_action[s:s + 8])
        np.testing.assert_array_equal(executed.target_action[b], h.action[s:s + 8])
    jax.tree.map(np.testing.assert_array_equal, batch.inputs, executed.inputs)
    assert (batch.target_action != executed.target_action).sum() > 10  # the noise differs
    with pytest.raises(ValueError, match="stores no intended_action"):
        WindowSampler(load_dataset(darkroom_data), cfg, 8, 32, 1, targets="intended_action")
    with pytest.raises(ValueError, match="DistillConfig.targets"):
        DistillConfig(dataset="d", out="o", targets="reward")


def test_stream_start_windows_are_sampled(darkroom_data):
    """Windows that start a stream (the "none" token) occur, so evaluation's first step is trained."""
    ds = load_dataset(darkroom_data)
    sampler = WindowSampler(ds, ModelConfig.for_env(ds.env), window=8, batch_size=64, seed=0)
    starts = np.concatenate([sampler.indices(s)[1] for s in range(40)])
    assert (starts == 0).sum() > 0


def test_expert_distillation_windows_come_from_the_end(darkroom_data):
    ds = load_dataset(darkroom_data)
    sampler = WindowSampler(ds, ModelConfig.for_env(ds.env), window=8, batch_size=64, seed=0,
                            last_steps=20)
    starts = np.concatenate([sampler.indices(s)[1] for s in range(10)])
    assert starts.min() >= ds.num_steps - 20 and starts.max() <= ds.num_steps - 8
