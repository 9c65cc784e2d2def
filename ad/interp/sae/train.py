"""Training SAEs: one jitted ``lax.scan`` per SAE, ``vmap``-ed over sparsity settings.

``make_train(config, TrainConfig)`` does the static set-up and returns a pure
``train(params, sparsity, data, key) -> Trained`` (PureJaxRL's shape): every step draws a
batch of rows of ``data`` (scaled activations on the device), takes an Adam step on the
family's loss (``ad.interp.sae.models``), renormalises decoder rows where the family wants
it and updates the dead-latent clock (training positions since each latent last fired).
``train_grid`` runs ``jax.jit(jax.vmap(train))`` over a stack of ``Sparsity`` settings of
one width: a grid row is one compiled call.

Schedules (the April-update recipe, applied to every family): Adam, gradient-norm clip 1,
learning rate constant then decayed linearly to 0 over the last 20% of steps; the relu
family's λ warms up linearly over the first 5%.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ad.interp.sae.models import SAE, SAEConfig, Sparsity, batch_threshold, init_params, step


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how fast an SAE trains."""

    steps: int = 1500
    """optimiser steps"""
    batch_size: int = 1024
    """positions per step"""
    lr: float = 1e-3
    """Adam learning rate (before the final linear decay)"""
    decay_frac: float = 0.2
    """fraction of steps at the end over which the learning rate decays to 0"""
    l1_warmup_frac: float = 0.05
    """relu: fraction of steps over which λ rises linearly from 0"""
    grad_clip: float = 1.0
    """global gradient-norm clip"""
    threshold_lr_mult: float = 20.0
    """jumprelu: learning-rate multiplier of log θ (short runs: θ must move by e-folds)"""


class Trained(NamedTuple):
    """The result of one training run (leading axis per grid entry from ``train_grid``)."""

    params: dict
    since_fired: jax.Array  # (width,) training positions since each latent last fired
    loss: jax.Array  # (steps,)
    mse: jax.Array  # (steps,) mean squared error summed over features (scaled units)
    l0: jax.Array  # (steps,) mean active latents per position
    dead_frac: jax.Array  # (steps,) fraction of latents dead at each step


def input_scale(x: np.ndarray) -> float:
    """The constant s with mean ‖s·x‖ = √d over ``x`` (n, d)."""
    x = np.asarray(x, np.float64)
    return float(np.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1).mean())


def _aux_loss(config: SAEConfig, params, x, out, dead):
    """Gao et al.'s auxiliary loss: the top ``aux_k`` dead latents reconstruct the error."""
    err = jax.lax.stop_gradient(x - out.x_hat)
    pre = jnp.where(dead, out.pre, -jnp.inf)
    vals, idx = jax.lax.top_k(pre, min(config.aux_k, config.width))
    vals = jnp.where(jnp.isfinite(vals), jax.nn.relu(vals), 0.0)
    err_hat = jnp.einsum("bk,bkd->bd", vals, params["W_dec"][idx])
    aux = jnp.mean(jnp.sum((err - err_hat) ** 2, -1))
    return jnp.where(jnp.any(dead), aux, 0.0)


def loss_fn(config: SAEConfig, params, x, sparsity: Sparsity, dead, penalty_scale):
    """(loss, (mse, l0)) of a batch ``x`` (B, d) of scaled inputs."""
    out = SAE(config).apply({"params": params}, x, sparsity, train=True)
    mse = jnp.mean(jnp.sum((out.x_hat - x) ** 2, -1))
    l0 = jnp.mean(jnp.sum(out.z > 0, -1))
    if config.kind == "relu":
        norms = jnp.linalg.norm(params["W_dec"], axis=-1)
        penalty = penalty_scale * sparsity.l1 * jnp.mean(jnp.sum(out.z * norms, -1))
    elif config.kind == "jumprelu":
        theta = jnp.exp(params["log_threshold"])
        penalty = sparsity.l1 * jnp.mean(jnp.sum(step(out.pre, theta, config.bandwidth), -1))
    else:
        penalty = config.aux_coeff * _aux_loss(config, params, x, out, dead)
    return mse + penalty, (mse, l0, out.z)


def make_train(config: SAEConfig, tcfg: TrainConfig):
    """The pure training function of one SAE (module docstring)."""
    decay_start = int(tcfg.steps * (1 - tcfg.decay_frac))
    schedule = optax.join_schedules(
        [optax.constant_schedule(tcfg.lr),
         optax.linear_schedule(tcfg.lr, 0.0, max(tcfg.steps - decay_start, 1))], [decay_start])
    fast = lambda step: tcfg.threshold_lr_mult * schedule(step)  # noqa: E731
    tx = optax.chain(optax.clip_by_global_norm(tcfg.grad_clip), optax.multi_transform(
        {"base": optax.adam(schedule), "threshold": optax.adam(fast)},
        lambda params: {k: "threshold" if k == "log_threshold" else "base" for k in params}))
    warmup = max(int(tcfg.steps * tcfg.l1_warmup_frac), 1)
    grad = jax.grad(lambda *a: loss_fn(config, *a), argnums=0, has_aux=True)

    def train(params, sparsity: Sparsity, data, key) -> Trained:
        opt_state = tx.init(params)
        since = jnp.zeros((config.width,), jnp.int32)
        n = data.shape[0]

        def body(carry, i):
            params, opt_state, since = carry
            idx = jax.random.randint(jax.random.fold_in(key, i), (tcfg.batch_size,), 0, n)
            x = data[idx]
            dead = since > config.dead_tokens
            scale = jnp.minimum((i + 1) / warmup, 1.0)
            grads, (mse, l0, z) = grad(params, x, sparsity, dead, scale)
            if "threshold" in grads:  # batchtopk's inference threshold is calibrated, not trained
                grads["threshold"] = jnp.zeros_like(grads["threshold"])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if config.kind != "relu":
                w = params["W_dec"]
                params = {**params, "W_dec": w / jnp.linalg.norm(w, axis=-1, keepdims=True)}
            fired = jnp.any(z > 0, axis=0)
            since = jnp.where(fired, 0, since + tcfg.batch_size)
            loss = mse  # logged: the reconstruction term
            return (params, opt_state, since), (loss, mse, l0, jnp.mean(dead))

        (params, _, since), (loss, mse, l0, dead) = jax.lax.scan(
            body, (params, opt_state, since), jnp.arange(tcfg.steps))
        return Trained(params, since, loss, mse, l0, dead)

    return train


def calibrate_threshold(config: SAEConfig, params, sparsity: Sparsity, x) -> jax.Array:
    """BatchTopK's inference threshold: the value above which the batch rule's mean L0 on
    ``x`` (training inputs) is k."""
    pre, _ = SAE(config).apply({"params": params}, x, sparsity, method=SAE.encode)
    return batch_threshold(jax.nn.relu(pre), sparsity.k * x.shape[0])


def train_grid(config: SAEConfig, tcfg: TrainConfig, sparsity: Sparsity, data, key,
               x_mean=None) -> Trained:
    """Train one SAE per entry of ``sparsity`` (leaves with a leading grid axis) on ``data``
    (n, d) scaled inputs, in one ``jit(vmap)`` call; keys ``fold_in(key, g)``."""
    g = jax.tree.leaves(sparsity)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(g))
    params = jax.vmap(lambda k: init_params(config, jax.random.fold_in(k, 1), x_mean))(keys)
    train = make_train(config, tcfg)
    out = jax.jit(jax.vmap(train, in_axes=(0, 0, None, 0)))(params, sparsity, data, keys)
    if config.kind == "batchtopk":
        sample = data[:16_384]
        thr = jax.jit(jax.vmap(lambda p, s: calibrate_threshold(config, p, s, sample)))(
            out.params, sparsity)
        out = out._replace(params={**out.params, "threshold": thr})
    return out
