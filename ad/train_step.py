"""The pure pieces of AD training: optimiser, train state, loss and one jittable step.

    model = ADTransformer(config)
    optimizer = make_optimizer(lr=3e-4, warmup_steps=1_000, total_steps=100_000)
    state = init_train_state(init_params(config, key), optimizer, jax.random.key(1))
    train_step = jax.jit(make_train_step(model, optimizer, label_smoothing=0.0),
                         donate_argnums=0)
    state, metrics = train_step(state, batch)

Randomness: step ``s`` uses ``fold_in(state.rng, s)`` as the model's ``"dropout"`` key,
so a run is reproducible from (params, rng) and resumable from any checkpoint. A
``jax.random.key(seed, impl="rbg")`` rng makes dropout bits cheaper than the default
threefry on CPU/GPU (see benchmarks/ad_throughput.py).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ad.inputs import StepInputs
from ad.model import ADTransformer

PyTree = Any


class Batch(NamedTuple):
    """One training batch of windows (leading dims (B, T))."""

    inputs: StepInputs  # what the model sees at each step
    target_action: jax.Array  # (B, T) int32: action[t], predicted by logits[:, t]
    mask: jax.Array  # (B, T) float32: 1 for steps that count in the loss, 0 for padding


@struct.dataclass
class TrainState:
    step: jax.Array  # () int32: optimiser steps taken
    params: PyTree  # the model's inner "params" dict
    opt_state: PyTree  # optax state of the optimiser the step was built with
    rng: jax.Array  # base key; step s uses fold_in(rng, s)


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, weight_decay: float = 1e-4,
                   grad_clip: float = 1.0, b1: float = 0.9,
                   b2: float = 0.99) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``lr`` then cosine decay to 0 at ``total_steps``.

    Gradients are clipped to global norm ``grad_clip`` (<= 0 disables clipping). Weight
    decay applies to matrices only (ndim >= 2: projections and embedding tables), never
    to biases or LayerNorm scales.
    """
    if total_steps < 1 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"make_optimizer: need 0 <= warmup_steps ({warmup_steps}) <= "
                         f"total_steps ({total_steps}) and total_steps >= 1")
    if lr <= 0:
        raise ValueError(f"make_optimizer: lr must be > 0, got {lr}")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=0.0)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
    if grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
    return adamw


def init_train_state(params: PyTree, optimizer: optax.GradientTransformation,
                     rng: jax.Array) -> TrainState:
    return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                      rng=rng)


def smoothed_cross_entropy(logits: jax.Array, target: jax.Array,
                           label_smoothing: float) -> jax.Array:
    """Per-position CE against (1 - eps) * onehot + eps / A. logits (..., A), target (...)."""
    A = logits.shape[-1]
    labels = jax.nn.one_hot(target, A, dtype=jnp.float32)
    labels = labels * (1.0 - label_smoothing) + label_smoothing / A
    return -(labels * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)).sum(-1)


def loss_fn(params: PyTree, batch: Batch, rng: jax.Array | None, *, model: ADTransformer,
            label_smoothing: float = 0.0, train: bool = True):
    """Masked mean smoothed cross-entropy on ``action[t]``; returns (loss, metrics).

    metrics: ``loss``, ``accuracy`` (argmax == target over masked steps), ``num_steps``
    (mask sum). An all-zero mask gives loss 0 rather than NaN.
    """
    rngs = {"dropout": rng} if train else None
    logits = model.apply({"params": params}, batch.inputs, train=train, rngs=rngs)
    mask = batch.mask.astype(jnp.float32)
    denom = jnp.maximum(mask.sum(), 1.0)
    ce = smoothed_cross_entropy(logits, batch.target_action, label_smoothing)
    loss = (ce * mask).sum() / denom
    correct = (jnp.argmax(logits, -1) == batch.target_action).astype(jnp.float32)
    accuracy = (correct * mask).sum() / denom
    return loss, {"loss": loss, "accuracy": accuracy, "num_steps": mask.sum()}


def make_train_step(model: ADTransformer, optimizer: optax.GradientTransformation,
                    label_smoothing: float = 0.0) -> Callable[[TrainState, Batch],
                                                              tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)``, pure; jit once, donate ``state``.

    metrics add ``grad_norm`` (before clipping) to those of ``loss_fn``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"make_train_step: label_smoothing must lie in [0, 1), got "
                         f"{label_smoothing}")

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(
            state.params, batch, rng, model=model, label_smoothing=label_smoothing)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step
