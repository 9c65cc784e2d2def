"""Tests of the AD train step: loss by hand, masking, optimiser, and learning a tiny task."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ad.inputs import stream_inputs
from ad.model import ADTransformer, init_params
from ad.train_step import (
    Batch,
    init_train_state,
    loss_fn,
    make_optimizer,
    make_train_step,
    smoothed_cross_entropy,
)

A = 5


@pytest.fixture
def tiny(tiny_config):
    """The tiny model with one layer and a band of 4 steps."""
    return lambda **kw: tiny_config(**{"num_layers": 1, "context": 4, **kw})


def test_label_smoothing_by_hand_two_classes():
    logits = jnp.array([[2.0, -1.0]])
    eps = 0.2
    p0 = math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0))
    # Smoothed target for class 0 with 2 classes: (1 - eps) + eps/2 on 0, eps/2 on 1.
    expected = -((1 - eps / 2) * math.log(p0) + (eps / 2) * math.log(1 - p0))
    got = smoothed_cross_entropy(logits, jnp.array([0]), eps)
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    np.testing.assert_allclose(smoothed_cross_entropy(logits, jnp.array([1]), 0.0),
                               [-math.log(1 - p0)], rtol=1e-6)


def _batch(cfg, seed, B=4, T=8, mask=None):
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 9, (B, T, 2)).astype(np.int32)
    action = rng.integers(0, A, (B, T)).astype(np.int32)
    reward = (rng.random((B, T)) < 0.3).astype(np.float32)
    inputs = stream_inputs(obs, action, reward, np.zeros((B, T), bool), cfg)
    mask = np.ones((B, T), np.float32) if mask is None else mask
    return Batch(inputs=inputs, target_action=jnp.asarray(action), mask=jnp.asarray(mask))


def test_loss_mask_and_accuracy_by_hand(tiny):
    cfg = tiny()
    model = ADTransformer(cfg)
    params = init_params(cfg, jax.random.key(0))
    mask = np.ones((4, 8), np.float32)
    mask[:, 5:] = 0.0
    batch = _batch(cfg, 1, mask=mask)
    evaluate = jax.jit(lambda p, b: loss_fn(p, b, None, model=model, train=False))
    loss, m = evaluate(params, batch)
    logits = jax.jit(lambda p, i: model.apply({"params": p}, i, train=False))(params, batch.inputs)
    ce = -jax.nn.log_softmax(logits)[np.arange(4)[:, None], np.arange(8), batch.target_action]
    np.testing.assert_allclose(loss, ce[:, :5].mean(), rtol=1e-5)
    acc = (np.argmax(logits, -1) == batch.target_action)[:, :5].mean()
    np.testing.assert_allclose(m["accuracy"], acc, rtol=1e-6)
    assert float(m["num_steps"]) == 20
    # Targets at masked steps never matter.
    other = batch._replace(target_action=batch.target_action.at[:, 6].set(
        (batch.target_action[:, 6] + 1) % A))
    np.testing.assert_allclose(evaluate(params, other)[0], loss)
    empty = batch._replace(mask=jnp.zeros_like(batch.mask))
    assert float(evaluate(params, empty)[0]) == 0.0


def test_optimizer_schedule_and_weight_decay_mask():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer(lr=0.1, warmup_steps=2, total_steps=10, weight_decay=0.5)
    state = opt.init(params)
    # Step 0 of the warm-up has learning rate 0: nothing moves.
    updates, state = opt.update(zeros, state, params)
    np.testing.assert_array_equal(updates["kernel"], 0.0)
    # Later, zero gradients move only matrices (decoupled weight decay lr * wd * p).
    updates, state = opt.update(zeros, state, params)
    np.testing.assert_allclose(updates["kernel"], -0.05 * 0.5, rtol=1e-5)  # lr(1) = 0.05
    np.testing.assert_array_equal(updates["bias"], 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_optimizer(lr=0.1, warmup_steps=20, total_steps=10)


def test_train_step_memorises_a_tiny_task(tiny):
    cfg = tiny(dropout=0.1, token_mask_prob=0.1)
    model = ADTransformer(cfg)
    opt = make_optimizer(lr=3e-3, warmup_steps=5, total_steps=150, weight_decay=0.0)
    state = init_train_state(init_params(cfg, jax.random.key(0)), opt, jax.random.key(1))
    batch = _batch(cfg, 2, B=8, T=8)
    step = jax.jit(make_train_step(model, opt, label_smoothing=0.05), donate_argnums=0)

    def run(state, n):
        return jax.lax.scan(lambda s, _: step(s, batch), state, None, length=n)

    state, metrics = jax.jit(run, static_argnums=1)(state, 150)
    loss = np.asarray(metrics["loss"])
    assert int(state.step) == 150
    assert np.all(np.isfinite(loss)) and np.all(np.asarray(metrics["grad_norm"]) > 0)
    assert loss[-10:].mean() < 0.5 * loss[:5].mean(), loss[[0, 4, -10, -1]]
    _, final = loss_fn(state.params, batch, None, model=model, train=False)
    assert float(final["accuracy"]) > 0.9


def test_train_step_is_deterministic_given_state(tiny):
    cfg = tiny(dropout=0.2)
    model = ADTransformer(cfg)
    opt = make_optimizer(lr=1e-3, warmup_steps=0, total_steps=10)
    step = jax.jit(make_train_step(model, opt))
    state = init_train_state(init_params(cfg, jax.random.key(0)), opt, jax.random.key(1))
    batch = _batch(cfg, 3)
    a, ma = step(state, batch)
    b, mb = step(state, batch)
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    c, mc = step(a, batch)  # the next step uses a different dropout key
    assert int(c.step) == 2
