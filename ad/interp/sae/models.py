"""Four sparse-autoencoder families behind one interface (Flax Linen + optax, jitted).

Every SAE reads an activation ``x`` (d,) *scaled* by a constant so that training inputs
have mean norm √d (Anthropic's April 2024 update; ``input_scale``), encodes it into
``width`` latents and decodes a reconstruction:

    pre   = (x − b_dec) W_enc + b_enc                      (width,)
    z     = σ(pre)                                         the family's activation
    x̂     = z W_dec + b_dec

=============  ===========================================  ==================================
family         σ                                            loss besides ‖x − x̂‖²
=============  ===========================================  ==================================
``relu``       ReLU                                         λ Σ_i z_i ‖W_dec,i‖ (April update:
                                                            no decoder-norm constraint; λ
                                                            warmed up over the first 5%)
``topk``       the k largest pre-activations, then ReLU     auxiliary dead-latent loss (Gao
                                                            et al. 2024): the top ``aux_k``
                                                            *dead* latents reconstruct the
                                                            residual x − x̂, weight 1/32
``batchtopk``  the k·B largest over the batch (training);   as ``topk``
               pre · 1[pre > θ] with θ calibrated so that
               the mean L0 on training data is k (use)
``jumprelu``   pre · H(pre − θ_i), θ = exp(log θ) per        λ Σ_i H(pre_i − θ_i) (L0), with
               latent                                        straight-through gradients for θ
                                                            (rectangle kernel, bandwidth ε)
=============  ===========================================  ==================================

``topk``/``batchtopk``/``jumprelu`` keep decoder rows at unit norm (renormalised after each
step); ``relu`` does not (its penalty weights by the norms instead).

The sparsity setting is *data* (``Sparsity``: λ and k, traced), so SAEs of one width and
family with different settings train in one ``jax.vmap``-ed call (``ad.interp.sae.train``).
``k`` is traced too: TopK takes ``lax.top_k`` at the static bound ``k_max`` and keeps the
first ``k``; BatchTopK finds its batch threshold by bisection (exact up to ties).

``Splice`` holds a trained SAE as a pytree with ``__call__(x, name)``, the form of an edit
in ``ad.hooks``: the reconstruction replaces the activation inside ``run_with_hooks`` and
``ad_rollout(hooks=)``; ``Splice(..., feature=i, value=c)`` instead sets one feature to
``c`` and keeps the SAE's error term (causal checks of a feature).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

KINDS = ("relu", "topk", "batchtopk", "jumprelu")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """The static shape and family of an SAE (hashable: a jit static argument)."""

    kind: str
    """one of KINDS"""
    d_in: int
    """activation size"""
    width: int
    """number of latents"""
    k_max: int = 64
    """topk: the static bound of the traced k (k ≤ k_max)"""
    aux_k: int = 32
    """topk/batchtopk: dead latents used by the auxiliary loss"""
    aux_coeff: float = 1.0 / 32
    """topk/batchtopk: weight of the auxiliary loss"""
    bandwidth: float = 0.05
    """jumprelu: width ε of the straight-through rectangle kernel (scaled input units)"""
    threshold_init: float = 0.1
    """jumprelu: initial θ (scaled input units)"""
    dead_tokens: int = 50_000
    """a latent that has not fired for this many training positions counts as dead"""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"SAEConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.d_in < 1 or self.width < 1:
            raise ValueError(f"SAEConfig: d_in and width must be >= 1, got {self.d_in}, "
                             f"{self.width}")
        if self.kind == "topk" and not 1 <= self.k_max <= self.width:
            raise ValueError(f"SAEConfig.k_max must be in [1, width={self.width}], got {self.k_max}")


@struct.dataclass
class Sparsity:
    """One SAE's sparsity setting (traced: a leading axis makes a vmapped grid)."""

    l1: jax.Array  # relu: L1 coefficient λ; jumprelu: L0 coefficient λ; others unused
    k: jax.Array  # topk / batchtopk: active latents per position (int); others unused


class SAEOutput(NamedTuple):
    pre: jax.Array  # (..., width) pre-activations
    z: jax.Array  # (..., width) latent activations
    x_hat: jax.Array  # (..., d_in) reconstruction (scaled units)


# ----------------------------------------------------------------------------------------
# Activation functions
# ----------------------------------------------------------------------------------------
def _rect(u):
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _sum_to(grad, like):
    """Sum a broadcast gradient back to the shape of ``like`` (the threshold)."""
    like = jnp.asarray(like)
    lead = grad.ndim - like.ndim
    grad = jnp.sum(grad, axis=tuple(range(lead))) if lead > 0 else grad
    axes = tuple(i for i, n in enumerate(like.shape) if n == 1 and grad.shape[i] != 1)
    return jnp.sum(grad, axis=axes, keepdims=True).reshape(like.shape) if axes else grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jump(pre, threshold, bandwidth):
    """JumpReLU ``pre · H(pre − θ)``. Gradients: ∂/∂pre = H(pre − θ); ∂/∂θ (straight-
    through, Rajamanoharan et al. 2024) = −(θ/ε)·rect((pre − θ)/ε)."""
    return pre * (pre > threshold)


def _jump_fwd(pre, threshold, bandwidth):
    return jump(pre, threshold, bandwidth), (pre, threshold)


def _jump_bwd(bandwidth, res, g):
    pre, threshold = res
    d_pre = g * (pre > threshold)
    d_theta = g * -(threshold / bandwidth) * _rect((pre - threshold) / bandwidth)
    return d_pre, _sum_to(d_theta, threshold)


jump.defvjp(_jump_fwd, _jump_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre, threshold, bandwidth):
    """H(pre − θ) (the L0 penalty). ∂/∂pre = 0; ∂/∂θ = −(1/ε)·rect((pre − θ)/ε)."""
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return step(pre, threshold, bandwidth), (pre, threshold)


def _step_bwd(bandwidth, res, g):
    pre, threshold = res
    d_theta = g * -(1.0 / bandwidth) * _rect((pre - threshold) / bandwidth)
    return jnp.zeros_like(pre), _sum_to(d_theta, threshold)


step.defvjp(_step_fwd, _step_bwd)


def topk_mask(pre: jax.Array, k, k_max: int) -> jax.Array:
    """Bool mask of the ``k`` largest entries of each row (``k`` traced, ≤ ``k_max``)."""
    _, idx = jax.lax.top_k(pre, k_max)  # (..., k_max), descending
    keep = jnp.arange(k_max) < k
    rows = jnp.zeros(pre.shape, bool).reshape(-1, pre.shape[-1])
    idx2 = idx.reshape(-1, k_max)
    keep2 = jnp.broadcast_to(keep, idx2.shape)
    rows = rows.at[jnp.arange(idx2.shape[0])[:, None], idx2].set(keep2)
    return rows.reshape(pre.shape)


def batch_threshold(values: jax.Array, count, iters: int = 48) -> jax.Array:
    """The largest t with at least ``count`` entries of ``values`` ≥ t (bisection on the
    value: ``count`` may be traced). Entries ≥ t are then exactly the top ``count`` up to
    ties."""
    lo, hi = jnp.min(values), jnp.max(values)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        enough = jnp.sum(values >= mid) >= count
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return lo


# ----------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------
def encode(config: SAEConfig, params: dict, x, sparsity: Sparsity, train: bool = False
           ) -> tuple[jax.Array, jax.Array]:
    """(pre, z) of scaled inputs ``x`` (..., d). ``train`` selects BatchTopK's batch rule
    (the rows of ``x`` are the batch) instead of its calibrated threshold. Pure (no Flax
    module), so it also runs inside the model's own trace when spliced."""
    c = config
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    if c.kind == "relu":
        z = jax.nn.relu(pre)
    elif c.kind == "topk":
        z = jax.nn.relu(jnp.where(topk_mask(pre, sparsity.k, c.k_max), pre, 0.0))
    elif c.kind == "batchtopk":
        if train:
            act = jax.nn.relu(pre)
            rows = act.size // c.width
            t = jax.lax.stop_gradient(batch_threshold(act, sparsity.k * rows))
            z = jnp.where((act >= t) & (act > 0), act, 0.0)
        else:
            z = jnp.where(pre > params["threshold"], pre, 0.0)
    else:
        z = jump(pre, jnp.exp(params["log_threshold"]), c.bandwidth)
    return pre, z


def decode(params: dict, z):
    return z @ params["W_dec"] + params["b_dec"]


class SAE(nn.Module):
    """A sparse autoencoder of ``config`` (module docstring). Parameters: ``W_enc`` (d, m),
    ``b_enc`` (m,), ``W_dec`` (m, d), ``b_dec`` (d,), ``log_threshold`` (m,) (jumprelu),
    ``threshold`` () (batchtopk: the calibrated inference threshold, not trained)."""

    config: SAEConfig

    def setup(self):
        c = self.config

        def dec_init(key, shape):  # random unit directions (relu: norm 0.1, April update)
            w = jax.random.normal(key, shape)
            w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
            return w * (0.1 if c.kind == "relu" else 1.0)

        self.W_dec = self.param("W_dec", dec_init, (c.width, c.d_in))
        # the encoder starts as the decoder's transpose (init_params sets it)
        self.W_enc = self.param("W_enc", nn.initializers.zeros, (c.d_in, c.width))
        self.b_enc = self.param("b_enc", nn.initializers.zeros, (c.width,))
        self.b_dec = self.param("b_dec", nn.initializers.zeros, (c.d_in,))
        if c.kind == "jumprelu":
            self.log_threshold = self.param(
                "log_threshold", nn.initializers.constant(jnp.log(c.threshold_init)), (c.width,))
        if c.kind == "batchtopk":
            self.threshold = self.param("threshold", nn.initializers.zeros, ())

    def _params(self) -> dict:
        names = ["W_enc", "b_enc", "W_dec", "b_dec"]
        names += {"jumprelu": ["log_threshold"], "batchtopk": ["threshold"]}.get(
            self.config.kind, [])
        return {n: getattr(self, n) for n in names}

    def encode(self, x, sparsity: Sparsity, train: bool = False) -> tuple[jax.Array, jax.Array]:
        return encode(self.config, self._params(), x, sparsity, train)

    def decode(self, z):
        return decode(self._params(), z)

    def __call__(self, x, sparsity: Sparsity, train: bool = False) -> SAEOutput:
        pre, z = self.encode(x, sparsity, train)
        return SAEOutput(pre, z, self.decode(z))


def init_params(config: SAEConfig, key, x_mean=None) -> dict:
    """Fresh parameters: encoder = decoder transposed, ``b_dec`` = the scaled data mean
    (``x_mean``, (d,)) when given."""
    params = SAE(config).init(key, jnp.zeros((1, config.d_in)), Sparsity(jnp.float32(0.0),
                                                                          jnp.int32(1)))["params"]
    params = dict(params)
    params["W_enc"] = params["W_dec"].T
    if x_mean is not None:
        params["b_dec"] = jnp.asarray(x_mean, jnp.float32)
    return params


# ----------------------------------------------------------------------------------------
# A trained SAE as an edit of an activation (ad.hooks)
# ----------------------------------------------------------------------------------------
@struct.dataclass
class Splice:
    """A trained SAE applied to a hook's activation (unscaled units in and out).

    ``__call__(x, name)``: the reconstruction ``decode(encode(x·s))/s``. With ``feature``
    ≥ 0 it is instead ``x + (value − z_f)·W_dec,f / s`` — feature ``f`` set to ``value``
    (0: zeroed) and everything else, the SAE's error included, kept.
    ``ad.hooks.run_with_hooks`` and ``ad.evaluate.ad_rollout(hooks=)`` accept it as an edit.
    """

    params: dict
    sparsity: Sparsity
    scale: jax.Array  # () input scale s (mean norm √d on training data)
    feature: jax.Array = struct.field(default_factory=lambda: jnp.int32(-1))
    value: jax.Array = struct.field(default_factory=lambda: jnp.float32(0.0))
    config: SAEConfig = struct.field(pytree_node=False, default=None)

    def encode(self, x):
        """z of unscaled activations ``x``."""
        return encode(self.config, self.params, x * self.scale, self.sparsity)[1]

    def reconstruct(self, x):
        return decode(self.params, self.encode(x)) / self.scale

    def __call__(self, x, name=None):
        x32 = x.astype(jnp.float32)
        z = self.encode(x32)
        recon = decode(self.params, z) / self.scale
        f = jnp.maximum(self.feature, 0)
        z_f = jnp.take(z, f, axis=-1)[..., None]
        edited = x32 + (self.value - z_f) * self.params["W_dec"][f] / self.scale
        return jnp.where(self.feature >= 0, edited, recon).astype(x.dtype)
