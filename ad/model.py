"""The Algorithm Distillation transformer: a causal, sliding-window model of learning histories.

Token layouts (``ModelConfig.token_layout``)
- ``"step"`` (default): one token per environment step,
  ``x_t = E_obs(obs[t]) + E_act(prev_action[t]) + E_rew(prev_reward[t])``, where
  ``prev_action[t] = action[t-1]`` and ``prev_reward[t] = reward[t-1]`` (the "none"
  action ``num_actions`` and reward 0 at the first step of a stream). ``logits[:, t]``
  predicts ``action[t]``. With ``episode_start_token`` a learned vector is added to the
  tokens of steps that start an episode (RL²'s "done" input): without it the stream
  shows no episode boundary except what the observations imply, and in Key-to-Door
  (random starts, time-outs) whether the key is held then depends on counting steps.
  With ``prev_obs_token`` a second encoder adds ``E'_obs(obs[t-1])`` (zero at a stream
  start), so each token holds the whole last transition ``(o, a, r)[t-1]`` beside
  ``o[t]`` (DPT's transition tokens, without the next observation): where an episode
  ends on an unobserved cell (Key-to-Door's door: the next observation is the next
  episode's start), that cell then follows from one token instead of two.
- ``"oar"``: the paper's interleaved tokens, three per step, ordered
  ``(a_{t-1}, r_{t-1}, o_t)`` for step ``t``; over a stream this is the paper's
  ``o_0, a_0, r_0, o_1, ...`` sequence preceded by a ("none", 0) pair. ``action[t]`` is
  predicted from the ``o_t`` token (the last token of step ``t``), so ``a_t`` is never
  visible to its own prediction.

Context: sliding-window ("banded") causal attention aligned to steps. A token of step
``t`` attends to every token of steps ``t-c+1 .. t-1`` and to the tokens of step ``t``
at or before itself (``"step"``: the previous ``c`` tokens including itself; ``"oar"``:
at most ``3c`` tokens). Positions are relative (RoPE on q/k, or ALiBi biases), so
logits are translation invariant, a logit depends on at most
``ModelConfig.receptive_field`` = L·(c−1)+1 steps, and windows of any length ``T`` work.
A rolling KV cache of ``c`` steps per layer is then
exact (``decode_step``). Full forwards compute the band either densely ((N, N) masked
scores) or by blocks of ``c`` steps, each attending to itself and the previous block
(``ModelConfig.attention_impl``; "auto" picks blocks once a window spans >= 3 of them,
memory O(N * 2cK) instead of O(N^2)); both give the same logits and the same hooks.

Embeddings: discrete observation entries and actions use small tables applied as
one-hot matmuls (no gathers or scatter-adds on CPU). Rewards are small reals and use a
linear embedding ``r * w + b`` (documented choice: keeps reward magnitudes ordered and
works for Bernoulli and real-valued rewards alike).

Randomness (only with ``train=True``): one Flax rng stream, ``"dropout"``, feeds residual
dropout, attention-probability dropout and random token masking (a token's input
embedding is replaced by a learned mask embedding with probability
``token_mask_prob``; per step for ``"step"``, per token for ``"oar"``).

Activations: every intermediate passes through a hook point with a TransformerLens-style
name (``ad.hooks`` lists them): ``ad.hooks.point`` returns its argument untouched unless
a hook state is active (``ad.hooks.run_with_hooks``, ``decode_step(hooks=, capture=)``),
so training pays nothing; with one active it edits and/or records the activation, in the
full forward and in the KV-cache decode step alike.

Evaluation: ``init_cache`` / ``decode_step`` (rolling KV cache, exact), and the paper's
baseline ``init_recompute_buffer`` / ``recompute_step`` (full forward over the last
``window`` steps at every step).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ad import hooks
from ad.hooks import active as _hooks_active, collect as _collect_hooks  # decode_step's
# ``hooks`` argument shadows the module's name there
from ad.config import ModelConfig
from ad.inputs import StepInputs, dummy_inputs

PyTree = Any

# "minigrid" encoder: width of the per-cell (object + colour + state) embedding.
MINIGRID_CELL_DIM = 8
# minigrid's image channel sizes (object, colour, state) and its 4 directions.
MINIGRID_CHANNEL_SIZES = (11, 6, 3)
MINIGRID_NUM_DIRECTIONS = 4
# Finite "minus infinity": fully masked rows (padding queries) stay NaN-free.
_NEG = -1e30


# ----------------------------------------------------------------------------------------
# Positions and masks (host-side constants: shapes are static)
# ----------------------------------------------------------------------------------------
def band_mask(num_steps: int, context: int, tokens_per_step: int) -> np.ndarray:
    """(N, N) bool: may token i attend to token j (step-aligned causal band)."""
    n = num_steps * tokens_per_step
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return (j <= i) & (j // tokens_per_step > i // tokens_per_step - context)


def rope_tables(positions: np.ndarray, head_dim: int, base: float):
    """cos/sin of ``positions * theta_k``, shape (..., head_dim/2), float32."""
    freqs = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angle = np.asarray(positions, np.float64)[..., None] * freqs
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate pairs (x[..., k], x[..., k + Dh/2]); cos/sin broadcast over heads (..., 1, Dh/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Geometric slopes 2^(-8h/H), h = 1..H (Press et al.)."""
    return 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)


class AttentionBias(NamedTuple):
    """Additive attention bias (band mask, ALiBi, padding) in the layout one impl uses."""

    bias: jax.Array  # dense: (1 or B, 1 or H, N, N); blocked: (1 or B, 1 or H, nb, bs, 2*bs)
    blocked: bool  # static
    block: int  # static: tokens per block (c * K)
    padded_steps: int  # static: steps after padding T up to whole blocks


def attention_bias(cfg: ModelConfig, T: int, valid=None) -> AttentionBias:
    """The additive bias for a window of T steps (``valid`` (B, T) bool, optional)."""
    K, H, c = cfg.tokens_per_step, cfg.num_heads, cfg.context
    nb = -(-T // c)
    blocked = cfg.attention_impl == "blocked" or (cfg.attention_impl == "auto" and nb >= 3)
    Tp = nb * c if blocked else T
    N = Tp * K
    pos = np.arange(N)
    allowed = band_mask(Tp, c, K)
    dist = (pos[:, None] - pos[None, :]).astype(np.float64)
    bias = np.where(allowed, 0.0, _NEG)[None]  # (1, N, N)
    if cfg.positions == "alibi":
        bias = bias - alibi_slopes(H)[:, None, None] * dist
    bias = bias[None]  # (1, 1 or H, N, N)
    if valid is not None:
        valid = jnp.asarray(valid, bool)
        valid = jnp.pad(valid, ((0, 0), (0, Tp - T)), constant_values=True)
        key_ok = jnp.repeat(valid, K, axis=1)  # (B, N)
        bias = jnp.asarray(bias, jnp.float32) + jnp.where(key_ok, 0.0, _NEG)[:, None, None, :]
    if not blocked:
        return AttentionBias(jnp.asarray(bias, jnp.float32), False, c * K, Tp)
    bs = c * K
    # Gather each query block's rows and the columns of blocks (i-1, i); block -1 is masked.
    rows = np.arange(nb)[:, None, None] * bs + np.arange(bs)[None, :, None]  # (nb, bs, 1)
    cols = (np.arange(nb)[:, None, None] - 1) * bs + np.arange(2 * bs)[None, None, :]
    in_range = cols >= 0  # (nb, 1, 2bs)
    cols = np.maximum(cols, 0)
    if isinstance(bias, np.ndarray):
        blk = np.where(in_range, bias[..., rows, cols], _NEG)
    else:
        blk = jnp.where(in_range, bias[..., rows, cols], _NEG)
    return AttentionBias(jnp.asarray(blk, jnp.float32), True, bs, Tp)


# ----------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------
def _dense(features: int, cfg: ModelConfig, name: str, std: float = 0.02,
           use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(std), use_bias=use_bias, name=name)


class ObsEncoder(nn.Module):
    """Discrete observation -> (..., d) via one-hot matmuls (see ``ModelConfig.obs_encoder``)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.obs_encoder == "minigrid":
            return self._minigrid(obs)
        if not isinstance(obs, (jax.Array, np.ndarray)):
            raise ValueError(f"obs_encoder={cfg.obs_encoder!r} needs a single-array "
                             f"observation, got {type(obs).__name__}")
        if tuple(obs.shape[2:]) != cfg.obs_shape:
            raise ValueError(f"observation shape {tuple(obs.shape[2:])} (after (B, T)) does "
                             f"not match ModelConfig.obs_shape={cfg.obs_shape}")
        V = cfg.obs_num_values
        obs = obs.astype(jnp.int32)
        if cfg.obs_encoder == "cell":
            onehot = jax.nn.one_hot(obs[..., 0] + V * obs[..., 1], V * V, dtype=jnp.float32)
            rows = V * V
        else:  # "xy" / "discrete": per-entry tables, summed = a multi-hot over entries
            n = int(np.prod(cfg.obs_shape))
            flat = obs.reshape(*obs.shape[:2], n)
            onehot = jax.nn.one_hot(flat, V, dtype=jnp.float32).reshape(*obs.shape[:2], n * V)
            rows = n * V
        table = self.param("embedding", nn.initializers.normal(0.02), (rows, cfg.d_model))
        return onehot @ table

    def _minigrid(self, obs) -> jax.Array:
        """``{"image": (B, T, V, V, 3), "direction": (B, T)}`` -> (B, T, d).

        Per cell: object, colour and state embeddings (tables of 11, 6 and 3 rows, width
        ``MINIGRID_CELL_DIM``) summed, i.e. one multi-hot of 20 entries times one table;
        the V*V cell vectors are flattened (cell position matters) and projected by a
        Dense to d; a direction embedding is added. Out-of-range codes embed as zero.
        """
        cfg = self.config
        if not isinstance(obs, dict) or set(obs) != {"image", "direction"}:
            raise ValueError("obs_encoder='minigrid' needs obs {'image', 'direction'}, got "
                             f"{type(obs).__name__}"
                             + (f" with keys {sorted(obs)}" if isinstance(obs, dict) else ""))
        image = jnp.asarray(obs["image"]).astype(jnp.int32)
        if tuple(image.shape[2:]) != cfg.obs_shape:
            raise ValueError(f"image shape {tuple(image.shape[2:])} (after (B, T)) does not "
                             f"match ModelConfig.obs_shape={cfg.obs_shape}")
        lead = image.shape[:2]
        multi = jnp.concatenate(
            [jax.nn.one_hot(image[..., i], n, dtype=jnp.float32)
             for i, n in enumerate(MINIGRID_CHANNEL_SIZES)], axis=-1)  # (B, T, V, V, 20)
        init = nn.initializers.normal(0.02)
        cell_table = self.param("cell_embedding", init,
                                (sum(MINIGRID_CHANNEL_SIZES), MINIGRID_CELL_DIM))
        cells = (multi @ cell_table).reshape(*lead, -1)  # (B, T, V*V*cell_dim)
        x = nn.Dense(cfg.d_model, kernel_init=init, name="image_proj")(cells)
        direction = jax.nn.one_hot(jnp.asarray(obs["direction"]).astype(jnp.int32),
                                   MINIGRID_NUM_DIRECTIONS, dtype=jnp.float32)
        dir_table = self.param("direction_embedding", init,
                               (MINIGRID_NUM_DIRECTIONS, cfg.d_model))
        return x + direction @ dir_table




class _QKV(nn.Module):
    """The fused q/k/v projection (params ``kernel`` (d, 3d), ``bias`` (3d,), as nn.Dense)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.kernel = self.param("kernel", nn.initializers.normal(0.02),
                                 (cfg.d_model, 3 * cfg.d_model), jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (3 * cfg.d_model,), jnp.float32)

    def __call__(self, h):
        dt = self.config.compute_dtype
        return (jnp.dot(h.astype(dt), self.kernel.astype(dt)) + self.bias.astype(dt))

    def head_major(self, h):
        """h (B, N, d) -> q, k, v each (B, H, N, Dh): the same values as ``__call__``."""
        cfg = self.config
        dt = cfg.compute_dtype
        H, Dh = cfg.num_heads, cfg.head_dim
        w = self.kernel.astype(dt).reshape(cfg.d_model, 3, H, Dh)
        qkv = jnp.einsum("bnd,dshe->sbhne", h.astype(dt), w)
        qkv = qkv + self.bias.astype(dt).reshape(3, 1, H, 1, Dh)
        return qkv[0], qkv[1], qkv[2]


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then + MLP(LN(.)); the band mask comes from the caller."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.ln1 = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32)
        self.ln2 = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32)
        self.qkv = _QKV(cfg, name="qkv")  # fused q, k, v projection
        self.attn_out = _dense(cfg.d_model, cfg, "attn_out",
                               0.02 / math.sqrt(2 * cfg.num_layers))
        self.mlp_in = _dense(cfg.mlp_dim, cfg, "mlp_in")
        # mlp_dim 0 (attention-only): zero-width MLP, and no output bias, so the MLP adds
        # exactly zero while every hook and tool still finds its modules (ln2's scale and
        # bias then reach nothing: 2d dead parameters, kept so the tree keeps its shape)
        self.mlp_out = _dense(cfg.d_model, cfg, "mlp_out", 0.02 / math.sqrt(2 * cfg.num_layers),
                              use_bias=cfg.mlp_dim > 0)

    def _act(self, h):
        return nn.gelu(h, approximate=True) if self.config.activation == "gelu" else nn.relu(h)

    def _mlp(self, x, train: bool):
        h = hooks.point(self, "ln2.hook_normalized", self.ln2(x))
        pre = hooks.point(self, "mlp.hook_pre", self.mlp_in(h))
        post = hooks.point(self, "mlp.hook_post", self._act(pre))
        out = hooks.point(self, "hook_mlp_out", self.mlp_out(post).astype(jnp.float32))
        return _dropout(self, out, self.config.dropout, train)

    def _split_heads(self, h):
        cfg = self.config
        qkv = self.qkv(h).reshape(*h.shape[:-1], 3, cfg.num_heads, cfg.head_dim)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def _head_major_point(self, local: str, x):
        """A hook on head-major (B, H, N, Dh) values, seen as (B, N, H, Dh)."""
        if not hooks.wants(self, local):
            return x
        return hooks.point(self, local, x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)

    def _attention(self, h, bias: "AttentionBias", rope, train: bool):
        """Band attention of the full forward; h (B, N, d) -> z (B, N, H, Dh).

        Why head-major: q/k/v come out of one einsum already as (B, H, N, Dh), so the
        score and value contractions are plain batched matmuls with no transposes around
        them (on CPU the transposes cost more than the tiny matmuls). RoPE is applied as
        ``x * cos + swap_halves(x) * (-sin, sin)`` (one fused elementwise op), and the
        1/sqrt(Dh) scale is folded into q. ``bias.blocked``: query blocks of ``bs = c*K``
        tokens see the keys of their own and the previous block (all the band reaches).
        """
        cfg = self.config
        B, N, _ = h.shape
        H, Dh = cfg.num_heads, cfg.head_dim
        q, k, v = self.qkv.head_major(h)  # (B, H, N, Dh) each
        q = self._head_major_point("attn.hook_q", q)
        k = self._head_major_point("attn.hook_k", k)
        v = self._head_major_point("attn.hook_v", v)
        if rope is not None:
            cos, sin = rope  # (N, 1, Dh/2)
            cos_f = jnp.concatenate([cos[:, 0], cos[:, 0]], -1)
            sin_f = jnp.concatenate([-sin[:, 0], sin[:, 0]], -1)

            def rot(x):
                return (x * cos_f + jnp.concatenate([x[..., Dh // 2:], x[..., :Dh // 2]], -1)
                        * sin_f).astype(x.dtype)
            q = self._head_major_point("attn.hook_rot_q", rot(q))
            k = self._head_major_point("attn.hook_rot_k", rot(k))
        q = q * jnp.asarray(1.0 / math.sqrt(Dh), q.dtype)
        if bias.blocked:
            state = hooks.current()
            if state is not None and any(hooks.full_name(self, f"attn.hook_{n}") in state.edits
                                         for n in ("attn_scores", "pattern")):
                raise ValueError("edits of attention scores/patterns need "
                                 "attention_impl='dense' (ad.hooks.run_with_hooks sets it)")
            bs = bias.block
            nb = N // bs

            def two_blocks(x):  # (B, H, nb, 2*bs, Dh): previous block (zeros for 0), own
                xb = x.reshape(B, H, nb, bs, Dh)
                prev = jnp.concatenate([jnp.zeros_like(xb[:, :, :1]), xb[:, :, :-1]], axis=2)
                return jnp.concatenate([prev, xb], axis=3)
            qb = q.reshape(B, H, nb, bs, Dh)
            scores = jnp.einsum("bhnqd,bhnkd->bhnqk", qb, two_blocks(k),
                                preferred_element_type=jnp.float32) + bias.bias
            probs = jax.nn.softmax(scores, axis=-1)
            for local, blocked in (("attn.hook_attn_scores", scores), ("attn.hook_pattern", probs)):
                if hooks.wants(self, local):  # recorded in the dense (B, H, N, N) form
                    hooks.point(self, local, _blocks_to_dense(blocked, nb, bs,
                                                              local.endswith("scores")))
            probs = _dropout(self, probs, cfg.attn_dropout, train)
            z = jnp.einsum("bhnqk,bhnkd->bnqhd", probs.astype(v.dtype), two_blocks(v))
            return z.reshape(B, N, H, Dh)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = hooks.point(self, "attn.hook_attn_scores", scores + bias.bias)
        probs = hooks.point(self, "attn.hook_pattern", jax.nn.softmax(scores, axis=-1))
        probs = _dropout(self, probs, cfg.attn_dropout, train)
        return jnp.einsum("bhqk,bhkd->bqhd", probs.astype(v.dtype), v)

    def __call__(self, x, bias: "AttentionBias", rope, train: bool):
        """Full forward. x (B, N, d); ``bias`` from ``attention_bias`` (mask + ALiBi)."""
        x = hooks.point(self, "hook_resid_pre", x)
        h = hooks.point(self, "ln1.hook_normalized", self.ln1(x))
        return self._finish(x, self._attention(h, bias, rope, train), train)

    def _attn_out(self, z):
        """z (B, N, H, Dh) -> (B, N, d). Per-head results are formed only when a hook asks
        for them (their sum over heads plus the bias is the output, up to rounding)."""
        cfg = self.config
        z = hooks.point(self, "attn.hook_z", z)
        if not hooks.wants(self, "attn.hook_result"):
            return self.attn_out(z.reshape(*z.shape[:2], cfg.d_model)).astype(jnp.float32)
        w = self.attn_out.variables["params"]["kernel"].reshape(cfg.num_heads, cfg.head_dim,
                                                                cfg.d_model)
        result = jnp.einsum("bnhe,hed->bnhd", z.astype(jnp.float32), w)
        result = hooks.point(self, "attn.hook_result", result)
        return result.sum(axis=2) + self.attn_out.variables["params"]["bias"]

    def _finish(self, x, z, train: bool):
        cfg = self.config
        attn = hooks.point(self, "hook_attn_out", self._attn_out(z))
        x = hooks.point(self, "hook_resid_mid", x + _dropout(self, attn, cfg.dropout, train))
        return hooks.point(self, "hook_resid_post", x + self._mlp(x, train))

    def decode(self, x, keys, values, t, rope_table):
        """One step of ``K`` tokens against this layer's rolling cache (no dropout).

        x (B, K, d): the step's tokens. keys/values (B, c, K, H, Dh): the cache, keys
        stored RoPE-rotated by their *slot phase* ``K*slot + m``; slot ``t % c`` still holds
        step ``t - c`` (outside the band, masked) and is overwritten by the caller.
        Returns (x, k_new, v_new) with k_new rotated by the current slot phase: after the
        hook points, so an intervened step writes its intervened keys and values.

        Why slot phases are exact: a slot ``s <= w = t % c`` holds a step of the current
        epoch of ``c`` steps, so query phase ``K*w + j`` gives the true relative offset; a
        slot ``s > w`` holds a step of the previous epoch, which the query phase shifted
        by ``K*c`` accounts for. All phases stay below ``2*K*c``: no large angles.
        """
        cfg = self.config
        K, c, H = cfg.tokens_per_step, cfg.context, cfg.num_heads
        B = x.shape[0]
        x = hooks.point(self, "hook_resid_pre", x)
        h = hooks.point(self, "ln1.hook_normalized", self.ln1(x))
        q, k, v = self._split_heads(h)  # (B, K, H, Dh)
        q = hooks.point(self, "attn.hook_q", q)
        k = hooks.point(self, "attn.hook_k", k)
        v = hooks.point(self, "attn.hook_v", v)
        w = t % c
        slots = jnp.arange(c)
        age = (w - slots) % c  # steps between t and the step held by each slot (0: stale)
        slot_ok = (age > 0) & (t - age >= 0)  # (c,)
        if rope_table is not None:
            cos_t, sin_t = rope_table  # (2*K*c, Dh/2)
            cur = K * w
            cos_c = jax.lax.dynamic_slice_in_dim(cos_t, cur, K)[:, None]
            sin_c = jax.lax.dynamic_slice_in_dim(sin_t, cur, K)[:, None]
            q_cur = hooks.point(self, "attn.hook_rot_q", apply_rope(q, cos_c, sin_c))
            k_new = hooks.point(self, "attn.hook_rot_k", apply_rope(k, cos_c, sin_c))
            if hooks.wants(self, "attn.hook_rot_q"):
                # The previous epoch's phase is K*c further on: rotate the (edited) q_cur
                # by it, so an edit of hook_rot_q reaches both phases.
                q_prev = apply_rope(q_cur, cos_t[K * c], sin_t[K * c])
            else:
                cos_p = jax.lax.dynamic_slice_in_dim(cos_t, cur + K * c, K)[:, None]
                sin_p = jax.lax.dynamic_slice_in_dim(sin_t, cur + K * c, K)[:, None]
                q_prev = apply_rope(q, cos_p, sin_p)
            s_cur = jnp.einsum("bjhd,bsmhd->bhjsm", q_cur, keys,
                               preferred_element_type=jnp.float32)
            s_prev = jnp.einsum("bjhd,bsmhd->bhjsm", q_prev, keys,
                                preferred_element_type=jnp.float32)
            s_cache = jnp.where((slots < w)[:, None], s_cur, s_prev)
        else:
            q_cur, k_new = q, k
            s_cache = jnp.einsum("bjhd,bsmhd->bhjsm", q, keys,
                                 preferred_element_type=jnp.float32)
        s_new = jnp.einsum("bjhd,bmhd->bhjm", q_cur, k_new, preferred_element_type=jnp.float32)
        scale = 1.0 / math.sqrt(cfg.head_dim)
        j = jnp.arange(K)
        bias_cache = jnp.where(slot_ok[None, :, None], 0.0, _NEG)  # (1, c, 1)
        bias_new = jnp.where(j[None, :] <= j[:, None], 0.0, _NEG)  # (K_q, K_k)
        if cfg.positions == "alibi":
            slope = jnp.asarray(alibi_slopes(H), jnp.float32)[:, None, None, None]
            dist_cache = K * age[None, :, None] + j[:, None, None] - j[None, None, :]
            bias_cache = bias_cache - slope * dist_cache  # (H, K, c, K)
            bias_new = bias_new - slope[..., 0] * (j[:, None] - j[None, :])  # (H, K, K)
        scores = jnp.concatenate(
            [(s_cache * scale + bias_cache).reshape(B, H, K, c * K), s_new * scale + bias_new],
            axis=-1)
        scores = hooks.point(self, "attn.hook_attn_scores", scores)
        probs = hooks.point(self, "attn.hook_pattern", jax.nn.softmax(scores, axis=-1))
        p_cache = probs[..., : c * K].reshape(B, H, K, c, K).astype(values.dtype)
        p_new = probs[..., c * K:].astype(v.dtype)
        z = (jnp.einsum("bhjsm,bsmhd->bjhd", p_cache, values)
             + jnp.einsum("bhjm,bmhd->bjhd", p_new, v))
        return self._finish(x, z, False), k_new, v


def _blocks_to_dense(blocked: jax.Array, nb: int, bs: int, scores: bool) -> jax.Array:
    """Blocked (B, H, nb, bs, 2*bs) scores or probabilities in the dense (B, H, N, N) form
    (one-hot placement: exact); entries the blocks never form are −1e30 for scores, 0 for
    probabilities."""
    B, H = blocked.shape[:2]
    place = np.zeros((nb, 2 * bs, (nb + 1) * bs), np.float32)
    for i in range(nb):
        place[i, np.arange(2 * bs), i * bs + np.arange(2 * bs)] = 1.0
    place = jnp.asarray(place)
    if scores:  # place the band's finite entries; everything else is the mask value
        inside = blocked > _NEG / 2
        dense = jnp.einsum("bhiqk,ikj->bhiqj", jnp.where(inside, blocked, 0.0), place)
        reached = jnp.einsum("bhiqk,ikj->bhiqj", inside.astype(jnp.float32), place) > 0
        dense = jnp.where(reached, dense, _NEG)[..., bs:]
    else:
        dense = jnp.einsum("bhiqk,ikj->bhiqj", blocked, place)[..., bs:]
    return dense.reshape(B, H, nb * bs, nb * bs)


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser (xorshift-multiply, full avalanche); x uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _dropout(module: nn.Module, x, rate: float, train: bool):
    """Inverted dropout from the "dropout" rng stream (a no-op when not training).

    Why not ``jax.random.bits``: its threefry hash (and XLA's RngBitGenerator) costs ~30%
    of a CPU training step at d=64. Instead the stream's key gives two 32-bit seeds, and
    element i's draw is ``mix(mix(i ^ s0) + s1)``: counter-based, deterministic per key,
    a few vectorised integer ops fused into the multiply. 16-bit draws: rate error < 2e-5.
    """
    if not train or rate == 0.0:
        return x
    key = module.make_rng("dropout")
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    idx = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    bits = _mix32(_mix32(idx ^ seeds[0]) + seeds[1]) >> 16
    keep = bits >= jnp.uint32(round(rate * 65536))
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


class ADTransformer(nn.Module):
    """The AD model. ``apply({"params": p}, inputs, train=...) -> logits (B, T, A)`` float32.

    ``logits[:, t]`` predicts ``action[t]`` from steps ``<= t`` (band: module docstring).
    ``valid`` (B, T) bool, optional: steps that exist; the others (e.g. left padding) are
    never attended to. Rngs with ``train=True``: ``{"dropout": key}``.
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        init = nn.initializers.normal(0.02)
        self.obs_embed = ObsEncoder(cfg)
        self.action_embed = self.param("action_embed", init, (cfg.num_actions + 1, cfg.d_model))
        self.reward_embed = nn.Dense(cfg.d_model, kernel_init=init)  # r * w + b
        self.mask_embed = self.param("mask_embed", init, (cfg.d_model,))
        if cfg.episode_start_token:
            self.start_embed = self.param("start_embed", init, (cfg.d_model,))
        if cfg.prev_obs_token:
            self.prev_obs_embed = ObsEncoder(cfg)
        self.blocks = [Block(cfg) for _ in range(cfg.num_layers)]
        self.ln_final = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32)
        self.head = nn.Dense(cfg.num_actions, kernel_init=init, dtype=jnp.float32)

    # ---- shared pieces -------------------------------------------------------------------
    def _embed(self, inputs: StepInputs, train: bool) -> jax.Array:
        """(B, T) step inputs -> (B, N, d) token embeddings (masked and dropped out)."""
        cfg = self.config
        if inputs.prev_action.ndim != 2 or inputs.prev_reward.shape != inputs.prev_action.shape:
            raise ValueError(f"StepInputs.prev_action/prev_reward must both be (B, T), got "
                             f"{inputs.prev_action.shape} and {inputs.prev_reward.shape}")
        B, T = inputs.prev_action.shape
        # Each input term's embedding is a hook of its own ("what did the reward add?").
        o = hooks.point(self, "embed.hook_obs", self.obs_embed(inputs.obs))
        a = jax.nn.one_hot(inputs.prev_action, cfg.num_actions + 1, dtype=jnp.float32)
        a = hooks.point(self, "embed.hook_action", a @ self.action_embed)
        r = self.reward_embed(inputs.prev_reward.astype(jnp.float32)[..., None])
        r = hooks.point(self, "embed.hook_reward", r)
        if cfg.episode_start_token:
            if inputs.episode_start is None:
                raise ValueError("ModelConfig.episode_start_token=True needs "
                                 "StepInputs.episode_start (B, T) bool")
            o = o + hooks.point(self, "embed.hook_episode_start",
                                inputs.episode_start.astype(jnp.float32)[..., None]
                                * self.start_embed)
        if cfg.prev_obs_token:
            if inputs.prev_obs is None:
                raise ValueError("ModelConfig.prev_obs_token=True needs StepInputs.prev_obs "
                                 "(obs[t-1], leaves (B, T, *obs_shape))")
            known = (inputs.prev_action != cfg.num_actions)[..., None]
            o = o + hooks.point(self, "embed.hook_prev_obs",
                                jnp.where(known, self.prev_obs_embed(inputs.prev_obs), 0.0))
        if cfg.token_layout == "step":
            x = o + a + r
        else:  # (a_{t-1}, r_{t-1}, o_t) per step
            x = jnp.stack([a, r, o], axis=2).reshape(B, 3 * T, cfg.d_model)
        if train and cfg.token_mask_prob > 0.0:
            masked = jax.random.bernoulli(self.make_rng("dropout"), cfg.token_mask_prob,
                                          x.shape[:2])
            x = jnp.where(masked[..., None], self.mask_embed, x)
        return _dropout(self, hooks.point(self, "hook_embed", x), cfg.dropout, train)

    def _normalized(self, x: jax.Array) -> jax.Array:
        """The final LayerNorm of the tokens that predict actions."""
        return hooks.point(self, "ln_final.hook_normalized", self.ln_final(x))

    def _logits(self, h: jax.Array) -> jax.Array:
        return hooks.point(self, "hook_logits", self.head(h).astype(jnp.float32))

    # ---- full (training) forward ------------------------------------------------------------
    def __call__(self, inputs: StepInputs, *, train: bool, valid=None) -> jax.Array:
        return self._logits(self._normalized(self._trunk(inputs, train, valid)))

    def _trunk(self, inputs: StepInputs, train: bool, valid) -> jax.Array:
        """(B, T, d): the final residual of the tokens that predict ``action[t]``."""
        cfg = self.config
        K = cfg.tokens_per_step
        x = self._embed(inputs, train)  # (B, N, d)
        B, N = x.shape[:2]
        T = N // K
        bias = attention_bias(cfg, T, valid)
        if bias.blocked and bias.padded_steps > T:  # pad at the end: causal, so harmless
            x = jnp.pad(x, ((0, 0), (0, (bias.padded_steps - T) * K), (0, 0)))
            N = bias.padded_steps * K
        rope = None
        if cfg.positions == "rope":
            cos, sin = rope_tables(np.arange(N), cfg.head_dim, cfg.rope_base)
            rope = (jnp.asarray(cos)[:, None], jnp.asarray(sin)[:, None])  # (N, 1, Dh/2)
        for block in self.blocks:
            x = block(x, bias, rope, train)
        return x[:, K - 1:T * K:K]  # the tokens that predict action[t]

    # ---- one step with a rolling KV cache ----------------------------------------------------
    def decode(self, step: StepInputs, cache: "KVCache"):
        cfg = self.config
        K = cfg.tokens_per_step
        x = self._embed(step, train=False)  # (B, K, d)
        rope_table = None
        if cfg.positions == "rope":
            cos, sin = rope_tables(np.arange(2 * K * cfg.context), cfg.head_dim, cfg.rope_base)
            rope_table = (jnp.asarray(cos), jnp.asarray(sin))
        new_k, new_v = [], []
        for l, block in enumerate(self.blocks):
            x, k, v = block.decode(x, cache.keys[l], cache.values[l], cache.step, rope_table)
            new_k.append(k)
            new_v.append(v)
        logits = self._logits(self._normalized(x[:, -1:]))[:, 0]  # (B, A)
        w = cache.step % cfg.context
        start = (0, 0, w, 0, 0, 0)
        keys = jax.lax.dynamic_update_slice(
            cache.keys, jnp.stack(new_k)[:, :, None].astype(cache.keys.dtype), start)
        values = jax.lax.dynamic_update_slice(
            cache.values, jnp.stack(new_v)[:, :, None].astype(cache.values.dtype), start)
        return logits, KVCache(keys=keys, values=values, step=cache.step + 1)


# ----------------------------------------------------------------------------------------
# Functional API
# ----------------------------------------------------------------------------------------
def init_params(config: ModelConfig, key: jax.Array, num_steps: int = 2) -> PyTree:
    """Fresh parameters (the inner ``params`` dict every function here takes)."""
    return ADTransformer(config).init(key, dummy_inputs(config, 1, num_steps),
                                      train=False)["params"]


@struct.dataclass
class KVCache:
    """Rolling per-layer keys/values of the last ``c`` steps (slot = step % c)."""

    keys: jax.Array  # (L, B, c, K, H, Dh) compute dtype; RoPE-rotated by slot phase K*slot+m
    values: jax.Array  # (L, B, c, K, H, Dh) compute dtype
    step: jax.Array  # () int32: absolute count of steps decoded so far (next step's index)

    @property
    def write_index(self) -> jax.Array:
        """Slot the next step is written to."""
        return self.step % self.keys.shape[2]


def init_cache(config: ModelConfig, batch_size: int) -> KVCache:
    """An empty cache: the next ``decode_step`` is the first step of every stream."""
    shape = (config.num_layers, batch_size, config.context, config.tokens_per_step,
             config.num_heads, config.head_dim)
    zeros = jnp.zeros(shape, config.compute_dtype)
    return KVCache(keys=zeros, values=zeros, step=jnp.int32(0))


def _as_one_step(step: StepInputs) -> StepInputs:
    """Accept a per-step record without the T axis by adding T = 1."""
    if step.prev_action.ndim == 1:
        return jax.tree.map(lambda x: x[:, None], step)
    if step.prev_action.ndim != 2 or step.prev_action.shape[1] != 1:
        raise ValueError(f"decode: step.prev_action must be (B,) or (B, 1), got "
                         f"{step.prev_action.shape}")
    return step


def decode_step(params: PyTree, config: ModelConfig, cache: KVCache, step: StepInputs,
                hooks: dict | None = None, capture=None):
    """``(logits (B, A), new_cache)`` for the next step of every stream; jittable.

    Exact: equals ``ADTransformer(config)`` over the whole stream (the band makes the
    ``c`` cached steps all that any layer can see). Cost per step O(L * c * d).

    ``hooks``: ``{hook name: Intervention or fn(x, name)}`` applied at this step (an
    intervention whose fields span a whole stream's positions applies its slice for
    step ``cache.step``); the cache receives the intervened keys and values. ``capture``
    (names, a predicate or True): also return this step's activations by hook name,
    ``(logits, new_cache, activations)`` (``ad.hooks`` lists the decode-step shapes).
    """
    with _hooks_active(hooks, capture, step=cache.step,
                       tokens_per_step=config.tokens_per_step):
        out = ADTransformer(config).apply({"params": params}, _as_one_step(step), cache,
                                          method=ADTransformer.decode,
                                          mutable=["intermediates"] if capture else False)
    if not capture:
        return out
    (logits, cache), state = out
    return logits, cache, _collect_hooks(state.get("intermediates", {}))


@struct.dataclass
class RecomputeBuffer:
    """The last ``window`` steps' inputs, oldest first, for the recompute baseline."""

    inputs: StepInputs  # leaves (B, window, ...): right-aligned, invalid until filled
    count: jax.Array  # () int32: steps seen so far


def init_recompute_buffer(config: ModelConfig, batch_size: int,
                          window: int | None = None) -> RecomputeBuffer:
    """``window`` defaults to ``c`` (the paper's semantics)."""
    window = config.context if window is None else window
    return RecomputeBuffer(inputs=dummy_inputs(config, batch_size, window), count=jnp.int32(0))


def recompute_step(params: PyTree, config: ModelConfig, buffer: RecomputeBuffer,
                   step: StepInputs):
    """Baseline: append the step, then re-run the full forward over the buffered window.

    Recomputes every layer for all ``window`` buffered steps (padding before the stream
    start is masked out) and returns the last step's logits: O(window^2) attention and
    O(window) MLP work per step. With ``window = c`` (default) this is the paper's
    semantics: the model sees exactly the last ``c`` steps, so it matches ``decode_step``
    only for the first ``c`` steps; with ``window >= L*(c-1)+1`` it matches exactly.
    """
    step = _as_one_step(step)
    inputs = jax.tree.map(lambda b, s: jnp.concatenate([b[:, 1:], s.astype(b.dtype)], axis=1),
                          buffer.inputs, step)
    count = buffer.count + 1
    W = inputs.prev_action.shape[1]
    valid = jnp.arange(W) >= W - jnp.minimum(count, W)
    valid = jnp.broadcast_to(valid, inputs.prev_action.shape)
    logits = ADTransformer(config).apply({"params": params}, inputs, train=False, valid=valid)
    return logits[:, -1], RecomputeBuffer(inputs=inputs, count=count)
