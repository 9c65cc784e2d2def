"""The activation cache: every hook's value from one forward pass, and what is built on
it — the logit lens, the residual stream split into what each component wrote, and direct
logit attribution (DLA) that sums exactly to the logits.

``run_with_cache(params, config, inputs)`` returns ``(logits, ActivationCache)``; the
cache is a read-only mapping ``{hook name: array}`` (names in ``ad.hooks``) that also
knows the model, so it can decompose. All decompositions are read at the tokens that
predict actions (token ``t*K + K - 1`` of step ``t``), shape ``(components, B, T, d)``.

Why the parts sum exactly: with dropout off the final residual at a predicting token is
``embed + Σ_l (attn_out_l + mlp_out_l)``; ``attn_out_l = Σ_h result_{l,h} + b_O``. The
final LayerNorm ``y = (x − μ(x)) / σ(x) · γ + β`` is linear in ``x`` once ``σ`` is frozen
at the full residual's value (TransformerLens's convention), so each component ``c``
maps to ``(c − μ(c)) / σ · γ``, and ``β W_U + b_U`` is one more, explicit, component.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ad import hooks
from ad.config import ModelConfig
from ad.inputs import StepInputs

PyTree = Any
LN_EPS = 1e-5  # ad.model's LayerNorm epsilon


def run_with_cache(params: PyTree, config: ModelConfig, inputs: StepInputs, *,
                   names_filter=None, hooks_: dict | None = None, valid=None,
                   stream=None) -> tuple[jax.Array, "ActivationCache"]:
    """Logits and an ``ActivationCache`` of one (eval-mode) forward pass.

    ``names_filter``: hook names, a predicate or True for all (default: every hook except the per-head
    ``attn.hook_result``, which is formed only when asked for: ``stack_head_results``
    computes it from ``hook_z``). ``hooks_``: edits applied during the pass (the cache
    then holds the edited values). ``stream``: an ``ad.interp.streams.Stream`` the inputs
    were built from, for the RL selectors (``ActivationCache.select``).
    """
    if names_filter is None:
        names_filter = lambda name: not name.endswith("attn.hook_result")  # noqa: E731
    logits, acts = hooks.run_with_hooks(params, config, inputs, hooks_, capture=names_filter,
                                        valid=valid)
    return logits, ActivationCache(acts, params, config, stream)


@jax.tree_util.register_pytree_node_class
class ActivationCache(Mapping):
    """``{hook name: activation}`` of one forward pass, plus the model that made it.

    A pytree (activations, params and stream are leaves), so it can leave a ``jit``."""

    def __init__(self, activations: dict, params: PyTree, config: ModelConfig, stream=None):
        self._acts = dict(activations)
        self.params = params
        self.config = config
        self.stream = stream

    def tree_flatten(self):
        return (self._acts, self.params, self.stream), self.config

    @classmethod
    def tree_unflatten(cls, config, children):
        acts, params, stream = children
        return cls(acts, params, config, stream)

    # ---- the mapping ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> jax.Array:
        if name not in self._acts:
            hooks.hook_axes(name)  # a clear error for a name that is no hook at all
            raise KeyError(f"hook {name!r} was not cached (names_filter); cached: "
                           f"{sorted(self._acts)}")
        return self._acts[name]

    def __iter__(self):
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks)"

    # ---- positions -----------------------------------------------------------------------
    def at_steps(self, name: str) -> jax.Array:
        """Hook ``name`` at the tokens that predict actions: (B, T, ...)."""
        value = self[name]
        axes = hooks.hook_axes(name)
        if "pos" not in axes or axes.index("pos") != 1:
            if "step" in axes:
                return value
            raise ValueError(f"at_steps: {name!r} has no token axis (axes {axes})")
        K = self.config.tokens_per_step
        return value[:, K - 1::K]

    def select(self, **criteria) -> np.ndarray:
        """(B, T) bool steps of the cached stream (``ad.interp.streams.select``: episode,
        step_in_episode, rewarded, cell, after_action)."""
        if self.stream is None:
            raise ValueError("select: run_with_cache(..., stream=) was not given a stream")
        from ad.interp import streams
        return streams.select(self.stream, **criteria)

    # ---- weights -------------------------------------------------------------------------
    def _w_o(self, layer: int) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        out = self.params[f"blocks_{layer}"]["attn_out"]
        return (jnp.asarray(out["kernel"]).reshape(cfg.num_heads, cfg.head_dim, cfg.d_model),
                jnp.asarray(out["bias"]))

    @property
    def unembed(self) -> tuple[jax.Array, jax.Array]:
        """(W_U (d, A), b_U (A,))."""
        return jnp.asarray(self.params["head"]["kernel"]), jnp.asarray(self.params["head"]["bias"])

    # ---- residual stream -----------------------------------------------------------------
    def final_residual(self) -> jax.Array:
        """(B, T, d): the residual the final LayerNorm reads."""
        return self.at_steps(f"blocks.{self.config.num_layers - 1}.hook_resid_post")

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False
                          ) -> tuple[jax.Array, list[str]]:
        """The residual at predicting tokens before each layer (and after the last):
        ``(C, B, T, d)`` and labels ("0_pre", ["0_mid",] ..., "final_post")."""
        L = self.config.num_layers if layer is None else layer
        parts, labels = [], []
        for l in range(L):
            parts.append(self.at_steps(f"blocks.{l}.hook_resid_pre"))
            labels.append(f"{l}_pre")
            if incl_mid:
                parts.append(self.at_steps(f"blocks.{l}.hook_resid_mid"))
                labels.append(f"{l}_mid")
        if layer is None:
            parts.append(self.final_residual())
            labels.append("final_post")
        return jnp.stack(parts), labels

    def _embed_parts(self) -> tuple[list[jax.Array], list[str]]:
        """The input terms at predicting tokens: each part's embedding ("step" layout: the
        token is their sum; "oar": the predicting token is the observation token)."""
        cfg = self.config
        names = ["obs"] + (["episode_start"] if cfg.episode_start_token else [])
        if cfg.token_layout == "step":
            names += ["action", "reward"] + (["prev_obs"] if cfg.prev_obs_token else [])
        return [self[f"embed.hook_{n}"] for n in names], [f"embed.{n}" for n in names]

    def decompose_resid(self, layer: int | None = None, heads: bool = False
                        ) -> tuple[jax.Array, list[str]]:
        """What each component wrote into the residual at predicting tokens, up to the
        input of ``layer`` (default: the final residual): ``(C, B, T, d)`` whose sum over
        C is that residual. Components: each input term's embedding, then per layer the
        attention output (or, with ``heads``, each head's result and the output bias
        ``b_O``) and the MLP output."""
        L = self.config.num_layers if layer is None else layer
        parts, labels = self._embed_parts()
        for l in range(L):
            if heads:
                results, res_labels = self.stack_head_results(layer=l, only=True)
                parts += list(results)
                labels += res_labels
                parts.append(jnp.broadcast_to(self._w_o(l)[1], parts[0].shape))
                labels.append(f"L{l}.b_O")
            else:
                parts.append(self.at_steps(f"blocks.{l}.hook_attn_out"))
                labels.append(f"L{l}.attn")
            parts.append(self.at_steps(f"blocks.{l}.hook_mlp_out"))
            labels.append(f"L{l}.mlp")
        return jnp.stack(parts), labels

    def stack_head_results(self, layer: int | None = None, only: bool = False
                           ) -> tuple[jax.Array, list[str]]:
        """Each head's write ``z_h W_O[h]`` at predicting tokens, ``(C, B, T, d)``, for the
        layers before ``layer`` (all by default), or of ``layer`` alone with ``only``.
        Computed from ``hook_z``; the output bias is not included (``decompose_resid``)."""
        cfg = self.config
        layers = ([layer] if only else range(cfg.num_layers if layer is None else layer))
        parts, labels = [], []
        for l in layers:
            w, _ = self._w_o(l)
            z = self.at_steps(f"blocks.{l}.attn.hook_z").astype(jnp.float32)  # (B, T, H, Dh)
            res = jnp.einsum("bthe,hed->hbtd", z, w)
            parts.append(res)
            labels += [f"L{l}H{h}" for h in range(cfg.num_heads)]
        return jnp.concatenate(parts), labels

    # ---- through the final LayerNorm -----------------------------------------------------
    def ln_scale(self) -> jax.Array:
        """(B, T, 1): σ of the final residual (the final LayerNorm's divisor)."""
        x = self.final_residual()
        return jnp.sqrt(x.var(-1, keepdims=True) + LN_EPS)

    def apply_ln_to_stack(self, stack: jax.Array, frozen: bool = True) -> jax.Array:
        """Each component through the final LayerNorm without its bias: ``(c − μ(c)) / σ ·
        γ``, with ``σ`` the final residual's (``frozen``) or each component's own (the
        plain logit lens of an intermediate residual)."""
        gamma = jnp.asarray(self.params["ln_final"]["scale"])
        centred = stack - stack.mean(-1, keepdims=True)
        scale = (self.ln_scale() if frozen
                 else jnp.sqrt(stack.var(-1, keepdims=True) + LN_EPS))
        return centred / scale * gamma

    def logit_lens(self, frozen: bool = False) -> tuple[jax.Array, list[str]]:
        """Logits read from the residual before each layer and at the end:
        ``(C, B, T, A)``; the last row equals the model's logits."""
        stack, labels = self.accumulated_resid()
        W_U, b_U = self.unembed
        beta = jnp.asarray(self.params["ln_final"]["bias"])
        return (self.apply_ln_to_stack(stack, frozen) + beta) @ W_U + b_U, labels

    def _direction(self, actions, incorrect) -> jax.Array:
        """(B, T, d) unembedding direction: W_U[:, a] (− W_U[:, b])."""
        W_U, _ = self.unembed
        B, T = self.final_residual().shape[:2]
        a = jnp.broadcast_to(jnp.asarray(actions), (B, T))
        d = W_U.T[a]
        if incorrect is not None:
            d = d - W_U.T[jnp.broadcast_to(jnp.asarray(incorrect), (B, T))]
        return d

    def logit_attrs(self, stack: jax.Array, actions, incorrect=None) -> jax.Array:
        """Direct logit attribution of each component of ``stack`` (C, B, T, d) to the logit
        of ``actions`` (int or (B, T)) or to the difference with ``incorrect``: (C, B, T).
        The final LayerNorm's scale is frozen; biases are not included (``dla`` adds them)."""
        return jnp.einsum("cbtd,btd->cbt", self.apply_ln_to_stack(stack),
                          self._direction(actions, incorrect))

    def logit_bias(self, actions, incorrect=None) -> jax.Array:
        """(B, T): the part of the logit (difference) no component writes: β W_U + b_U."""
        W_U, b_U = self.unembed
        beta = jnp.asarray(self.params["ln_final"]["bias"])
        full = beta @ W_U + b_U  # (A,)
        B, T = self.final_residual().shape[:2]
        out = full[jnp.broadcast_to(jnp.asarray(actions), (B, T))]
        if incorrect is not None:
            out = out - full[jnp.broadcast_to(jnp.asarray(incorrect), (B, T))]
        return out

    def dla(self, actions, incorrect=None, heads: bool = True) -> tuple[jax.Array, list[str]]:
        """Every component's direct contribution to the logit of ``actions`` (or the
        difference with ``incorrect``), including the bias term: ``(C, B, T)`` that sums
        over C to the model's logit (difference) at every step, and the labels."""
        stack, labels = self.decompose_resid(heads=heads)
        attrs = self.logit_attrs(stack, actions, incorrect)
        bias = self.logit_bias(actions, incorrect)[None]
        return jnp.concatenate([attrs, bias]), labels + ["bias"]


def mean_activations(params: PyTree, config: ModelConfig, inputs: StepInputs, names,
                     *, batch_size: int = 64) -> dict[str, jax.Array]:
    """The mean of each named hook over the batch and positions of ``inputs`` (teacher-
    forced histories: the documented reference set for mean ablation is training-task
    histories), shaped to broadcast over the hook: size 1 on the batch and token/step axes
    (for scores and patterns: the mean over queries, kept per key position)."""
    names = [names] if isinstance(names, str) else list(names)
    fn = jax.jit(lambda p, i: hooks.run_with_hooks(p, config, i, capture=names)[1])
    sums, counts = {}, {}
    B = inputs.prev_action.shape[0]
    for lo in range(0, B, batch_size):
        acts = fn(params, jax.tree.map(lambda x: x[lo:lo + batch_size], inputs))
        for n in names:
            axes = _reduce_axes(n)
            s = jnp.sum(acts[n], axis=axes, keepdims=True, dtype=jnp.float32)
            sums[n] = s if n not in sums else sums[n] + s
            counts[n] = counts.get(n, 0) + int(np.prod([acts[n].shape[i] for i in axes]))
    return {n: sums[n] / counts[n] for n in names}


def _reduce_axes(name: str) -> tuple[int, ...]:
    axes = hooks.hook_axes(name)
    return tuple(i for i, a in enumerate(axes) if a in ("batch", "pos", "step"))
