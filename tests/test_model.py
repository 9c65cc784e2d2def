"""Tests of the AD transformer: causality, receptive field, alignment, capture, KV cache."""

from __future__ import annotations

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad.model import (
    ADTransformer,
    ModelConfig,
    StepInputs,
    band_mask,
    decode_step,
    init_cache,
    init_params,
    init_recompute_buffer,
    recompute_step,
    run_with_cache,
    running_episode_return,
    step_inputs_from_history,
)

A = 5  # Dark Room actions
VARIANTS = [(layout, pos) for layout in ("step", "oar") for pos in ("rope", "alibi")]
# One variant per layout and per position scheme (compiles are the cost of these tests).
CAUSAL_VARIANTS = [("step", "rope"), ("oar", "alibi")]


def tiny(**kw) -> ModelConfig:
    base = dict(num_actions=A, obs_encoder="cell", obs_shape=(2,), obs_num_values=9,
                d_model=16, num_layers=2, num_heads=2, mlp_dim=32, context=3,
                dropout=0.0, attn_dropout=0.0, token_mask_prob=0.0)
    base.update(kw)
    return ModelConfig(**base)


def history(seed, B, T, size=9):
    """A random (obs, action, reward) window, host-side (no per-test compiles)."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, size, (B, T, 2)).astype(np.int32)
    action = rng.integers(0, A, (B, T)).astype(np.int32)
    reward = (rng.random((B, T)) < 0.4).astype(np.float32)
    return obs, action, reward


def inputs_np(seed, B, T) -> StepInputs:
    obs, action, reward = history(seed, B, T)
    prev_action = np.concatenate([np.full((B, 1), A), action[:, :-1]], 1).astype(np.int32)
    prev_reward = np.concatenate([np.zeros((B, 1)), reward[:, :-1]], 1).astype(np.float32)
    return StepInputs(obs, prev_action, prev_reward)


@functools.lru_cache(maxsize=None)
def _jitted_forward(cfg):
    model = ADTransformer(cfg)

    @jax.jit
    def f(params, inp, valid=None, rng=None):
        if rng is None:
            return model.apply({"params": params}, inp, train=False, valid=valid)
        return model.apply({"params": params}, inp, train=True, rngs={"dropout": rng})

    return f


def forward(cfg, params):
    """A jitted forward (optionally with a valid mask or a dropout key), shared across
    tests with the same config so equal shapes compile once."""
    f = _jitted_forward(cfg)
    return lambda inp, valid=None, rng=None: f(params, inp, valid, rng)


@functools.lru_cache(maxsize=None)
def params_for(cfg):
    return init_params(cfg, jax.random.key(0))


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
def test_config_json_roundtrip_and_for_env():
    cfg = ModelConfig.for_env(envs.make("darkroom"), context=7, token_layout="oar")
    assert (cfg.num_actions, cfg.obs_shape, cfg.obs_num_values, cfg.obs_encoder) == (
        5, (2,), 9, "cell")
    back = ModelConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg
    with pytest.raises(ValueError, match="token_layout"):
        tiny(token_layout="interleaved")
    with pytest.raises(ValueError, match="num_heads"):
        tiny(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({"num_actions": 5, "bogus": 1})


def test_band_mask_by_hand():
    m = band_mask(4, 2, 1).astype(int)
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    # "oar": step 1's tokens see all of step 0 (c=2) and their own step up to themselves.
    m = band_mask(2, 2, 3).astype(int)
    np.testing.assert_array_equal(m[3:], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0],
                                          [1, 1, 1, 1, 1, 1]])


def test_step_inputs_from_history_by_hand():
    obs = jnp.arange(8).reshape(1, 4, 2)
    action = jnp.array([[3, 1, 4, 0]])
    reward = jnp.array([[0.5, 0.0, 1.0, 2.0]])
    inp = step_inputs_from_history(obs, action, reward, num_actions=A)
    np.testing.assert_array_equal(inp.prev_action, [[A, 3, 1, 4]])
    np.testing.assert_allclose(inp.prev_reward, [[0.0, 0.5, 0.0, 1.0]])
    # Mid-stream window: the step before the window is used.
    inp = step_inputs_from_history(obs, action, reward, num_actions=A,
                                   stream_start=jnp.array([False]),
                                   action_before=jnp.array([2]), reward_before=jnp.array([7.0]))
    np.testing.assert_array_equal(inp.prev_action, [[2, 3, 1, 4]])
    np.testing.assert_allclose(inp.prev_reward, [[7.0, 0.5, 0.0, 1.0]])
    # The stream starts at index 2 of the window: that step gets the none token.
    inp = step_inputs_from_history(obs, action, reward, num_actions=A,
                                   stream_start=jnp.array([2]),
                                   action_before=jnp.array([2]), reward_before=jnp.array([7.0]))
    np.testing.assert_array_equal(inp.prev_action, [[2, 3, A, 4]])
    np.testing.assert_allclose(inp.prev_reward, [[7.0, 0.5, 0.0, 1.0]])
    with pytest.raises(ValueError, match="action_before"):
        step_inputs_from_history(obs, action, reward, num_actions=A, stream_start=False)
    # Episode starts: done[t-1], the step before the window for its first step, and
    # every stream start.
    done = jnp.array([[False, True, False, True]])
    inp = step_inputs_from_history(obs, action, reward, num_actions=A, done=done)
    np.testing.assert_array_equal(inp.episode_start, [[True, False, True, False]])
    inp = step_inputs_from_history(obs, action, reward, num_actions=A, done=done,
                                   stream_start=jnp.array([False]), action_before=jnp.array([2]),
                                   reward_before=jnp.array([7.0]), done_before=jnp.array([False]))
    np.testing.assert_array_equal(inp.episode_start, [[False, False, True, False]])
    assert step_inputs_from_history(obs, action, reward, num_actions=A).episode_start is None
    # Previous observations: obs[t-1], the step before a mid-stream window for its first
    # step, zeros (never read: prev_action is "none") where the stream starts.
    inp = step_inputs_from_history(obs, action, reward, num_actions=A, with_prev_obs=True)
    np.testing.assert_array_equal(inp.prev_obs, [[[0, 0], [0, 1], [2, 3], [4, 5]]])
    inp = step_inputs_from_history(obs, action, reward, num_actions=A, with_prev_obs=True,
                                   stream_start=jnp.array([False]), action_before=jnp.array([2]),
                                   reward_before=jnp.array([7.0]), obs_before=jnp.array([[8, 6]]))
    np.testing.assert_array_equal(inp.prev_obs, [[[8, 6], [0, 1], [2, 3], [4, 5]]])
    assert step_inputs_from_history(obs, action, reward, num_actions=A).prev_obs is None
    # Reward so far in the episode: 0 at an episode start, then the sum of the episode's
    # earlier rewards; a mid-episode window starts from what came before it.
    inp = step_inputs_from_history(obs, action, reward, num_actions=A, done=done,
                                   with_episode_return=True)
    np.testing.assert_allclose(inp.episode_return, [[0.0, 0.5, 0.0, 1.0]])
    inp = step_inputs_from_history(obs, action, reward, num_actions=A, done=done,
                                   stream_start=jnp.array([False]), action_before=jnp.array([2]),
                                   reward_before=jnp.array([7.0]), done_before=jnp.array([False]),
                                   with_episode_return=True, return_before=np.array([3.0]))
    np.testing.assert_allclose(inp.episode_return, [[3.0, 3.5, 0.0, 1.0]])
    assert step_inputs_from_history(obs, action, reward, num_actions=A).episode_return is None
    with pytest.raises(ValueError, match="needs done"):
        step_inputs_from_history(obs, action, reward, num_actions=A, with_episode_return=True)


def test_running_episode_return_by_hand():
    reward = np.array([[1, 0, 2, 1, 1, 0, 5], [0, 1, 1, 1, 0, 0, 1]], np.float32)
    start = np.array([[1, 0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0]], bool)
    got = running_episode_return(reward, start, before=np.array([0.0, 4.0]))
    np.testing.assert_array_equal(got, [[0, 1, 1, 0, 1, 2, 0], [4, 4, 0, 1, 2, 2, 2]])
    assert got.dtype == np.float32


def with_episode_starts(inputs: StepInputs, seed: int) -> StepInputs:
    """The same inputs with random episode boundaries (the first step starts one)."""
    B, T = inputs.prev_action.shape
    start = np.random.default_rng(seed).random((B, T)) < 0.15
    start[:, 0] = True
    return inputs._replace(episode_start=start)


def test_episode_start_token_is_read_only_when_configured():
    """With episode_start_token the boundaries change the logits from that step on (never
    before: causal); without it they are ignored; a model that needs them says so."""
    inp = with_episode_starts(inputs_np(4, 2, 12), 0)
    moved = np.array(inp.episode_start)
    moved[:, 7] = ~moved[:, 7]
    on = tiny(episode_start_token=True)
    f = forward(on, params_for(on))
    a, b = np.asarray(f(inp)), np.asarray(f(inp._replace(episode_start=moved)))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7] - b[:, 7]).max() > 1e-4
    off = tiny()
    g = forward(off, params_for(off))
    np.testing.assert_array_equal(np.asarray(g(inp)),
                                  np.asarray(g(inp._replace(episode_start=moved))))
    with pytest.raises(ValueError, match="episode_start"):
        f(inp._replace(episode_start=None))


def with_episode_return(inputs: StepInputs) -> StepInputs:
    """The same inputs with the reward so far in each episode (needs episode_start)."""
    prev_reward = np.asarray(inputs.prev_reward)
    reward = np.concatenate([prev_reward[:, 1:], np.zeros_like(prev_reward[:, :1])], 1)
    return inputs._replace(episode_return=running_episode_return(reward, inputs.episode_start))


def test_episode_return_token_is_read_only_when_configured():
    """With episode_return_token the running return changes the logits from that step on
    (never before), without it it is ignored; a model that needs it says so."""
    inp = with_episode_return(with_episode_starts(inputs_np(4, 2, 12), 0))
    moved = np.array(inp.episode_return)
    moved[:, 7] += 1.0
    on = tiny(episode_return_token=True)
    f = forward(on, params_for(on))
    a, b = np.asarray(f(inp)), np.asarray(f(inp._replace(episode_return=moved)))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7] - b[:, 7]).max() > 1e-4
    off = tiny()
    g = forward(off, params_for(off))
    np.testing.assert_array_equal(np.asarray(g(inp)),
                                  np.asarray(g(inp._replace(episode_return=moved))))
    with pytest.raises(ValueError, match="episode_return"):
        f(inp._replace(episode_return=None))
    with pytest.raises(ValueError, match="episode_return_token"):
        tiny(episode_return_token=True, token_layout="oar")


def with_prev_obs(inputs: StepInputs) -> StepInputs:
    """The same inputs with prev_obs = obs[t-1] (zeros at the stream start)."""
    obs = np.asarray(inputs.obs)
    return inputs._replace(prev_obs=np.concatenate([np.zeros_like(obs[:, :1]), obs[:, :-1]], 1))


def test_prev_obs_token_is_read_only_when_configured():
    """With prev_obs_token obs[t-1] changes the logits from step t on (never before), is
    ignored at a stream start (prev_action "none"), and is ignored without the flag."""
    inp = with_prev_obs(inputs_np(4, 2, 12))
    moved, at_start = np.array(inp.prev_obs), np.array(inp.prev_obs)
    moved[:, 7] = (moved[:, 7] + 3) % 9
    at_start[:, 0] = (at_start[:, 0] + 3) % 9
    on = tiny(prev_obs_token=True)
    f = forward(on, params_for(on))
    a, b = np.asarray(f(inp)), np.asarray(f(inp._replace(prev_obs=moved)))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7] - b[:, 7]).max() > 1e-4
    np.testing.assert_array_equal(a, np.asarray(f(inp._replace(prev_obs=at_start))))
    off = tiny()
    g = forward(off, params_for(off))
    np.testing.assert_array_equal(np.asarray(g(inp)), np.asarray(g(inp._replace(prev_obs=moved))))
    with pytest.raises(ValueError, match="prev_obs"):
        f(inp._replace(prev_obs=None))
    with pytest.raises(ValueError, match="prev_obs_token"):
        tiny(prev_obs_token=True, token_layout="oar")


# ---- causality, receptive field, alignment -----------------------------------------------------
@pytest.mark.parametrize("layout,pos", CAUSAL_VARIANTS)
def test_causality_and_receptive_field(layout, pos):
    cfg = tiny(token_layout=layout, positions=pos, context=3, num_layers=2)
    f = forward(cfg, params_for(cfg))
    T, B = 14, 2
    inp = inputs_np(1, B, T)
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
def test_target_action_never_leaks(layout):
    cfg = tiny(token_layout=layout)
    f = forward(cfg, params_for(cfg))
    obs, action, reward = history(2, 2, 10)
    ts = (0, 4, 8)
    variants = [step_inputs_from_history(obs, action, reward, num_actions=A)]
    for t in ts:
        action2 = action.copy()
        action2[:, t] = (action[:, t] + 1) % A
        reward2 = reward.copy()
        reward2[:, t] += 3.0
        variants += [step_inputs_from_history(obs, action2, reward, num_actions=A),
                     step_inputs_from_history(obs, action, reward2, num_actions=A)]
    out = np.asarray(f(jax.tree.map(lambda *x: jnp.concatenate(x, 0), *variants)))
    out = out.reshape(len(variants), 2, 10, A)
    for n, t in enumerate(ts):
        for changed in out[1 + 2 * n: 3 + 2 * n]:
            np.testing.assert_allclose(changed[:, : t + 1], out[0][:, : t + 1], atol=1e-6)
            assert np.abs(changed[:, t + 1] - out[0][:, t + 1]).max() > 1e-5


def test_valid_mask_equals_unpadded_forward():
    cfg = tiny()
    f = forward(cfg, params_for(cfg))
    inp = inputs_np(3, 2, 6)
    pad = 4
    ref = f(inp)
    padded = jax.tree.map(lambda x: np.concatenate([np.ones_like(x[:, :pad]) * 3, x], 1), inp)
    valid = np.broadcast_to(np.arange(6 + pad) >= pad, (2, 6 + pad))
    out = f(padded, valid)
    np.testing.assert_allclose(out[:, pad:], ref, atol=1e-5)


@pytest.mark.parametrize("layout,pos", CAUSAL_VARIANTS)
def test_blocked_attention_equals_dense(layout, pos):
    # T=10 is not a multiple of c=3: the blocked impl pads to 4 blocks and must not care.
    cfg = tiny(token_layout=layout, positions=pos, attention_impl="blocked")
    params = params_for(cfg)
    inp = inputs_np(11, 2, 10)
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
def test_train_randomness_only_with_train_flag():
    cfg = tiny(dropout=0.2, attn_dropout=0.3, token_mask_prob=0.3)
    f = forward(cfg, params_for(cfg))
    inp = inputs_np(4, 2, 10)
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


def test_token_masking_replaces_inputs():
    # With masking probability ~1 every token is the mask embedding: inputs stop mattering.
    cfg = tiny(token_mask_prob=0.999999)
    f = forward(cfg, params_for(cfg))
    la = f(inputs_np(5, 2, 6), rng=jax.random.key(3))
    lb = f(inputs_np(6, 2, 6), rng=jax.random.key(3))
    np.testing.assert_allclose(la, lb, atol=1e-6)


# ---- activation capture -------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["step", "oar"])
def test_run_with_cache_names_shapes_and_outputs(layout):
    cfg = tiny(token_layout=layout, num_layers=2)
    params = params_for(cfg)
    B, T = 2, 10
    N = T * cfg.tokens_per_step
    d, H, Dh, M = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    inp = inputs_np(7, B, T)
    ref = forward(cfg, params)(inp)
    logits, cache = jax.jit(lambda p, i: run_with_cache(p, cfg, i))(params, inp)
    np.testing.assert_array_equal(logits, ref)
    expected = {"hook_embed": (B, N, d), "ln_final.hook_normalized": (B, T, d),
                "hook_logits": (B, T, A)}
    for l in range(cfg.num_layers):
        p = f"blocks.{l}."
        expected.update({
            p + "hook_resid_pre": (B, N, d), p + "ln1.hook_normalized": (B, N, d),
            p + "attn.hook_q": (B, N, H, Dh), p + "attn.hook_k": (B, N, H, Dh),
            p + "attn.hook_v": (B, N, H, Dh), p + "attn.hook_pattern": (B, H, N, N),
            p + "attn.hook_z": (B, N, H, Dh), p + "hook_attn_out": (B, N, d),
            p + "hook_resid_mid": (B, N, d), p + "ln2.hook_normalized": (B, N, d),
            p + "mlp.hook_pre": (B, N, M), p + "mlp.hook_post": (B, N, M),
            p + "hook_mlp_out": (B, N, d), p + "hook_resid_post": (B, N, d)})
    assert {k: v.shape for k, v in cache.items()} == expected
    np.testing.assert_array_equal(cache["hook_logits"], logits)
    # Meaning: residual bookkeeping, pattern rows sum to 1 and vanish outside the band.
    for l in range(cfg.num_layers):
        p = f"blocks.{l}."
        np.testing.assert_allclose(cache[p + "hook_resid_mid"],
                                   cache[p + "hook_resid_pre"] + cache[p + "hook_attn_out"],
                                   atol=1e-6)
        np.testing.assert_allclose(cache[p + "hook_resid_post"],
                                   cache[p + "hook_resid_mid"] + cache[p + "hook_mlp_out"],
                                   atol=1e-6)
        pattern = np.asarray(cache[p + "attn.hook_pattern"])
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
        assert np.all(pattern[..., ~band_mask(T, cfg.context, cfg.tokens_per_step)] == 0)
    np.testing.assert_array_equal(
        cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])


# ---- KV cache -------------------------------------------------------------------------------
def _decode_all(params, cfg, inputs: StepInputs):
    """Run decode_step over a whole stream in one lax.scan; logits (B, T, A)."""
    B = inputs.prev_action.shape[0]

    def body(cache, step):
        logits, cache = decode_step(params, cfg, cache, step)
        return cache, logits

    steps = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), inputs)  # time-major
    cache, logits = jax.lax.scan(body, init_cache(cfg, B), steps)
    return jnp.swapaxes(logits, 0, 1), cache


@pytest.mark.parametrize("layout,pos,starts", [(*v, False) for v in VARIANTS]
                         + [("step", "rope", True)])
def test_kv_cache_decode_equals_full_banded_forward(layout, pos, starts):
    cfg = tiny(token_layout=layout, positions=pos, context=4, num_layers=3, d_model=32,
               num_heads=4, mlp_dim=64, episode_start_token=starts, prev_obs_token=starts,
               episode_return_token=starts, obs_encoder="xy" if starts else "cell",
               obs_linear=starts)
    params = params_for(cfg)
    T = 40  # 10x the band
    inp = inputs_np(8, 3, T)
    if starts:
        inp = with_episode_return(with_prev_obs(with_episode_starts(inp, 8)))
    full = forward(cfg, params)(inp)
    dec, cache = jax.jit(lambda p, i: _decode_all(p, cfg, i))(params, inp)
    assert int(cache.step) == T and int(cache.write_index) == T % cfg.context
    np.testing.assert_allclose(dec, full, atol=1e-5)


def test_recompute_baseline_semantics():
    cfg = tiny(context=3, num_layers=2)
    params = params_for(cfg)
    T, c = 12, cfg.context
    inp = inputs_np(9, 2, T)
    f = forward(cfg, params)
    full = f(inp)

    def run(window):
        def body(buf, step):
            logits, buf = recompute_step(params, cfg, buf, step)
            return buf, logits

        steps = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), inp)
        _, logits = jax.jit(lambda b, s: jax.lax.scan(body, b, s))(
            init_recompute_buffer(cfg, 2, window), steps)
        return jnp.swapaxes(logits, 0, 1)

    # window >= receptive field: identical to the full banded forward (and the KV cache).
    np.testing.assert_allclose(run(cfg.receptive_field), full, atol=1e-5)
    # window = c (the paper): the last c steps only, seen afresh at every step.
    paper = run(None)
    np.testing.assert_allclose(paper[:, :c], full[:, :c], atol=1e-5)
    t = 9
    window = jax.tree.map(lambda x: x[:, t - c + 1: t + 1], inp)
    np.testing.assert_allclose(paper[:, t], f(window)[:, -1], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = tiny(dtype="bfloat16")
    params = params_for(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    inp = inputs_np(10, 2, 10)
    out = forward(cfg, params)(inp)
    ref = forward(dataclasses.replace(cfg, dtype="float32"), params)(inp)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=5e-2)


def test_obs_linear_embedding_by_hand():
    """obs_linear adds value / (V - 1) @ W to the tables' embedding, for obs and prev_obs."""
    from ad.model import ObsEncoder
    cfg = tiny(obs_encoder="xy", obs_linear=True)
    obs = jnp.asarray([[[0, 8], [4, 2]]], jnp.int32)  # (B=1, T=2, 2)
    enc = ObsEncoder(cfg)
    p = enc.init(jax.random.key(0), obs)["params"]
    table, w = np.asarray(p["embedding"]), np.asarray(p["linear"])
    assert w.shape == (2, cfg.d_model)
    x, y = np.array([0, 4]), np.array([8, 2])
    want = table[x] + table[9 + y] + np.stack([x, y], -1) / 8.0 @ w
    np.testing.assert_allclose(np.asarray(enc.apply({"params": p}, obs))[0], want, atol=1e-6)
    # Without the flag no "linear" parameter exists: old checkpoints load unchanged.
    plain = ObsEncoder(tiny(obs_encoder="xy")).init(jax.random.key(0), obs)["params"]
    assert set(plain) == {"embedding"}
    params = params_for(tiny(obs_encoder="xy", obs_linear=True, prev_obs_token=True))
    assert "linear" in params["obs_embed"] and "linear" in params["prev_obs_embed"]
    with pytest.raises(ValueError, match="obs_linear"):
        tiny(obs_encoder="cell", obs_linear=True)


def test_discrete_encoder_for_bandit_like_obs():
    cfg = tiny(obs_encoder="discrete", obs_shape=(1,), obs_num_values=1, num_actions=10)
    params = params_for(cfg)
    inp = StepInputs(obs=jnp.zeros((2, 5, 1), jnp.int32),
                     prev_action=jnp.full((2, 5), 10, jnp.int32),
                     prev_reward=jnp.zeros((2, 5)))
    f = forward(cfg, params)
    assert f(inp).shape == (2, 5, 10)
    with pytest.raises(ValueError, match="obs_shape"):
        f(inp._replace(obs=jnp.zeros((2, 5, 2), jnp.int32)))
