"""The interpretability toolkit recovers the mechanism planted in a hand-built model.

Predictions (written with the weights, ad/zoo/handbuilt.py, before these tests ran):
- Patching: corrupting the rewards of arm X's pulls changes only head X's output (the
  other mean heads never attend to arm X's tokens), so patching ``attn.hook_z`` head by
  head restores the clean logit difference through head X alone (normalised effect 1)
  and through every other head not at all (0).
- Probes: each arm's empirical mean is written into one residual dimension (``u_a``) by
  its head, so a linear probe on the final residual reads it with R² ~ 1, mostly from
  that dimension; shuffled labels score ~0; the input embedding (one pull) scores far less.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ad.inputs import dummy_inputs
from ad.interp.cache import run_with_cache
from ad.interp.patching import patch_sweep
from ad.interp.probes import probe_hook
from ad.zoo import handbuilt as hb


def _inputs(cfg, prev_action, prev_reward):
    return dummy_inputs(cfg, *prev_action.shape)._replace(
        prev_action=jnp.asarray(prev_action, jnp.int32),
        prev_reward=jnp.asarray(prev_reward, jnp.float32))


def test_patching_finds_the_designed_head():
    A, X, B = 5, 2, 6
    cfg, params = hb.build(A, "greedy")
    rng = np.random.default_rng(0)
    pulls = np.tile(np.arange(A), 8)  # every arm pulled 8 times: no unpulled-arm head
    pa = np.concatenate([[A], pulls])[None].repeat(B, 0)  # (B, 41)
    pr = rng.integers(0, 2, pa.shape).astype(np.float32)
    pr[:, 0] = 0.0
    for a in range(A):  # every other arm has a failure: arm X (all successes) is best
        pr[:, 1 + a] = 0.0
    clean, corrupt = pr.copy(), pr.copy()
    clean[pa == X] = 1.0
    corrupt[pa == X] = 0.0
    c_in, k_in = _inputs(cfg, pa, clean), _inputs(cfg, pa, corrupt)
    res = patch_sweep(params, cfg, c_in, k_in, "attn.hook_z", "layer_head")
    effect = np.asarray(res.values)[0]  # (H,)
    print(f"patching effect per head (designed: head {X}): {np.round(effect, 4)}")
    assert res.axes == ("layer", "head")
    np.testing.assert_allclose(effect[X], 1.0, atol=1e-3)
    others = np.delete(effect, X)
    np.testing.assert_allclose(others, 0.0, atol=1e-3)
    # control: another corruption (arm 0 all successes, arm X's first pull a failure)
    # moves heads 0 and X, and only them
    corrupt2 = clean.copy()
    corrupt2[pa == 0] = 1.0
    corrupt2[:, 1 + X] = 0.0
    res2 = patch_sweep(params, cfg, c_in, _inputs(cfg, pa, corrupt2), "attn.hook_z",
                       "layer_head")
    effect2 = np.asarray(res2.values)[0]
    assert effect2[0] > 0.05 and effect2[X] > 0.05, effect2
    np.testing.assert_allclose(np.delete(effect2, [0, X]), 0.0, atol=1e-3)


def test_probes_read_each_arm_mean_where_the_weights_write_it():
    A, B, T = 5, 60, 100
    cfg, params = hb.build(A, "greedy")
    lay = hb.layout(A, "greedy")
    rng = np.random.default_rng(1)
    means = rng.random((B, A))
    action = rng.integers(0, A, (B, T))
    reward = (rng.random((B, T)) < np.take_along_axis(means, action, 1)).astype(np.float32)
    pa = np.concatenate([np.full((B, 1), A), action[:, :-1]], 1)
    pr = np.concatenate([np.zeros((B, 1), np.float32), reward[:, :-1]], 1)
    _, cache = run_with_cache(params, cfg, _inputs(cfg, pa, pr),
                              names_filter=["hook_embed", "blocks.0.hook_resid_post"])
    acts = {k: np.asarray(v) for k, v in cache.items()}
    onehot = pa[..., None] == np.arange(A)
    n = np.cumsum(onehot, 1)
    s = np.cumsum(onehot * pr[..., None], 1)
    for a in (0, 3):
        mask = (n[..., a] >= 1) & (np.arange(T) >= 5)
        label = np.where(n[..., a] > 0, s[..., a] / np.maximum(n[..., a], 1), 0.0)
        res = probe_hook(acts, "blocks.0.hook_resid_post", label, np.arange(B), mask)
        assert res.score > 0.99, res.score
        assert res.control_score < 0.1, res.control_score
        assert res.embed_score < res.score - 0.3, res.embed_score
        w = np.abs(res.direction)
        print(f"arm {a}: R2 {res.score:.4f}, shuffled {res.control_score:.4f}, embedding "
              f"{res.embed_score:.4f}, weight² on u_a {w.max() ** 2 / (w ** 2).sum():.4f}")
        assert int(np.argmax(w)) == lay.readout[a]
