"""Hook points and interventions (ad.hooks): names and meaning of every activation, edits
that do nothing change nothing bit for bit, the KV-cache decode step exposes the same
hooks as the full forward, and interventions mean the same thing in both."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ad import hooks
from ad.evaluate import Resample, ad_rollout
from ad.inputs import stream_inputs
from ad.interp.cache import run_with_cache
from ad.model import band_mask, decode_step, init_cache
from tests.helpers import (forward, params_for, random_inputs, with_episode_starts,
                           with_prev_obs)

A = 5  # Dark Room actions
VARIANTS = [(layout, pos) for layout in ("step", "oar") for pos in ("rope", "alibi")]


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
    expected = {"embed.hook_obs": (B, T, d), "embed.hook_action": (B, T, d),
                "embed.hook_reward": (B, T, d), "hook_embed": (B, N, d),
                "ln_final.hook_normalized": (B, T, d), "hook_logits": (B, T, A)}
    for l in range(cfg.num_layers):
        p = f"blocks.{l}."
        expected.update({
            p + "hook_resid_pre": (B, N, d), p + "ln1.hook_normalized": (B, N, d),
            p + "attn.hook_q": (B, N, H, Dh), p + "attn.hook_k": (B, N, H, Dh),
            p + "attn.hook_rot_q": (B, N, H, Dh), p + "attn.hook_rot_k": (B, N, H, Dh),
            p + "attn.hook_v": (B, N, H, Dh), p + "attn.hook_attn_scores": (B, H, N, N),
            p + "attn.hook_pattern": (B, H, N, N),
            p + "attn.hook_z": (B, N, H, Dh), p + "hook_attn_out": (B, N, d),
            p + "hook_resid_mid": (B, N, d), p + "ln2.hook_normalized": (B, N, d),
            p + "mlp.hook_pre": (B, N, M), p + "mlp.hook_post": (B, N, M),
            p + "hook_mlp_out": (B, N, d), p + "hook_resid_post": (B, N, d)})
    assert {k: v.shape for k, v in cache.items()} == expected
    assert set(expected) == set(hooks.hook_names(cfg, result=False))
    np.testing.assert_array_equal(cache["hook_logits"], logits)
    # Meaning: residual bookkeeping, pattern rows sum to 1 and vanish outside the band,
    # the pattern is the softmax of the scores, q/k rotate into rot_q/rot_k by RoPE.
    allowed = band_mask(T, cfg.context, cfg.tokens_per_step)
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
        assert np.all(pattern[..., ~allowed] == 0)
        scores = np.asarray(cache[p + "attn.hook_attn_scores"])
        assert np.all(scores[..., ~allowed] < -1e29)
        np.testing.assert_allclose(jax.nn.softmax(scores, -1), pattern, atol=1e-6)
        q, rq = np.asarray(cache[p + "attn.hook_q"]), np.asarray(cache[p + "attn.hook_rot_q"])
        np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(rq, axis=-1),
                                   rtol=1e-5)  # a rotation
        np.testing.assert_allclose(q[:, 0], rq[:, 0], atol=1e-6)  # position 0: no rotation
    np.testing.assert_array_equal(
        cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    if layout == "step":  # the token is the sum of its input terms
        np.testing.assert_allclose(cache["hook_embed"], cache["embed.hook_obs"]
                                   + cache["embed.hook_action"] + cache["embed.hook_reward"],
                                   atol=1e-6)


def test_hook_result_sums_to_attn_out(tiny_config):
    cfg = tiny_config()
    params = params_for(cfg)
    _, cache = run_with_cache(params, cfg, random_inputs(3, 2, 8),
                              names_filter=lambda n: n.endswith(("hook_result", "attn_out")))
    for l in range(cfg.num_layers):
        result = np.asarray(cache[f"blocks.{l}.attn.hook_result"])
        assert result.shape == (2, 8, cfg.num_heads, cfg.d_model)
        bias = params[f"blocks_{l}"]["attn_out"]["bias"]
        np.testing.assert_allclose(result.sum(2) + bias, cache[f"blocks.{l}.hook_attn_out"],
                                   atol=1e-6)


def _identities(cfg, skip=("attn.hook_result",)):
    return {n: hooks.identity(n) for n in hooks.hook_names(cfg)
            if hooks.local_name(n) not in skip}


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_identity_interventions_change_nothing_bit_for_bit(impl, tiny_config):
    cfg = tiny_config(attention_impl=impl, episode_start_token=True, prev_obs_token=True,
                      obs_encoder="xy")
    params = params_for(cfg)
    inp = with_prev_obs(with_episode_starts(random_inputs(5, 2, 10), 5))
    ref = forward(cfg, params)(inp)
    # Every hook at once (the blocked impl cannot edit scores/patterns; run_with_hooks
    # switches to dense for those, which is a different summation order).
    skip = ("attn.hook_result",) + (("attn.hook_attn_scores", "attn.hook_pattern")
                                     if impl == "blocked" else ())
    edits = _identities(cfg, skip)
    # Op by op (no jit) every kernel is the model's own and x * 1 + 0 is exact in floating
    # point, so editing every hook with the identity reproduces the model bit for bit.
    with jax.disable_jit():
        np.testing.assert_array_equal(hooks.run_with_hooks(params, cfg, inp, edits),
                                      hooks.run_with_hooks(params, cfg, inp, {}))
    # Jitted, an edited graph may be fused differently from the plain one (a matmul feeding
    # an edit is emitted as its own kernel): equal up to float rounding, not bit for bit...
    run = jax.jit(lambda p, i, e: hooks.run_with_hooks(p, cfg, i, e))  # ref is jitted too
    out = run(params, inp, edits)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    # ...while inside one compiled edit graph, selecting everything with scale 1 and value 0
    # is bit for bit the same as selecting nothing (even with a different value unused).
    nothing = {n: hooks.Intervention(jnp.zeros((1,) * len(hooks.hook_axes(n)), bool),
                                     jnp.float32(0), jnp.float32(7.0)) for n in edits}
    np.testing.assert_array_equal(run(params, inp, nothing), out)
    # Per-head results change the summation order only.
    res = {"blocks.0.attn.hook_result": hooks.identity("blocks.0.attn.hook_result")}
    np.testing.assert_allclose(hooks.run_with_hooks(params, cfg, inp, res), ref, atol=1e-6)


def test_identity_interventions_in_ad_rollout_bit_for_bit(tiny_config, darkroom_env):
    cfg = tiny_config()
    params = params_for(cfg)
    tasks = darkroom_env.tasks("test")
    tasks = jax.tree.map(lambda x: x[:3], tasks)
    key = jax.random.key(4)
    ref = ad_rollout(params, cfg, darkroom_env, tasks, key, 30, record_policy=True)
    out = ad_rollout(params, cfg, darkroom_env, tasks, key, 30, record_policy=True,
                     hooks=_identities(cfg))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
        np.testing.assert_array_equal(a, b)


def test_unknown_hook_name_is_refused(tiny_config):
    cfg = tiny_config()
    with pytest.raises(KeyError, match="hook_zz"):
        hooks.run_with_hooks(params_for(cfg), cfg, random_inputs(0, 1, 4),
                             {"blocks.0.attn.hook_zz": hooks.identity("hook_embed")})


def test_zero_ablation_of_a_head_is_zero_in_its_output(tiny_config):
    cfg = tiny_config(attention_impl="dense")
    params = params_for(cfg)
    inp = random_inputs(2, 2, 6)
    edit = {"blocks.1.attn.hook_z": hooks.ablate("blocks.1.attn.hook_z", cfg, heads=1)}
    _, cache = run_with_cache(params, cfg, inp, hooks_=edit)
    z = np.asarray(cache["blocks.1.attn.hook_z"])
    assert np.all(z[:, :, 1] == 0) and np.abs(z[:, :, 0]).max() > 0
    _, clean = run_with_cache(params, cfg, inp)
    np.testing.assert_array_equal(z[:, :, 0], clean["blocks.1.attn.hook_z"][:, :, 0])
    # The model's own output equals recomputing attn_out by hand from the ablated z.
    w = params["blocks_1"]["attn_out"]
    np.testing.assert_allclose(cache["blocks.1.hook_attn_out"],
                               z.reshape(2, 6, -1) @ w["kernel"] + w["bias"], atol=1e-6)


# ---- the decode step ----------------------------------------------------------------------
def _decode_with_hooks(params, cfg, inputs, edits=None, names=True):
    """decode_step over a whole stream, capturing every hook: logits (B, T, A) and
    {name: (T, ...)} per-step activations."""
    B = inputs.prev_action.shape[0]

    def body(cache, step):
        logits, cache, acts = decode_step(params, cfg, cache, step, hooks=edits, capture=names)
        return cache, (logits, acts)

    steps = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), inputs)
    _, (logits, acts) = jax.lax.scan(body, init_cache(cfg, B), steps)
    return jnp.swapaxes(logits, 0, 1), acts


@pytest.mark.parametrize("layout,pos", VARIANTS)
def test_decode_step_hooks_equal_the_full_forward(layout, pos, tiny_config):
    cfg = tiny_config(token_layout=layout, positions=pos, context=4, attention_impl="dense",
                      episode_start_token=True)
    params = params_for(cfg)
    K, c = cfg.tokens_per_step, cfg.context
    T = 5 * c + 2  # >= 5c: the cache wraps several times
    inp = with_episode_starts(random_inputs(6, 2, T), 6)
    full_logits, full = jax.jit(lambda p, i: run_with_cache(p, cfg, i, names_filter=True)
                                )(params, inp)
    dec_logits, dec = jax.jit(lambda p, i: _decode_with_hooks(p, cfg, i))(params, inp)
    np.testing.assert_allclose(dec_logits, full_logits, atol=1e-5)
    assert set(dec) == set(full.keys())
    slot_pos = np.stack([np.asarray(hooks.slot_positions(cfg, t)) for t in range(T)])
    for name in full:
        axes = hooks.hook_axes(name)
        d, f = np.asarray(dec[name]), np.asarray(full[name])  # d: (T, B, tokens or 1, ...)
        if name.endswith(("hook_rot_q", "hook_rot_k")):
            continue  # slot-phase frame in the cache (ad.hooks); the scores below check it
        if "key_pos" in axes:  # (T, B, H, K, c*K + K) over cache slots vs (B, H, N, N)
            for t in range(T):
                cols = slot_pos[t]
                ok = cols >= 0
                rows = f[:, :, t * K:(t + 1) * K][..., cols[ok]]
                np.testing.assert_allclose(d[t][..., ok], rows, atol=1e-5, err_msg=name)
                if name.endswith("pattern"):
                    assert np.all(d[t][..., ~ok] == 0)
            continue
        unit = 1 if "step" in axes else K
        per_step = np.moveaxis(d, 0, 1).reshape(f.shape[0], T * unit, *f.shape[2:])
        np.testing.assert_allclose(per_step, f, atol=1e-5, err_msg=name)


def test_intervened_decode_writes_intervened_keys_and_values(tiny_config):
    """Steering the values and keys of a few positions in the decode step changes later
    steps exactly as the same edit in the full forward does (so the cache holds the edited
    k/v, not the clean ones)."""
    cfg = tiny_config(context=4, attention_impl="dense")
    params = params_for(cfg)
    T = 14
    inp = random_inputs(9, 2, T)
    rng = np.random.default_rng(0)
    edits = {}
    for name in ("blocks.0.attn.hook_v", "blocks.0.attn.hook_k", "blocks.1.attn.hook_v"):
        edits[name] = hooks.steer(name, cfg, rng.normal(size=(cfg.num_heads, cfg.head_dim)),
                                  positions=[3, 7], num_positions=T, heads=[1])
    # Rotated keys live in the cache's slot frame in the decode step: a rotation-invariant
    # edit (zeroing) means the same thing in both.
    edits["blocks.1.attn.hook_rot_k"] = hooks.ablate("blocks.1.attn.hook_rot_k", cfg,
                                                     positions=[5], num_positions=T, heads=[0])
    ref = hooks.run_with_hooks(params, cfg, inp, edits)
    clean = hooks.run_with_hooks(params, cfg, inp)
    dec, _ = _decode_with_hooks(params, cfg, inp, edits, names=["hook_logits"])
    np.testing.assert_allclose(dec, ref, atol=1e-5)
    assert np.abs(np.asarray(ref[:, 8:]) - np.asarray(clean[:, 8:])).max() > 1e-3
    np.testing.assert_array_equal(ref[:, :3], clean[:, :3])  # causal: nothing before 3


def test_ablation_in_ad_rollout_equals_the_full_forward_replay(tiny_config, darkroom_env):
    cfg = tiny_config(context=4)
    params = params_for(cfg)
    tasks = jax.tree.map(lambda x: x[:4], darkroom_env.tasks("test"))
    edits = {"blocks.1.attn.hook_z": hooks.ablate("blocks.1.attn.hook_z", cfg, heads=0),
             "blocks.0.mlp.hook_post": hooks.ablate("blocks.0.mlp.hook_post", cfg,
                                                    neurons=[1, 5, 7], value=0.3)}
    key = jax.random.key(2)
    ro = ad_rollout(params, cfg, darkroom_env, tasks, key, 40, record_policy=True, hooks=edits)
    plain = ad_rollout(params, cfg, darkroom_env, tasks, key, 40, record_policy=True)
    assert np.abs(np.asarray(ro.policy) - np.asarray(plain.policy)).max() > 1e-3
    inp = stream_inputs(ro.obs, ro.action, ro.reward, ro.done, cfg)
    logits = hooks.run_with_hooks(params, cfg, inp, edits)
    np.testing.assert_allclose(jax.nn.softmax(logits, -1), ro.policy, atol=1e-5)


def test_resample_ablation_uses_the_donor_streams_activations(tiny_config, darkroom_env):
    """With every entry of the final residual resampled, the rollout's policy is the donor
    stream's policy; with nothing selected it is the plain rollout."""
    cfg = tiny_config(context=4)
    params = params_for(cfg)
    test = darkroom_env.tasks("test")
    tasks = jax.tree.map(lambda x: x[:3], test)
    donors = jax.tree.map(lambda x: x[3:6], test)
    name = "ln_final.hook_normalized"
    key = jax.random.key(5)
    full = ad_rollout(params, cfg, darkroom_env, tasks, key, 25, record_policy=True,
                      resample=Resample(donors, {name: np.ones((1, 1, 1), bool)}),
                      record=("hook_logits",))
    none = ad_rollout(params, cfg, darkroom_env, tasks, key, 25, record_policy=True,
                      resample=Resample(donors, {name: np.zeros((1, 1, 1), bool)}))
    plain = ad_rollout(params, cfg, darkroom_env, tasks, key, 25, record_policy=True)
    np.testing.assert_array_equal(none.policy, plain.policy)
    # The donor stream acts with its own keys on its own tasks; replay it independently.
    logits = np.asarray(full.activations["hook_logits"])[:, :, 0]  # (N, S, A)
    np.testing.assert_allclose(jax.nn.softmax(logits, -1), full.policy, atol=1e-6)
    assert np.abs(np.asarray(full.policy) - np.asarray(plain.policy)).max() > 1e-3
    # Every stream received the same donor policy its donor task produces, whatever its
    # own context: two rollouts on different tasks with the same donors agree.
    other = ad_rollout(params, cfg, darkroom_env, donors, key, 25, record_policy=True,
                       resample=Resample(donors, {name: np.ones((1, 1, 1), bool)}))
    np.testing.assert_allclose(other.policy, full.policy, atol=1e-6)


def test_recorded_rollout_activations_equal_the_replay(tiny_config, darkroom_env):
    cfg = tiny_config(context=4)
    params = params_for(cfg)
    tasks = jax.tree.map(lambda x: x[:2], darkroom_env.tasks("train"))
    names = ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z")
    ro = ad_rollout(params, cfg, darkroom_env, tasks, jax.random.key(1), 20,
                    record_policy=True, record=names)
    inp = stream_inputs(ro.obs, ro.action, ro.reward, ro.done, cfg)
    _, acts = hooks.run_with_hooks(params, dataclasses.replace(cfg, attention_impl="dense"),
                                   inp, capture=names)
    for n in names:
        np.testing.assert_allclose(np.asarray(ro.activations[n])[:, :, 0], acts[n],
                                   atol=1e-5, err_msg=n)


def test_a_stack_of_interventions_vmaps_to_the_loop(tiny_config):
    """hooks.stack + jax.vmap over the interventions = one patched forward each."""
    cfg = tiny_config(attention_impl="dense")
    params = params_for(cfg)
    inp = random_inputs(8, 2, 6)
    name = "blocks.0.hook_resid_post"
    edits = [{name: hooks.ablate(name, cfg, positions=[p], num_positions=6)} for p in range(6)]
    batched = jax.vmap(lambda e: hooks.run_with_hooks(params, cfg, inp, e))(hooks.stack(edits))
    for p, e in enumerate(edits):
        np.testing.assert_allclose(batched[p], hooks.run_with_hooks(params, cfg, inp, e),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="same hook names"):
        hooks.stack([edits[0], {"hook_embed": hooks.identity("hook_embed")}])
