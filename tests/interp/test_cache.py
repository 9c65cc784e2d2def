"""The activation cache (ad.interp.cache): the residual decomposes exactly into what each
component wrote, direct logit attribution sums to the logits with the final LayerNorm's
scale frozen, the logit lens ends at the logits, and mean activations are means."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ad import hooks
from ad.interp.cache import mean_activations, run_with_cache
from ad.interp.streams import Stream, select, to_inputs, token_positions
from tests.helpers import (params_for, random_inputs, random_stream, with_episode_starts,
                           with_prev_obs)

A = 5


def _variant(tiny_config, layout):
    if layout == "step":  # every input term, so every embedding part is a component
        cfg = tiny_config(episode_start_token=True, prev_obs_token=True, obs_encoder="xy")
        inp = with_prev_obs(with_episode_starts(random_inputs(3, 2, 9), 3))
    else:
        cfg = tiny_config(token_layout="oar", positions="alibi", num_layers=3)
        inp = random_inputs(3, 2, 9)
    return cfg, params_for(cfg), inp


@pytest.mark.parametrize("layout", ["step", "oar"])
def test_decomposition_and_dla_sum_exactly(layout, tiny_config):
    cfg, params, inp = _variant(tiny_config, layout)
    logits, cache = run_with_cache(params, cfg, inp)
    final = cache.final_residual()
    for heads in (False, True):
        stack, labels = cache.decompose_resid(heads=heads)
        assert stack.shape[0] == len(labels)
        np.testing.assert_allclose(stack.sum(0), final, atol=1e-5)
    assert labels[:1] == ["embed.obs"] and f"L{cfg.num_layers - 1}H1" in labels
    # DLA: the logit of every action, and a difference, summed over components.
    for a in range(A):
        attrs, labels = cache.dla(a)
        np.testing.assert_allclose(attrs.sum(0), logits[..., a], atol=1e-5)
    chosen = np.argmax(np.asarray(logits), -1)
    attrs, _ = cache.dla(chosen, incorrect=(chosen + 1) % A)
    np.testing.assert_allclose(
        attrs.sum(0), np.take_along_axis(np.asarray(logits), chosen[..., None], -1)[..., 0]
        - np.take_along_axis(np.asarray(logits), ((chosen + 1) % A)[..., None], -1)[..., 0],
        atol=1e-5)
    # The logit lens: its last row is the model's logits; its first reads the embedding.
    lens, lens_labels = cache.logit_lens()
    np.testing.assert_allclose(lens[-1], logits, atol=1e-5)
    assert lens_labels[0] == "0_pre" and lens_labels[-1] == "final_post"
    np.testing.assert_allclose(cache.accumulated_resid()[0][0], cache.at_steps("hook_embed"))


def test_head_results_plus_bias_are_the_attention_output(tiny_config):
    cfg = tiny_config()
    params = params_for(cfg)
    _, cache = run_with_cache(params, cfg, random_inputs(1, 2, 7))
    for l in range(cfg.num_layers):
        res, labels = cache.stack_head_results(layer=l, only=True)
        assert labels == [f"L{l}H{h}" for h in range(cfg.num_heads)]
        np.testing.assert_allclose(res.sum(0) + params[f"blocks_{l}"]["attn_out"]["bias"],
                                   cache.at_steps(f"blocks.{l}.hook_attn_out"), atol=1e-6)


def test_names_filter_and_clear_errors(tiny_config):
    cfg = tiny_config()
    _, cache = run_with_cache(params_for(cfg), cfg, random_inputs(1, 1, 4),
                              names_filter=["blocks.0.hook_resid_post"])
    assert list(cache) == ["blocks.0.hook_resid_post"]
    with pytest.raises(KeyError, match="not cached"):
        cache["blocks.1.hook_resid_post"]
    with pytest.raises(KeyError, match="unknown hook"):
        cache["blocks.1.hook_resid"]


def test_mean_activations_are_means_and_mean_ablation_uses_them(tiny_config):
    cfg = tiny_config(attention_impl="dense")
    params = params_for(cfg)
    inp = random_inputs(2, 5, 6)
    names = ["blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"]
    means = mean_activations(params, cfg, inp, names, batch_size=2)  # chunks of 2, 2, 1
    _, acts = hooks.run_with_hooks(params, cfg, inp, capture=names)
    np.testing.assert_allclose(means[names[0]], np.mean(acts[names[0]], (0, 1), keepdims=True),
                               atol=1e-6)
    np.testing.assert_allclose(means[names[1]], np.mean(acts[names[1]], (0, 1), keepdims=True),
                               atol=1e-6)
    edit = {names[0]: hooks.ablate(names[0], cfg, value=means[names[0]], heads=1)}
    _, cache = run_with_cache(params, cfg, inp, hooks_=edit)
    z = np.asarray(cache[names[0]])
    np.testing.assert_allclose(z[:, :, 1], np.broadcast_to(means[names[0]][:, :, 1],
                                                           z[:, :, 1].shape), atol=1e-7)


def test_selectors_on_a_cache_pick_the_predicting_tokens(tiny_config):
    cfg = tiny_config(token_layout="oar")
    params = params_for(cfg)
    obs, action, reward = random_stream(4, 2, 8)
    done = np.zeros((2, 8), bool)
    done[:, 3] = True
    stream = Stream(obs, action, reward, done)
    _, cache = run_with_cache(params, cfg, to_inputs(stream, cfg), stream=stream)
    mask = cache.select(rewarded=True)
    np.testing.assert_array_equal(mask, select(stream, rewarded=True))
    tokens = token_positions(mask, cfg)
    resid = np.asarray(cache["blocks.1.hook_resid_post"])
    np.testing.assert_array_equal(resid[tokens], np.asarray(cache.at_steps(
        "blocks.1.hook_resid_post"))[mask])
    # A per-row token mask selects positions of an intervention directly.
    w = hooks.where("blocks.1.hook_resid_post", cfg, positions=tokens)
    assert w.shape == (2, 24, 1) and np.array_equal(w[..., 0], tokens)
