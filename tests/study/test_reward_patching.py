"""Experiment 7's patching half (experiments.study.reward_patching): the pairs differ in
exactly one reward (by hand), a context patched into itself changes nothing (0 up to
rounding),
patching the one differing input recovers the clean run, and a smoke run on tiny models."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ad.interp.streams import Stream
from experiments.study import common as C
from experiments.study import reward_patching as R


def _bandit_stream(B=3, T=10, seed=0):
    rng = np.random.default_rng(seed)
    return Stream(obs=np.zeros((B, T, 1), np.int32), action=rng.integers(0, 5, (B, T)),
                  reward=rng.integers(0, 2, (B, T)).astype(np.float32),
                  done=np.ones((B, T), bool))


def test_bandit_pairs_differ_in_exactly_one_flipped_reward():
    s = _bandit_stream()
    p = R.bandit_candidates(s, step=4)  # pulls 0..4; flips j = 0, 1, 2 (read >= 2 pulls back)
    np.testing.assert_array_equal(p.row, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(p.flip, [0, 1, 2] * 3)
    assert p.clean.action.shape == (9, 5)
    for k in range(9):
        np.testing.assert_array_equal(p.clean.action[k], s.action[p.row[k], :5])
        np.testing.assert_array_equal(p.clean.reward[k], s.reward[p.row[k], :5])
        diff = np.flatnonzero(p.clean.reward[k] != p.corrupt.reward[k])
        np.testing.assert_array_equal(diff, [p.flip[k]])
        assert p.corrupt.reward[k, p.flip[k]] == 1 - s.reward[p.row[k], p.flip[k]]
        np.testing.assert_array_equal(p.corrupt.action[k], p.clean.action[k])


def test_darkroom_pairs_remove_the_first_goal_visit_of_an_episode():
    # one stream, episodes of 4 steps; paid steps (1) per episode:
    #   ep 0: 0 0 0 0   ep 1: 0 1 1 0   ep 2: 0 0 0 1   ep 3: 1 0 0 0   ep 4: 0 0 0 0
    reward = np.array([[0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    done = np.zeros((1, 20), bool)
    done[0, 3::4] = True
    s = Stream(obs=np.arange(40).reshape(1, 20, 2), action=np.arange(20)[None] % 5,
               reward=reward, done=done)
    p = R.darkroom_candidates(s, window=6)
    # ep 1: first visit step 5, metric at step 8 (ep 2's first step); ep 2: its only visit
    # is its last step (read at the metric step itself): skipped; ep 3: step 12 -> 16
    np.testing.assert_array_equal(p.flip, [5 - 3, 12 - 11])  # within windows 3..8, 11..16
    np.testing.assert_array_equal(p.clean.obs[:, -1, 0], [16, 32])  # windows end at 8 and 16
    for k in range(2):
        diff = np.flatnonzero(p.clean.reward[k] != p.corrupt.reward[k])
        np.testing.assert_array_equal(diff, [p.flip[k]])
        assert p.clean.reward[k, p.flip[k]] == 1 and p.corrupt.reward[k, p.flip[k]] == 0
    # a window too long for the first candidate's metric step drops it
    np.testing.assert_array_equal(R.darkroom_candidates(s, window=10).flip, [12 - 7])
    assert len(R.darkroom_candidates(s, window=6, per_history=1).flip) == 1


def test_name_heads_and_random_sets():
    m = np.array([[0.05, 0.5], [0.25, -0.3]])
    assert R.name_heads(m) == [(0, 1), (1, 0)]
    assert R.name_heads(np.full((2, 2), 0.01) + np.eye(2) * 0.01)[0] in [(0, 0), (1, 1)]
    assert len(R.name_heads(np.ones((2, 2)))) == 2  # at most half the heads
    sets = R.random_sets([(0, 1)], 2, 2, np.random.default_rng(0))
    assert len(sets) == R.RANDOM_DRAWS and all(len(x) == 1 and x[0] != (0, 1) for x in sets)


@pytest.fixture(scope="module")
def tiny_bandit_runs(tmp_path_factory):
    """Two random-weight 1-layer bandit models with a tiny UCB1 training set (for the
    training means of the ablation)."""
    from ad.checkpoints import save_model
    from ad.config import ModelConfig
    from ad.model import init_params
    from experiments.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("runs")
    data = root / "data"
    collect(CollectConfig(out=data, env="bernoulli-bandit", source="ucb",
                          source_overrides={"num_steps": 100}, num_histories=2, shard_size=2,
                          verbose=False))
    cfg = ModelConfig(num_actions=5, obs_shape=(1,), obs_num_values=1, obs_encoder="discrete",
                      d_model=16, num_layers=1, num_heads=2, mlp_dim=32, context=100,
                      dropout=0.0, attn_dropout=0.0, token_mask_prob=0.0)
    for seed in (0, 1):
        params = init_params(cfg, jax.random.PRNGKey(seed))
        params = jax.tree.map(lambda x: 4 * x, params)  # sharper than init: rewards matter
        save_model(root / "bandit" / f"ad-seed{seed}", cfg, params, env="bernoulli-bandit",
                   env_overrides={}, dataset=str(data))
    return root


def test_self_patch_is_zero_and_the_reward_token_restores_the_clean_run(tiny_bandit_runs,
                                                                     monkeypatch):
    from ad.checkpoints import load_model

    monkeypatch.setattr(R, "TV_MIN", 0.0)
    model = load_model(tiny_bandit_runs / "bandit" / "ad-seed0")
    cands = R.bandit_candidates(_bandit_stream(B=2, T=40))  # the smoke run's shapes: one compile
    sel = R.select(model, cands, 3, np.random.default_rng(0))
    out = R.patch_pairs(model, sel)
    # a context patched into itself changes nothing: zero up to float32 rounding (the
    # sweep's edited, vmapped graph rounds differently from the plain forward, ~1 ulp)
    assert out["control"] <= 2e-6
    # the residual before layer 0 at the token reading the flipped reward is the only input
    # that differs: patching it is the clean run (recovered fraction 1)
    np.testing.assert_allclose(out["resid_at"][:, 0, 0], 1.0, atol=1e-4)
    assert out["heads"].shape == (3, 1, 2) and np.isfinite(out["heads"]).all()


def _synthetic_source(monkeypatch):
    """The source's held-out histories replaced by random 100-pull streams (UCB1's own
    compile is not what these tests check)."""
    monkeypatch.setattr(C, "source_histories",
                        lambda subject, *a, **k: (_bandit_stream(B=subject.n, T=100), None))


def test_smoke_run_on_tiny_models(tiny_bandit_runs, tmp_path, monkeypatch):
    _synthetic_source(monkeypatch)
    monkeypatch.setattr(R, "TV_MIN", 0.0)  # random weights: the policy barely moves
    monkeypatch.setattr(R, "MAX_PAIRS", {"bandit": 3})
    monkeypatch.setattr(R, "RANDOM_DRAWS", 2)
    config = C.StudyConfig(subject="bandit", runs=str(tiny_bandit_runs), seeds=(0, 1),
                           out=str(tmp_path), tasks=4)
    record = C.run(R, config)
    s = record["results"]["summary"]
    assert s["identical_patch_max_abs"] <= 2e-6
    assert s["candidates_per_seed"] == [4 * (R.BANDIT_STEP - R.MIN_LAG + 1)] * 2
    assert s["patched_per_seed"] == [3, 3]
    assert len(s["improvement_kept_named"]["per_seed"]) == 2
    seed = record["results"]["seeds"][0]
    assert len(seed["random"]) == 2 and seed["named"] not in seed["random"]
    json_path, png = C.output_paths(R.EXPERIMENT, config)
    assert json.loads(json_path.read_text())["experiment"] == "reward_patching"
    assert png.stat().st_size > 1000


def test_a_seed_with_too_few_pairs_is_reported_not_patched(tiny_bandit_runs, tmp_path,
                                                          monkeypatch):
    _synthetic_source(monkeypatch)
    monkeypatch.setattr(R, "TV_MIN", 2.0)  # no pair can move the policy this far
    config = C.StudyConfig(subject="bandit", runs=str(tiny_bandit_runs), seeds=(0,),
                           out=str(tmp_path), tasks=4)
    r = R.compute(config)
    assert r["seeds"][0]["kept"] == 0 and r["seeds"][0]["named"] is None
    assert r["summary"]["improvement_kept_named"] is None
