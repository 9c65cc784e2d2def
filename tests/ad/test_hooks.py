"""Activation capture (ad.hooks): every hook point's name and shape, the activations of
the very forward pass used in training, and their meaning (residual bookkeeping, patterns)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ad.hooks import run_with_cache
from ad.model import band_mask
from tests.helpers import forward, params_for, random_inputs

A = 5  # Dark Room actions


@pytest.mark.parametrize("layout", ["step", "oar"])
def test_run_with_cache_names_shapes_and_outputs(layout, tiny_config):
    cfg = tiny_config(token_layout=layout, num_layers=2)
    params = params_for(cfg)
    B, T = 2, 10
    N = T * cfg.tokens_per_step
    d, H, Dh, M = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    inp = random_inputs(7, B, T)
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
