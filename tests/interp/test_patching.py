"""Activation patching (ad.interp.patching): both engines equal a Python loop of single
patched forwards cell by cell, patching clean into clean does nothing, the corrupted
residual reproduces the corrupted logits, and attribution patching is the derivative."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ad import hooks
from ad.interp.patching import Metric, _reference, attribution_patch, patch_sweep
from tests.helpers import params_for, random_inputs


def _pair(seed, B=3, T=8):
    clean = random_inputs(seed, B, T)
    # The corrupted context: the same stream with every reward flipped.
    return clean, clean._replace(prev_reward=1.0 - clean.prev_reward)


def _loop(params, cfg, clean, corrupt, hook, grid, metric="logit_diff"):
    """The TransformerLens way: one patched forward per cell, in a Python loop."""
    dense = dataclasses.replace(cfg, attention_impl="dense")
    L, H, M = cfg.num_layers, cfg.num_heads, cfg.mlp_dim
    T = clean.prev_action.shape[1]
    N = T * cfg.tokens_per_step
    names = [f"blocks.{l}.{hook}" for l in range(L)]
    cl_logits, cl = hooks.run_with_hooks(params, dense, clean, capture=names)
    co_logits = hooks.run_with_hooks(params, dense, corrupt)
    m = Metric(metric)
    ref = _reference(cl_logits[:, -1], co_logits[:, -1], m)
    run = jax.jit(lambda e: m(hooks.run_with_hooks(params, dense, corrupt, e)[:, -1], ref))
    sizes = {"layer_pos": (L, N), "layer_head": (L, H), "layer_head_pos": (L, H, N),
             "neuron": (L, M)}[grid]
    out = np.zeros(sizes)
    for idx in np.ndindex(*sizes):
        l, sel = idx[0], {}
        if grid == "layer_pos":
            sel = dict(positions=[idx[1]], num_positions=N)
        elif grid == "layer_head":
            sel = dict(heads=[idx[1]])
        elif grid == "layer_head_pos":
            sel = dict(heads=[idx[1]], positions=[idx[2]], num_positions=N)
        else:
            sel = dict(neurons=[idx[1]], positions=[N - 1], num_positions=N)
        out[idx] = run({names[l]: hooks.patch(names[l], cfg, cl[names[l]], **sel)})
    return out


CASES = [("hook_resid_pre", "layer_pos"), ("attn.hook_z", "layer_head_pos"),
         ("mlp.hook_post", "neuron"), ("hook_resid_mid", "layer_pos")]


@pytest.mark.parametrize("hook,grid", CASES)
def test_sweep_engines_equal_the_python_loop(hook, grid, tiny_config):
    cfg = tiny_config()
    params = params_for(cfg)
    clean, corrupt = _pair(1)
    loop = _loop(params, cfg, clean, corrupt, hook, grid)
    assert np.abs(loop).max() > 5e-3  # the sweep measures something
    for engine in ("exact", "fast"):
        res = patch_sweep(params, cfg, clean, corrupt, hook, grid, engine=engine, chunk=7)
        np.testing.assert_allclose(res.values, loop, atol=2e-5, rtol=1e-4, err_msg=engine)


@pytest.mark.parametrize("layout,pos", [("oar", "alibi"), ("step", "rope")])
def test_fast_engine_on_deeper_models_and_both_layouts(layout, pos, tiny_config):
    """Three layers (a full middle block to resume through), 3 tokens per step, ALiBi."""
    cfg = tiny_config(num_layers=3, token_layout=layout, positions=pos)
    params = params_for(cfg)
    clean, corrupt = _pair(2, B=2, T=5)
    for hook, grid in (("hook_resid_pre", "layer_pos"), ("attn.hook_z", "layer_head_pos")):
        loop = _loop(params, cfg, clean, corrupt, hook, grid, "kl")
        res = patch_sweep(params, cfg, clean, corrupt, hook, grid, metric="kl", engine="fast")
        np.testing.assert_allclose(res.values, loop, atol=2e-6, rtol=1e-4, err_msg=hook)


def test_layer_head_grid_uses_the_exact_engine(tiny_config):
    cfg = tiny_config()
    params = params_for(cfg)
    clean, corrupt = _pair(3)
    loop = _loop(params, cfg, clean, corrupt, "attn.hook_z", "layer_head")
    res = patch_sweep(params, cfg, clean, corrupt, "attn.hook_z", "layer_head")
    np.testing.assert_allclose(res.values, loop, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="position-local"):
        patch_sweep(params, cfg, clean, corrupt, "attn.hook_v", "layer_pos", engine="fast")


def test_patching_clean_into_clean_changes_nothing(tiny_config):
    cfg = tiny_config()
    params = params_for(cfg)
    clean, _ = _pair(4)
    for hook, grid in CASES[:2]:  # a resid and a per-head grid (each compiles twice)
        for engine in ("exact", "fast"):
            res = patch_sweep(params, cfg, clean, clean, hook, grid, metric="logprob",
                              engine=engine)
            np.testing.assert_allclose(res.values, res.clean, atol=1e-5)
            assert res.clean == res.corrupted


def test_corrupted_residual_at_the_last_layer_reproduces_the_corrupted_logits(tiny_config):
    cfg = tiny_config()
    params = params_for(cfg)
    clean, corrupt = _pair(5)
    name = f"blocks.{cfg.num_layers - 1}.hook_resid_post"
    co_logits, co = hooks.run_with_hooks(params, cfg, corrupt, capture=[name])
    out = hooks.run_with_hooks(params, cfg, clean, {name: hooks.patch(name, cfg, co[name])})
    np.testing.assert_allclose(out, co_logits, atol=1e-6)
    # ... and the normalised metric scores the full clean residual 1, the corrupted 0.
    res = patch_sweep(params, cfg, clean, corrupt, "hook_resid_post", "layer_pos")
    np.testing.assert_allclose(res.values[-1, -1], 1.0, atol=1e-5)
    np.testing.assert_allclose(res.values[-1, :-1], 0.0, atol=1e-6)  # not read by the metric


@pytest.mark.parametrize("hook,grid", [("hook_resid_pre", "layer_pos"),
                                       ("attn.hook_z", "layer_head_pos")])
def test_attribution_patching_is_the_directional_derivative(hook, grid, tiny_config):
    """attr[cell] = d/dε metric(corrupt + ε·(clean − corrupt) on the cell) at ε = 0."""
    cfg = tiny_config(attention_impl="dense")
    params = params_for(cfg)
    clean, corrupt = _pair(6)
    attr = attribution_patch(params, cfg, clean, corrupt, hook, grid)
    L = cfg.num_layers
    N = clean.prev_action.shape[1]
    names = [f"blocks.{l}.{hook}" for l in range(L)]
    cl_logits, cl = hooks.run_with_hooks(params, cfg, clean, capture=names)
    co_logits, co = hooks.run_with_hooks(params, cfg, corrupt, capture=names)
    m = Metric()
    ref = _reference(cl_logits[:, -1], co_logits[:, -1], m)
    eps = 1e-2
    f = jax.jit(lambda e: m(hooks.run_with_hooks(params, cfg, corrupt, e)[:, -1], ref))
    rng = np.random.default_rng(0)
    for _ in range(6):
        idx = tuple(int(rng.integers(s)) for s in attr.values.shape)
        sel = (dict(positions=[idx[1]], num_positions=N) if grid == "layer_pos"
               else dict(heads=[idx[1]], positions=[idx[2]], num_positions=N))
        n = names[idx[0]]
        d = (cl[n] - co[n]) * eps
        plus = f({n: hooks.steer(n, cfg, d, **sel)})
        minus = f({n: hooks.steer(n, cfg, -d, **sel)})
        np.testing.assert_allclose((plus - minus) / (2 * eps), attr.values[idx], atol=2e-3,
                                   rtol=2e-2)
    exact = patch_sweep(params, cfg, clean, corrupt, hook, grid)
    assert np.corrcoef(np.ravel(exact.values), np.ravel(attr.values))[0, 1] > 0.5
