"""SAE families, metrics, splicing into the model, and the activation store (issue 22).

Hand-computed values where a number is checked; a perfect dictionary and an identity edit
for splicing; a store killed mid-write for resume.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from ad import evaluate as ev
from ad.hooks import run_with_hooks
from ad.interp.sae.metrics import reconstruction
from ad.interp.sae.models import SAE, SAEConfig, Sparsity, Splice, jump, step
from ad.interp.sae.train import TrainConfig, loss_fn
from tests.helpers import random_inputs

ROOT = Path(__file__).resolve().parents[3]
HOOK = "blocks.0.hook_resid_post"


def _splice(cfg, params, k=1, l1=0.0, scale=1.0):
    return Splice(params={n: jnp.asarray(v, jnp.float32) for n, v in params.items()},
                  sparsity=Sparsity(jnp.float32(l1), jnp.int32(k)),
                  scale=jnp.float32(scale), config=cfg)


def _perfect(d):
    """Encoder [I; -I], decoder [I, -I]: ReLU passes x through exactly."""
    eye = np.eye(d, dtype=np.float32)
    cfg = SAEConfig(kind="relu", d_in=d, width=2 * d)
    return _splice(cfg, {"W_enc": np.concatenate([eye, -eye], 1), "b_enc": np.zeros(2 * d),
                         "W_dec": np.concatenate([eye, -eye], 0), "b_dec": np.zeros(d)})


# ---- families ---------------------------------------------------------------------------
def test_topk_has_exactly_k_active_and_they_are_the_largest():
    d, m, k_max = 8, 64, 16
    cfg = SAEConfig(kind="topk", d_in=d, width=m, k_max=k_max)
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.normal(size=(d, m)), "b_enc": np.full(m, 50.0),  # all pre > 0
              "W_dec": rng.normal(size=(m, d)), "b_dec": np.zeros(d)}
    x = jnp.asarray(rng.normal(size=(32, d)), jnp.float32)
    for k in (1, 3, 16):
        z = _splice(cfg, params, k=k).encode(x)
        np.testing.assert_array_equal(np.sum(np.asarray(z) != 0, -1), k)
        pre = np.asarray(x @ params["W_enc"] + 50.0)
        kth = np.sort(pre, -1)[:, -k][:, None]
        np.testing.assert_array_equal(np.asarray(z) != 0, pre >= kth)
        np.testing.assert_allclose(np.asarray(z)[pre >= kth], pre[pre >= kth], rtol=1e-5)


def test_batchtopk_keeps_k_times_batch_latents_over_the_batch():
    d, m = 8, 32
    cfg = SAEConfig(kind="batchtopk", d_in=d, width=m)
    rng = np.random.default_rng(1)
    params = {"W_enc": rng.normal(size=(d, m)), "b_enc": np.zeros(m),
              "W_dec": rng.normal(size=(m, d)), "b_dec": np.zeros(d), "threshold": 0.0}
    x = jnp.asarray(rng.normal(size=(16, d)), jnp.float32)
    _, z = SAE(cfg).apply({"params": params}, x, Sparsity(jnp.float32(0), jnp.int32(3)),
                          train=True, method=SAE.encode)
    assert int(np.sum(np.asarray(z) != 0)) == 3 * 16
    counts = np.sum(np.asarray(z) != 0, -1)
    assert counts.max() != counts.min()  # a batch rule, not k per row


def test_jumprelu_threshold_gradient_by_hand():
    # pre = 0.52 lies within eps/2 of theta = 0.5; 0.3 and 0.9 do not.
    pre = jnp.array([0.52, 0.3, 0.9])
    theta, eps = jnp.array([0.5, 0.5, 0.5]), 0.1
    g_jump = jax.grad(lambda t: jnp.sum(jump(pre, t, eps)))(theta)
    np.testing.assert_allclose(g_jump, [-0.5 / 0.1, 0.0, 0.0], rtol=1e-6)  # -(θ/ε)·rect
    g_step = jax.grad(lambda t: jnp.sum(step(pre, t, eps)))(theta)
    np.testing.assert_allclose(g_step, [-1 / 0.1, 0.0, 0.0], rtol=1e-6)  # -(1/ε)·rect
    g_pre = jax.grad(lambda p: jnp.sum(jump(p, theta, eps)))(pre)
    np.testing.assert_allclose(g_pre, [1.0, 0.0, 1.0])  # H(pre - θ)
    np.testing.assert_array_equal(jump(pre, theta, eps), np.float32([0.52, 0.0, 0.9]))
    # through the whole loss: one latent, pre = x·1 = 0.52, θ = 0.5, L0 coefficient λ = 2:
    # ∂loss/∂log θ = θ·(∂mse/∂θ + λ ∂L0/∂θ), mse = (x - z)² with z = jump(pre)
    cfg = SAEConfig(kind="jumprelu", d_in=1, width=1, bandwidth=eps)
    params = {"W_enc": jnp.ones((1, 1)), "b_enc": jnp.zeros(1), "W_dec": jnp.ones((1, 1)),
              "b_dec": jnp.zeros(1), "log_threshold": jnp.log(jnp.array([0.5]))}
    x = jnp.array([[0.52]])
    g = jax.grad(lambda p: loss_fn(cfg, p, x, Sparsity(jnp.float32(2.0), jnp.int32(0)),
                                   jnp.zeros(1, bool), 1.0)[0])(params)
    # z = 0.52 = x so ∂mse/∂z = 0; only the L0 term: 0.5 · 2 · (-1/0.1) = -10
    np.testing.assert_allclose(g["log_threshold"], [-10.0], rtol=1e-5)


def test_fvu_l0_and_friends_by_hand():
    cfg = SAEConfig(kind="relu", d_in=2, width=2)
    sp = _splice(cfg, {"W_enc": np.eye(2), "b_enc": [-0.5, -0.5], "W_dec": np.eye(2),
                       "b_dec": np.zeros(2)})
    x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    # z = x̂ = relu(x - 0.5) = [[1.5, 0], [0, 0.5], [0.5, 0.5]]
    r = reconstruction(jax.tree.map(lambda a: a[None], sp), x)
    total_var = (1 + 4 / 9) + (1 + 1 / 9) + (0 + 1 / 9)  # about the mean (1, 2/3)
    np.testing.assert_allclose(r.fvu, [1.0 / total_var], rtol=1e-6)  # errors: .25 + .25 + .5
    np.testing.assert_allclose(r.l0, [4 / 3], rtol=1e-6)
    np.testing.assert_allclose(r.mse, [1 / 3], rtol=1e-6)
    np.testing.assert_allclose(r.cosine, [1.0], rtol=1e-6)
    np.testing.assert_allclose(r.shrinkage, [(0.75 + 0.5 + 0.5) / 3], rtol=1e-6)
    np.testing.assert_allclose(r.frequency, [[2 / 3, 2 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(r.dead, [0.0])


def test_grid_training_is_vmap_of_single_runs_and_learns():
    """A grid row (vmap over settings) equals each setting trained alone, and it learns."""
    from ad.interp.sae.models import init_params
    from ad.interp.sae.train import make_train

    rng = np.random.default_rng(2)
    basis = rng.normal(size=(16, 8))
    codes = rng.random((1024, 16)) * (rng.random((1024, 16)) < 0.15)
    data = jnp.asarray(codes @ basis, jnp.float32)
    cfg = SAEConfig(kind="topk", d_in=8, width=32, k_max=4)
    train = make_train(cfg, TrainConfig(steps=40, batch_size=64, lr=3e-3))
    sp = Sparsity(jnp.zeros(2), jnp.array([2, 4]))
    keys = jax.random.split(jax.random.key(0), 2)
    params = jax.vmap(lambda k: init_params(cfg, k))(keys)
    grid = jax.jit(jax.vmap(train, in_axes=(0, 0, None, 0)))(params, sp, data, keys)
    alone = jax.jit(train)(jax.tree.map(lambda a: a[1], params),
                           jax.tree.map(lambda a: a[1], sp), data, keys[1])
    np.testing.assert_allclose(alone.mse, grid.mse[1], rtol=1e-4, atol=1e-5)
    assert float(grid.mse[1, -5:].mean()) < 0.5 * float(grid.mse[1, :5].mean())
    assert np.all(np.asarray(grid.l0) <= np.array([[2.0], [4.0]]))  # ReLU after the top k


# ---- splicing into the model -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_config):
    from ad.model import init_params

    cfg = tiny_config(context=6)
    return cfg, init_params(cfg, jax.random.key(3))


def test_perfect_dictionary_spliced_gives_the_same_logits(tiny):
    cfg, params = tiny
    inputs = random_inputs(0, 3, 14)
    plain = run_with_hooks(params, cfg, inputs)
    spliced = run_with_hooks(params, cfg, inputs, {HOOK: _perfect(cfg.d_model)})
    np.testing.assert_allclose(spliced, plain, atol=1e-5)
    # a non-trivial SAE does change them (the splice is really applied)
    bad = _perfect(cfg.d_model).replace(params={**_perfect(cfg.d_model).params,
                                                "b_enc": jnp.ones(2 * cfg.d_model)})
    assert np.abs(np.asarray(run_with_hooks(params, cfg, inputs, {HOOK: bad}) - plain)).max() > 1e-3


@struct.dataclass
class _Identity:
    """The splice mechanism with the SAE replaced by the identity."""

    def __call__(self, x, name=None):
        return x


def test_splice_in_closed_loop_perfect_same_actions_identity_bit_for_bit(tiny):
    import envs

    cfg, params = tiny
    env = envs.make("darkroom")
    tasks = env.tasks("test")
    key = jax.random.key(5)
    plain = ev.ad_rollout(params, cfg, env, tasks, key, 60, record_policy=True)
    ident = ev.ad_rollout(params, cfg, env, tasks, key, 60, record_policy=True,
                          hooks={HOOK: _Identity()})
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(ident)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    perfect = ev.ad_rollout(params, cfg, env, tasks, key, 60, record_policy=True,
                            hooks={HOOK: _perfect(cfg.d_model)})
    np.testing.assert_array_equal(perfect.action, plain.action)
    np.testing.assert_allclose(perfect.policy, plain.policy, atol=1e-5)


def test_feature_edit_keeps_the_error_term(tiny):
    """Setting a feature to its own value changes nothing; zeroing it removes exactly
    z_f · W_dec,f / s."""
    cfg = SAEConfig(kind="relu", d_in=4, width=6)
    rng = np.random.default_rng(4)
    sp = _splice(cfg, {"W_enc": rng.normal(size=(4, 6)), "b_enc": np.zeros(6),
                       "W_dec": rng.normal(size=(6, 4)), "b_dec": rng.normal(size=4)},
                 scale=2.0)
    x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    z = sp.encode(x)
    f = int(np.argmax(np.asarray(z).sum(0)))
    zeroed = sp.replace(feature=jnp.int32(f), value=jnp.float32(0.0))(x)
    want = x - z[:, f:f + 1] * sp.params["W_dec"][f] / 2.0
    np.testing.assert_allclose(zeroed, want, rtol=1e-5, atol=1e-6)


# ---- the activation store ------------------------------------------------------------------
def _tiny_run(tmp: Path, tiny) -> Path:
    from ad.checkpoints import save_model

    cfg, params = tiny
    run = tmp / "run"
    save_model(run, cfg, params, env="darkroom", env_overrides={})
    return run


STORE_CODE = """
from ad.interp.sae.store import StoreConfig, write_store
write_store({out!r}, StoreConfig(run={run!r}, hooks=({hook!r},), split="test", num_tasks=6,
            rollouts_per_task=1, num_steps=30), shard_size=2, progress=False)
"""


@pytest.mark.slow  # three subprocesses, each compiling a rollout (~1-2 min on 2 cores)
def test_store_killed_while_writing_resumes_without_loss(tmp_path, tiny):
    from ad.interp.sae.store import ActivationStore

    run = _tiny_run(tmp_path, tiny)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    code = STORE_CODE.format(out=str(killed), run=str(run), hook=HOOK)
    dead = subprocess.run([sys.executable, "-c", code], env={**env, "ICRL_FAULTS": "shard_write:2"},
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dead.returncode == -9, dead.stderr  # SIGKILL while writing the second shard
    assert len(list(killed.glob("shard-*"))) == 1 and not (killed / "meta.json").exists()
    for out in (killed, whole):  # resume the killed one; write the other in one go
        ok = subprocess.run([sys.executable, "-c", STORE_CODE.format(out=str(out), run=str(run),
                                                                      hook=HOOK)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr
    a, b = ActivationStore(killed, verify=True), ActivationStore(whole, verify=True)
    assert a.dataset.content_id == b.dataset.content_id  # every file's checksum equal
    np.testing.assert_array_equal(a.activations(HOOK), b.activations(HOOK))
    assert a.activations(HOOK).shape == (6, 30, 16)
    # the store's activations are the model's: replaying the stored streams teacher-forced
    from ad.interp.cache import run_with_cache
    from ad.interp.streams import to_inputs

    cfg, params = tiny
    _, cache = run_with_cache(params, cfg, to_inputs(a.stream(), cfg),
                              names_filter=lambda n: n == HOOK)
    np.testing.assert_allclose(a.activations(HOOK), cache[HOOK], atol=1e-4)
    # and the ground truth is what the stream says
    reward, done = a.step("reward"), a.step("terminated")
    found = np.cumsum(reward, 1) - reward > 0
    np.testing.assert_array_equal(a.meta("goal_found"), found)
    np.testing.assert_array_equal(a.meta("episode"), np.cumsum(done, 1) - done)
