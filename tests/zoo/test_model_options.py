"""The two model options the zoo added: ``positions="none"`` and ``mlp_dim=0``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ad.config import ModelConfig
from ad.hooks import run_with_hooks
from ad.inputs import dummy_inputs
from ad.model import ADTransformer, decode_step, init_cache, init_params


def _cfg(**kw):
    base = dict(num_actions=3, obs_shape=(1,), obs_num_values=1, context=8, d_model=12,
                num_layers=2, num_heads=3, mlp_dim=16, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def _inputs(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    pa = rng.integers(0, cfg.num_actions, (B, T)).astype(np.int32)
    pa[:, 0] = cfg.num_actions
    pr = rng.integers(0, 2, (B, T)).astype(np.float32)
    return dummy_inputs(cfg, B, T)._replace(prev_action=jnp.asarray(pa),
                                            prev_reward=jnp.asarray(pr))


def _params(cfg):
    return jax.jit(init_params, static_argnums=(0, 2))(cfg, jax.random.PRNGKey(0), 2)


def test_no_positions_sees_the_band_as_a_set():
    """One layer, band covering the window: the last logit is invariant to permuting the
    earlier steps with positions='none' (odd head dims allowed), and not with RoPE."""
    T = 8
    for positions, invariant in (("none", True), ("rope", False)):
        cfg = _cfg(positions=positions, num_layers=1, d_model=12,
                   num_heads=3 if positions == "rope" else 4, context=T)
        params = _params(cfg)
        qkv = params["blocks_0"]["qkv"]  # sharpen attention (init is near uniform)
        params["blocks_0"]["qkv"] = {**qkv, "kernel": qkv["kernel"] * 30.0}
        x = _inputs(cfg, 1, T)
        perm = np.concatenate([np.random.default_rng(1).permutation(T - 1), [T - 1]])
        y = x._replace(prev_action=x.prev_action[:, perm], prev_reward=x.prev_reward[:, perm])
        apply = jax.jit(lambda inp: ADTransformer(cfg).apply({"params": params}, inp,
                                                             train=False))
        a, b = np.asarray(apply(x))[0, -1], np.asarray(apply(y))[0, -1]
        assert np.allclose(a, b, atol=1e-5) == invariant, (positions, a - b)
    ModelConfig(**{**dict(num_actions=2, obs_shape=(1,), obs_num_values=1), "d_model": 15,
                   "num_heads": 5, "positions": "none"})  # head dim 3: fine without RoPE
    with pytest.raises(ValueError, match="even head dim"):
        ModelConfig(num_actions=2, obs_shape=(1,), obs_num_values=1, d_model=15, num_heads=5)


def test_kv_cache_decode_equals_the_full_forward():
    """Both options at once (the hand-built models' case), past the band (T > c)."""
    cfg = _cfg(positions="none", mlp_dim=0)
    params = _params(cfg)
    x = _inputs(cfg, 2, 20)
    full = np.asarray(ADTransformer(cfg).apply({"params": params}, x, train=False))
    step = jax.jit(lambda c, s: decode_step(params, cfg, c, s))
    cache = init_cache(cfg, 2)
    for t in range(20):
        logits, cache = step(cache, jax.tree.map(
            lambda v: None if v is None else v[:, t:t + 1], x,
            is_leaf=lambda v: v is None))
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-5, atol=1e-5)


def test_attention_only_has_no_mlp_contribution():
    cfg = _cfg(mlp_dim=0)
    params = _params(cfg)
    blk = params["blocks_0"]
    assert blk["mlp_in"]["kernel"].shape == (12, 0) and "bias" not in blk["mlp_out"]
    _, acts = run_with_hooks(params, cfg, _inputs(cfg, 2, 10), None,
                             capture=lambda n: n.endswith(("hook_mlp_out", "mlp.hook_post",
                                                           "hook_resid_mid",
                                                           "hook_resid_post")))
    for l in range(cfg.num_layers):
        assert np.all(np.asarray(acts[f"blocks.{l}.hook_mlp_out"]) == 0.0)
        assert acts[f"blocks.{l}.mlp.hook_post"].shape[-1] == 0
        np.testing.assert_array_equal(acts[f"blocks.{l}.hook_resid_post"],
                                      acts[f"blocks.{l}.hook_resid_mid"])
    with pytest.raises(ValueError, match="mlp_dim must be an int >= 0"):
        _cfg(mlp_dim=-1)
    with pytest.raises(ValueError, match="d_model must be an int >= 1"):
        _cfg(d_model=0)
