"""Evaluation-time decoding: the rolling KV cache equals the full banded forward, and the
recompute baseline has the paper's semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ad.inputs import StepInputs
from ad.model import decode_step, init_cache, init_recompute_buffer, recompute_step
from tests.helpers import (forward, params_for, random_inputs, with_episode_starts,
                           with_prev_obs)

VARIANTS = [(layout, pos) for layout in ("step", "oar") for pos in ("rope", "alibi")]


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
def test_kv_cache_decode_equals_full_banded_forward(layout, pos, starts, tiny_config):
    cfg = tiny_config(token_layout=layout, positions=pos, context=4, num_layers=3, d_model=32,
                      num_heads=4, mlp_dim=64, episode_start_token=starts,
                      prev_obs_token=starts, obs_encoder="xy" if starts else "cell")
    params = params_for(cfg)
    T = 40  # 10x the band
    inp = random_inputs(8, 3, T)
    if starts:
        inp = with_prev_obs(with_episode_starts(inp, 8))
    full = forward(cfg, params)(inp)
    dec, cache = jax.jit(lambda p, i: _decode_all(p, cfg, i))(params, inp)
    assert int(cache.step) == T and int(cache.write_index) == T % cfg.context
    np.testing.assert_allclose(dec, full, atol=1e-5)


def test_recompute_baseline_semantics(tiny_config):
    cfg = tiny_config(context=3, num_layers=2)
    params = params_for(cfg)
    T, c = 12, cfg.context
    inp = random_inputs(9, 2, T)
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
