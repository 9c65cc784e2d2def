"""Tests of the AD transformer: config, inputs, causality, receptive field, alignment,
randomness, dtypes and encoders. Activation capture is in test_hooks.py, the KV cache
and the recompute baseline in test_decode.py."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad.config import ModelConfig
from ad.interp.cache import run_with_cache
from ad.inputs import Previous, StepInputs, stream_inputs
from ad.model import band_mask
from tests.helpers import (forward, params_for, random_inputs, random_stream, with_episode_starts,
                           with_prev_obs)

A = 5  # Dark Room actions
# One variant per layout and per position scheme (compiles are the cost of these tests).
CAUSAL_VARIANTS = [("step", "rope"), ("oar", "alibi")]


def perturb_steps(inputs: StepInputs, steps: np.ndarray) -> StepInputs:
    """Change obs, prev_action and prev_reward at the given steps (bool mask over T)."""
    sel = np.asarray(steps)[None, :]
    obs = np.where(sel[..., None], (inputs.obs + 4) % 9, inputs.obs)
    act = np.where(sel, (inputs.prev_action + 2) % (A + 1), inputs.prev_action)
    rew = np.where(sel, inputs.prev_reward + 1.5, inputs.prev_reward)
    return StepInputs(obs, act, rew)


def stack_batches(*inputs: StepInputs) -> StepInputs:
    return jax.tree.map(lambda *x: np.concatenate(x, 0), *inputs)


# ---- config ------------------------------------------------------------------------------
def test_config_json_roundtrip_and_for_env(tiny_config):
    cfg = ModelConfig.for_env(envs.make("darkroom"), context=7, token_layout="oar")
    assert (cfg.num_actions, cfg.obs_shape, cfg.obs_num_values, cfg.obs_encoder) == (
        5, (2,), 9, "cell")
    back = ModelConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg
    with pytest.raises(ValueError, match="token_layout"):
        tiny_config(token_layout="interleaved")
    with pytest.raises(ValueError, match="num_heads"):
        tiny_config(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({"num_actions": 5, "bogus": 1})


def test_band_mask_by_hand():
    m = band_mask(4, 2, 1).astype(int)
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    # "oar": step 1's tokens see all of step 0 (c=2) and their own step up to themselves.
    m = band_mask(2, 2, 3).astype(int)
    np.testing.assert_array_equal(m[3:], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0],
                                          [1, 1, 1, 1, 1, 1]])


# ---- the model's inputs ---------------------------------------------------------------------
def test_stream_inputs_by_hand(tiny_config):
    obs = jnp.arange(8).reshape(1, 4, 2)
    action = jnp.array([[3, 1, 4, 0]])
    reward = jnp.array([[0.5, 0.0, 1.0, 2.0]])
    no_done = jnp.zeros_like(action, bool)
    plain = tiny_config()
    inp = stream_inputs(obs, action, reward, no_done, plain)
    np.testing.assert_array_equal(inp.prev_action, [[A, 3, 1, 4]])
    np.testing.assert_allclose(inp.prev_reward, [[0.0, 0.5, 0.0, 1.0]])
    # Mid-stream window: the step before the window is used.
    before = Previous(action=jnp.array([2]), reward=jnp.array([7.0]), done=jnp.array([False]),
                      obs=jnp.array([[8, 6]]))
    inp = stream_inputs(obs, action, reward, no_done, plain, before=before,
                        starts=jnp.array([False]))
    np.testing.assert_array_equal(inp.prev_action, [[2, 3, 1, 4]])
    np.testing.assert_allclose(inp.prev_reward, [[7.0, 0.5, 0.0, 1.0]])
    # A window that starts its stream gets the none token, whatever came "before" it.
    inp = stream_inputs(obs, action, reward, no_done, plain, before=before,
                        starts=jnp.array([True]))
    np.testing.assert_array_equal(inp.prev_action, [[A, 3, 1, 4]])
    np.testing.assert_allclose(inp.prev_reward, [[0.0, 0.5, 0.0, 1.0]])
    # Episode starts: done[t-1], the step before the window for its first step, and
    # every stream start.
    done = jnp.array([[False, True, False, True]])
    starts_cfg = tiny_config(episode_start_token=True)
    inp = stream_inputs(obs, action, reward, done, starts_cfg)
    np.testing.assert_array_equal(inp.episode_start, [[True, False, True, False]])
    inp = stream_inputs(obs, action, reward, done, starts_cfg, before=before,
                        starts=jnp.array([False]))
    np.testing.assert_array_equal(inp.episode_start, [[False, False, True, False]])
    assert stream_inputs(obs, action, reward, done, plain).episode_start is None
    # Previous observations: obs[t-1], the step before a mid-stream window for its first
    # step, zeros (never read: prev_action is "none") where the stream starts.
    prev_cfg = tiny_config(prev_obs_token=True)
    inp = stream_inputs(obs, action, reward, no_done, prev_cfg)
    np.testing.assert_array_equal(inp.prev_obs, [[[0, 0], [0, 1], [2, 3], [4, 5]]])
    inp = stream_inputs(obs, action, reward, no_done, prev_cfg, before=before,
                        starts=jnp.array([False]))
    np.testing.assert_array_equal(inp.prev_obs, [[[8, 6], [0, 1], [2, 3], [4, 5]]])
    assert stream_inputs(obs, action, reward, no_done, plain).prev_obs is None


def test_episode_start_token_is_read_only_when_configured(tiny_config):
    """With episode_start_token the boundaries change the logits from that step on (never
    before: causal); without it they are ignored; a model that needs them says so."""
    inp = with_episode_starts(random_inputs(4, 2, 12), 0)
    moved = np.array(inp.episode_start)
    moved[:, 7] = ~moved[:, 7]
    on = tiny_config(episode_start_token=True)
    f = forward(on, params_for(on))
    a, b = np.asarray(f(inp)), np.asarray(f(inp._replace(episode_start=moved)))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7] - b[:, 7]).max() > 1e-4
    off = tiny_config()
    g = forward(off, params_for(off))
    np.testing.assert_array_equal(np.asarray(g(inp)),
                                  np.asarray(g(inp._replace(episode_start=moved))))
    with pytest.raises(ValueError, match="episode_start"):
        f(inp._replace(episode_start=None))


def test_prev_obs_token_is_read_only_when_configured(tiny_config):
    """With prev_obs_token obs[t-1] changes the logits from step t on (never before), is
    ignored at a stream start (prev_action "none"), and is ignored without the flag."""
    inp = with_prev_obs(random_inputs(4, 2, 12))
    moved, at_start = np.array(inp.prev_obs), np.array(inp.prev_obs)
    moved[:, 7] = (moved[:, 7] + 3) % 9
    at_start[:, 0] = (at_start[:, 0] + 3) % 9
    on = tiny_config(prev_obs_token=True)
    f = forward(on, params_for(on))
    a, b = np.asarray(f(inp)), np.asarray(f(inp._replace(prev_obs=moved)))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7] - b[:, 7]).max() > 1e-4
    np.testing.assert_array_equal(a, np.asarray(f(inp._replace(prev_obs=at_start))))
    off = tiny_config()
    g = forward(off, params_for(off))
    np.testing.assert_array_equal(np.asarray(g(inp)), np.asarray(g(inp._replace(prev_obs=moved))))
    with pytest.raises(ValueError, match="prev_obs"):
        f(inp._replace(prev_obs=None))
    with pytest.raises(ValueError, match="prev_obs_token"):
        tiny_config(prev_obs_token=True, token_layout="oar")


# ---- causality, receptive field, alignment -----------------------------------------------------
@pytest.mark.parametrize("layout,pos", CAUSAL_VARIANTS)
def test_causality_and_receptive_field(layout, pos, tiny_config):
    cfg = tiny_config(token_layout=layout, positions=pos, context=3, num_layers=2)
    f = forward(cfg, params_for(cfg))
    T, B = 14, 2
    inp = random_inputs(1, B, T)
    field = cfg.receptive_field  # L*(c-1)+1 = 5 steps, current one included
    assert field == 5
    steps = np.arange(T)
    ts = (3, 8, 12)
    variants = [inp]
    for t in ts:
        variants += [perturb_steps(inp, steps > t),  # the future
                     perturb_steps(inp, steps <= t - field),  # beyond the field
                     perturb_steps(inp, steps == t - field + 1)]  # oldest step in the field
    out = np.asarray(f(stack_batches(*variants))).reshape(len(variants), B, T, A)
    base = out[0]
    for n, t in enumerate(ts):
        future, beyond, oldest = out[1 + 3 * n: 4 + 3 * n]
        np.testing.assert_allclose(future[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert np.abs(future[:, t + 1:] - base[:, t + 1:]).max() > 1e-4
        if t - field >= 0:
            np.testing.assert_allclose(beyond[:, t], base[:, t], atol=1e-6)
            assert np.abs(oldest[:, t] - base[:, t]).max() > 1e-5


@pytest.mark.parametrize("layout", ["step", "oar"])
def test_target_action_never_leaks(layout, tiny_config):
    cfg = tiny_config(token_layout=layout)
    f = forward(cfg, params_for(cfg))
    obs, action, reward = random_stream(2, 2, 10)
    ts = (0, 4, 8)
    done = np.zeros_like(action, bool)
    variants = [stream_inputs(obs, action, reward, done, cfg)]
    for t in ts:
        action2 = action.copy()
        action2[:, t] = (action[:, t] + 1) % A
        reward2 = reward.copy()
        reward2[:, t] += 3.0
        variants += [stream_inputs(obs, action2, reward, done, cfg),
                     stream_inputs(obs, action, reward2, done, cfg)]
    out = np.asarray(f(jax.tree.map(lambda *x: jnp.concatenate(x, 0), *variants)))
    out = out.reshape(len(variants), 2, 10, A)
    for n, t in enumerate(ts):
        for changed in out[1 + 2 * n: 3 + 2 * n]:
            np.testing.assert_allclose(changed[:, : t + 1], out[0][:, : t + 1], atol=1e-6)
            assert np.abs(changed[:, t + 1] - out[0][:, t + 1]).max() > 1e-5


def test_valid_mask_equals_unpadded_forward(tiny_config):
    cfg = tiny_config()
    f = forward(cfg, params_for(cfg))
    inp = random_inputs(3, 2, 6)
    pad = 4
    ref = f(inp)
    padded = jax.tree.map(lambda x: np.concatenate([np.ones_like(x[:, :pad]) * 3, x], 1), inp)
    valid = np.broadcast_to(np.arange(6 + pad) >= pad, (2, 6 + pad))
    out = f(padded, valid)
    np.testing.assert_allclose(out[:, pad:], ref, atol=1e-5)


@pytest.mark.parametrize("layout,pos", CAUSAL_VARIANTS)
def test_blocked_attention_equals_dense(layout, pos, tiny_config):
    # T=10 is not a multiple of c=3: the blocked impl pads to 4 blocks and must not care.
    cfg = tiny_config(token_layout=layout, positions=pos, attention_impl="blocked")
    params = params_for(cfg)
    inp = random_inputs(11, 2, 10)
    valid = np.broadcast_to(np.arange(10) >= 2, (2, 10))
    dense = forward(dataclasses.replace(cfg, attention_impl="dense"), params)
    blocked = forward(cfg, params)
    np.testing.assert_allclose(blocked(inp), dense(inp), atol=1e-5)
    np.testing.assert_allclose(blocked(inp, valid)[:, 2:], dense(inp, valid)[:, 2:], atol=1e-5)
    _, cache_b = run_with_cache(params, cfg, inp)
    _, cache_d = run_with_cache(params, dataclasses.replace(cfg, attention_impl="dense"), inp)
    assert cache_b.keys() == cache_d.keys()
    for name in cache_d:
        np.testing.assert_allclose(cache_b[name], cache_d[name], atol=1e-5, err_msg=name)


# ---- randomness: dropout and token masking ----------------------------------------------------
def test_train_randomness_only_with_train_flag(tiny_config):
    cfg = tiny_config(dropout=0.2, attn_dropout=0.3, token_mask_prob=0.3)
    f = forward(cfg, params_for(cfg))
    inp = random_inputs(4, 2, 10)
    ev1, ev2 = f(inp), f(inp)
    np.testing.assert_array_equal(ev1, ev2)
    tr1, tr2 = f(inp, rng=jax.random.key(1)), f(inp, rng=jax.random.key(2))
    np.testing.assert_array_equal(tr1, f(inp, rng=jax.random.key(1)))
    assert np.abs(tr1 - tr2).max() > 1e-4 and np.abs(tr1 - ev1).max() > 1e-4


def test_dropout_keep_rate_scale_and_independence():
    # The counter-hash dropout: keep fraction 1 - rate, kept entries scaled by 1/(1-rate),
    # deterministic per key, different keys and neighbouring entries (nearly) independent.
    from ad.model import _dropout

    class Drop(nn.Module):
        rate: float

        @nn.compact
        def __call__(self, x):
            return _dropout(self, x, self.rate, True)

    x = jnp.ones((200, 500), jnp.float32)
    for rate in (0.1, 0.5):
        f = jax.jit(lambda k, rate=rate: Drop(rate).apply({}, x, rngs={"dropout": k}))
        y1, y2 = np.asarray(f(jax.random.key(0))), np.asarray(f(jax.random.key(1)))
        np.testing.assert_array_equal(y1, np.asarray(f(jax.random.key(0))))
        kept1, kept2 = y1 > 0, y2 > 0
        np.testing.assert_allclose(y1[kept1], 1.0 / (1.0 - rate), rtol=1e-6)
        assert abs(kept1.mean() - (1 - rate)) < 0.005  # 1e5 draws: ~5 sigma
        # Joint keep of neighbours / of two keys ~ (1 - rate)^2 if independent.
        for a, b in ((kept1[:, 1:], kept1[:, :-1]), (kept1, kept2)):
            assert abs((a & b).mean() - (1 - rate) ** 2) < 0.006


def test_token_masking_replaces_inputs(tiny_config):
    # With masking probability ~1 every token is the mask embedding: inputs stop mattering.
    cfg = tiny_config(token_mask_prob=0.999999)
    f = forward(cfg, params_for(cfg))
    la = f(random_inputs(5, 2, 6), rng=jax.random.key(3))
    lb = f(random_inputs(6, 2, 6), rng=jax.random.key(3))
    np.testing.assert_allclose(la, lb, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny_config):
    cfg = tiny_config(dtype="bfloat16")
    params = params_for(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    inp = random_inputs(10, 2, 10)
    out = forward(cfg, params)(inp)
    ref = forward(dataclasses.replace(cfg, dtype="float32"), params)(inp)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=5e-2)


def test_discrete_encoder_for_bandit_like_obs(tiny_config):
    cfg = tiny_config(obs_encoder="discrete", obs_shape=(1,), obs_num_values=1, num_actions=10)
    params = params_for(cfg)
    inp = StepInputs(obs=jnp.zeros((2, 5, 1), jnp.int32),
                     prev_action=jnp.full((2, 5), 10, jnp.int32),
                     prev_reward=jnp.zeros((2, 5)))
    f = forward(cfg, params)
    assert f(inp).shape == (2, 5, 10)
    with pytest.raises(ValueError, match="obs_shape"):
        f(inp._replace(obs=jnp.zeros((2, 5, 2), jnp.int32)))
