"""Hook points: every activation of the AD transformer by its TransformerLens-style name.

The model records each intermediate with ``sow`` into the ``"intermediates"``
collection, which is a no-op unless that collection is mutable, so the training forward
pays nothing; ``run_with_cache`` makes it mutable and returns the activations of the very
forward pass used in training, flattened to these names (``N = T * tokens_per_step``):

    hook_embed                       (B, N, d)   token embeddings after masking, before dropout
    blocks.{l}.hook_resid_pre        (B, N, d)
    blocks.{l}.ln1.hook_normalized   (B, N, d)
    blocks.{l}.attn.hook_q / hook_k  (B, N, H, Dh)  after RoPE (if any)
    blocks.{l}.attn.hook_v           (B, N, H, Dh)
    blocks.{l}.attn.hook_pattern     (B, H, N, N)  softmax probabilities, before dropout;
                                                   zero outside the band
    blocks.{l}.attn.hook_z           (B, N, H, Dh)
    blocks.{l}.hook_attn_out         (B, N, d)
    blocks.{l}.hook_resid_mid        (B, N, d)
    blocks.{l}.ln2.hook_normalized   (B, N, d)
    blocks.{l}.mlp.hook_pre          (B, N, mlp_dim)  before the nonlinearity
    blocks.{l}.mlp.hook_post         (B, N, mlp_dim)
    blocks.{l}.hook_mlp_out          (B, N, d)
    blocks.{l}.hook_resid_post       (B, N, d)
    ln_final.hook_normalized         (B, T, d)   only the tokens that predict actions
    hook_logits                      (B, T, num_actions)

This module is where the hook points live for the model and the rollouts alike; the
intervention machinery (interventions as data, applied in the full forward and in the
KV-cache decode step) belongs here too. Analyses built on it live in ``ad.interp``.
"""

from __future__ import annotations

from typing import Any

import jax

from ad.config import ModelConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer

PyTree = Any


def hook_name(path: tuple[str, ...]) -> str:
    """A Flax module path (``("blocks_0", "attn", "hook_z")``) as a hook name
    (``"blocks.0.attn.hook_z"``)."""
    parts = []
    for p in path:
        if p.startswith("blocks_") and p[7:].isdigit():
            parts += ["blocks", p[7:]]
        else:
            parts.append(p)
    return ".".join(parts)


def run_with_cache(params: PyTree, config: ModelConfig, inputs: StepInputs, *, valid=None,
                   train: bool = False, rngs=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits and every named activation (module docstring) from one forward pass."""
    logits, state = ADTransformer(config).apply(
        {"params": params}, inputs, train=train, valid=valid, rngs=rngs,
        mutable=["intermediates"])
    T = inputs.prev_action.shape[1]
    N = T * config.tokens_per_step
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(
            state["intermediates"], is_leaf=lambda v: isinstance(v, tuple))[0]:
        name = hook_name(tuple(k.key for k in path))
        value = value[0]  # sow stores a 1-tuple per call
        # The blocked attention pads windows to whole blocks at the end: drop the padding.
        if name.endswith("hook_pattern"):
            value = value[..., :N, :N]
        elif not name.startswith(("ln_final", "hook_logits")):
            value = value[:, :N]
        flat[name] = value
    return logits, flat
