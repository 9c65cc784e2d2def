"""Activation patching and attribution patching between two contexts, as one jitted call.

The setting (TransformerLens's ``get_act_patch_*``): a *clean* and a *corrupted* context
(e.g. the same history with one reward flipped) make the model prefer different actions
at the last step. Run the corrupted context, replace one activation (a layer × position,
a layer × head, a layer × head × position, or one MLP neuron at the last position) by its
value from the clean run, and measure how much of the clean behaviour comes back.

Metrics, read at the last step (averaged over the batch of context pairs):
- ``"logit_diff"`` (default): ``LD = logit[a_clean] − logit[a_corrupt]`` (each pair's
  preferred actions under the clean and corrupted contexts, or given), normalised so
  the corrupted run scores 0 and the clean run 1: ``(LD − LD_corr) / (LD_clean − LD_corr)``.
- ``"logprob"``: the log-probability of ``a_clean``.
- ``"kl"``: KL(clean policy ‖ patched policy).

Two engines give the same numbers (``tests/interp/test_patching.py`` checks both against
a Python loop of single patched forwards, element for element):
- ``engine="exact"``: every grid cell is an ``Intervention`` (data), so the sweep is
  ``vmap`` of the model's own forward over the cells' masks, chunked with ``lax.map``.
- ``engine="fast"`` (default where it applies: patches of one position in position-local
  hooks, the metric at the last step): reuses the corrupted run's cached activations
  below and beside the patched position and computes only what the metric reads — the
  patched block's row, the later blocks (the last one only at the metric's row, against
  the cached keys and values with the changed rows recomputed), the final LayerNorm and
  the head at that row. ``benchmarks/patching_throughput.py`` times it against the
  TransformerLens way (a compiled patched forward per cell, called in a Python loop).

``attribution_patch`` is the first-order approximation (gradient × activation
difference) of the same grids from one forward and one backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad import hooks
from ad.config import ModelConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer, apply_rope, attention_bias, rope_tables

PyTree = Any
GRIDS = ("layer_pos", "layer_head", "layer_head_pos", "neuron")
METRICS = ("logit_diff", "logprob", "kl")
# Hooks whose value at one position changes the block's output at that position only.
POSITION_LOCAL = ("attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid",
                  "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
                  "hook_resid_post", "hook_resid_pre")


class PatchResult(NamedTuple):
    """A patching sweep: ``values`` over ``axes`` (e.g. (layer, head, pos))."""

    values: jax.Array  # the metric per grid cell
    axes: tuple[str, ...]
    hook: str  # the hook patched in every layer (name without "blocks.{l}.")
    metric: str
    clean: float  # the metric's raw value on the clean and the corrupted runs (for
    corrupted: float  # "logit_diff": the un-normalised LD; normalised ones are 1 and 0)


@dataclasses.dataclass(frozen=True)
class Metric:
    """The scalar a sweep measures from the last step's logits (B, A); hashable (static)."""

    kind: str = "logit_diff"

    def __post_init__(self):
        if self.kind not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.kind!r}")

    def raw(self, logits, ref) -> jax.Array:
        """Un-normalised metric; ``ref`` holds the actions and the clean policy."""
        if self.kind == "logit_diff":
            take = lambda a: jnp.take_along_axis(logits, a[:, None], -1)[:, 0]  # noqa: E731
            return jnp.mean(take(ref["a_clean"]) - take(ref["a_corrupt"]))
        logp = jax.nn.log_softmax(logits, -1)
        if self.kind == "logprob":
            return jnp.mean(jnp.take_along_axis(logp, ref["a_clean"][:, None], -1))
        p = jnp.exp(ref["clean_logp"])
        return jnp.mean(jnp.sum(p * (ref["clean_logp"] - logp), -1))

    def __call__(self, logits, ref) -> jax.Array:
        value = self.raw(logits, ref)
        if self.kind == "logit_diff":
            return (value - ref["ld_corrupt"]) / (ref["ld_clean"] - ref["ld_corrupt"])
        return value


def _reference(clean_logits, corrupt_logits, metric: Metric, a_clean=None, a_corrupt=None):
    """Actions and baselines the metric needs, from the last step's logits (B, A)."""
    ref = {"a_clean": (jnp.argmax(clean_logits, -1) if a_clean is None
                       else jnp.broadcast_to(jnp.asarray(a_clean, jnp.int32),
                                             clean_logits.shape[:1])),
           "a_corrupt": (jnp.argmax(corrupt_logits, -1) if a_corrupt is None
                         else jnp.broadcast_to(jnp.asarray(a_corrupt, jnp.int32),
                                               clean_logits.shape[:1])),
           "clean_logp": jax.nn.log_softmax(clean_logits, -1)}
    ld = Metric("logit_diff")
    ref["ld_clean"] = ld.raw(clean_logits, ref)
    ref["ld_corrupt"] = ld.raw(corrupt_logits, ref)
    return ref


# ----------------------------------------------------------------------------------------
# The grid: which entries each cell patches
# ----------------------------------------------------------------------------------------
def grid_axes(config: ModelConfig, hook: str, grid: str, num_steps: int
              ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The axis names and sizes of a sweep of ``hook`` (a block hook's local name)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    axes = hooks.hook_axes(f"blocks.0.{hook}")
    if hook.startswith(("embed.", "ln_final", "hook_embed", "hook_logits")):
        raise ValueError(f"patching sweeps run over block hooks, got {hook!r}")
    N = num_steps * config.tokens_per_step
    L, H, M = config.num_layers, config.num_heads, config.mlp_dim
    need = {"layer_head": "head", "layer_head_pos": "head", "neuron": "neuron"}.get(grid)
    if need and need not in axes:
        raise ValueError(f"grid {grid!r} needs a hook with a {need!r} axis; {hook!r} has "
                         f"axes {axes}")
    return {"layer_pos": (("layer", "pos"), (L, N)),
            "layer_head": (("layer", "head"), (L, H)),
            "layer_head_pos": (("layer", "head", "pos"), (L, H, N)),
            "neuron": (("layer", "neuron"), (L, M))}[grid]


def _cell_masks(config: ModelConfig, hook: str, grid: str, num_steps: int) -> np.ndarray:
    """(cells, L, *mask shape): for each cell, the bool mask of every layer's hook."""
    axes, sizes = grid_axes(config, hook, grid, num_steps)
    hook_ax = hooks.hook_axes(f"blocks.0.{hook}")
    N = num_steps * config.tokens_per_step
    shape = [1] * len(hook_ax)
    for a, s in (("pos", N), ("head", config.num_heads), ("neuron", config.mlp_dim)):
        if a in hook_ax and (a in axes or (grid == "neuron" and a == "pos")):
            shape[hook_ax.index(a)] = s
    cells = int(np.prod(sizes))
    masks = np.zeros((cells, config.num_layers, *shape), bool)
    for c, idx in enumerate(np.ndindex(*sizes)):
        sel = dict(zip(axes, idx))
        if grid == "neuron":
            sel["pos"] = N - 1  # per-neuron sweeps patch the last position
        index = [c, sel["layer"]] + [sel.get(a, slice(None)) if shape[i] > 1 else 0
                                     for i, a in enumerate(hook_ax)]
        masks[tuple(index)] = True
    return masks


# ----------------------------------------------------------------------------------------
# Exact engine: the model's own forward, vmapped over interventions
# ----------------------------------------------------------------------------------------
def _exact(params, config, corrupt, clean_acts, hook, masks, metric, ref, chunk):
    L = config.num_layers
    names = [f"blocks.{l}.{hook}" for l in range(L)]

    def one(mask):  # mask (L, *shape)
        edits = {n: hooks.Intervention(mask[l], jnp.zeros((), jnp.float32), clean_acts[n])
                 for l, n in enumerate(names)}
        logits = hooks.run_with_hooks(params, config, corrupt, edits)
        return metric(logits[:, -1], ref)

    return jax.lax.map(one, jnp.asarray(masks), batch_size=chunk)


# ----------------------------------------------------------------------------------------
# Fast engine: reuse the corrupted run, compute only what the metric reads
# ----------------------------------------------------------------------------------------
def _block_rest(block, x_row, z_row, stage: str, patched, mask):
    """Block output at one row from a patched stage. x_row: the block's input (B, d);
    the row's corrupted activations are recomputed from it up to ``stage``, where
    ``patched`` replaces the entries in ``mask``."""
    cfg = block.config

    def swap(local, value):
        return jnp.where(mask, patched, value) if stage == local else value

    z = swap("attn.hook_z", z_row)  # (B, H, Dh)
    if stage == "attn.hook_result":  # per-head writes, formed only for this hook
        w = block.attn_out.variables["params"]
        result = jnp.einsum("bhe,hed->bhd", z.astype(jnp.float32),
                            w["kernel"].reshape(cfg.num_heads, cfg.head_dim, cfg.d_model))
        attn = jnp.where(mask, patched, result).sum(1) + w["bias"]
    else:
        attn = block.attn_out(z.reshape(z.shape[0], cfg.d_model)).astype(jnp.float32)
    attn = swap("hook_attn_out", attn)
    mid = swap("hook_resid_mid", x_row + attn)
    h = swap("ln2.hook_normalized", block.ln2(mid))
    pre = swap("mlp.hook_pre", block.mlp_in(h))
    post = swap("mlp.hook_post", block._act(pre))
    out = swap("hook_mlp_out", block.mlp_out(post).astype(jnp.float32))
    return swap("hook_resid_post", mid + out)


def _last_block_row(block, x, k_base, v_base, changed, row: int, bias_row, rope):
    """The last block's output at query ``row`` (B, d). x (B, N, d): its input;
    k_base/v_base (B, N, H, Dh): the corrupted run's rotated keys and values, used where
    ``changed`` (N,) bool is False (recomputed from ``x`` at its one True row; all rows
    when None). ``rope``: (cos, sin) tables (N, Dh/2) or None."""
    cfg = block.config
    H, Dh = cfg.num_heads, cfg.head_dim
    B, N, _ = x.shape
    if changed is None:  # every row may differ: recompute all keys and values
        _, k, v = block._split_heads(block.ln1(x))
        if rope is not None:
            k = apply_rope(k, rope[0][:, None], rope[1][:, None])
    else:  # only the one changed row's key and value differ from the corrupted run's
        idx = jnp.argmax(changed)
        _, k_r, v_r = block._split_heads(block.ln1(x[:, idx]))
        if rope is not None:
            k_r = apply_rope(k_r, rope[0][idx], rope[1][idx])
        k = k_base.at[:, idx].set(k_r.astype(k_base.dtype))
        v = v_base.at[:, idx].set(v_r.astype(v_base.dtype))
    q, _, _ = block._split_heads(block.ln1(x[:, row]))
    if rope is not None:
        q = apply_rope(q, rope[0][row], rope[1][row])
    scores = jnp.einsum("bhd,bnhd->bhn", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores / math.sqrt(Dh) + bias_row, -1)
    z = jnp.einsum("bhn,bnhd->bhd", probs.astype(v.dtype), v)
    attn = block.attn_out(z.reshape(B, H * Dh)).astype(jnp.float32)
    mid = x[:, row] + attn
    return mid + block._mlp(mid, False)


def _fast(params, config, corrupt, clean_acts, base, hook, masks, metric, ref, chunk):
    """The fast engine (module docstring). ``base``: the corrupted run's activations."""
    cfg = dataclasses.replace(config, attention_impl="dense")
    L, K = cfg.num_layers, cfg.tokens_per_step
    T = corrupt.prev_action.shape[1]
    N = T * K
    row = N - 1  # the token that predicts the last step's action
    band = attention_bias(cfg, T)
    bias_row = band.bias[0, :, row]  # (1 or H, N)
    rope = None
    if cfg.positions == "rope":
        cos, sin = rope_tables(np.arange(N), cfg.head_dim, cfg.rope_base)
        rope = (jnp.asarray(cos), jnp.asarray(sin))  # (N, Dh/2)
    pos_axis = hooks.hook_axes(f"blocks.0.{hook}").index("pos")

    def resume(module, x, changed, start: int):
        """Logits at ``row`` from x (B, N, d), the input of block ``start``; ``changed``
        (N,) bool marks the one row that differs from the corrupted run (None: any)."""
        for m in range(start, L):
            block = module.blocks[m]
            if m < L - 1:
                x = block(x, band, None if rope is None else
                          (rope[0][:, None], rope[1][:, None]), False)
                changed = None
                continue
            k_name = f"blocks.{m}.attn.hook_rot_k" if rope is not None else \
                f"blocks.{m}.attn.hook_k"
            out = _last_block_row(block, x, base[k_name], base[f"blocks.{m}.attn.hook_v"],
                                  changed, row, bias_row, rope)
            return module._logits(module._normalized(out))
        return module._logits(module._normalized(x[:, row]))  # patched after the last block

    def one(module, mask, layer: int):
        """mask: the hook's mask in ``layer`` for one cell (one position selected)."""
        pos_mask = jnp.any(mask, axis=tuple(i for i in range(mask.ndim) if i != pos_axis))
        p = jnp.argmax(pos_mask)
        row_mask = jnp.take(mask, p, axis=pos_axis)  # broadcasts against (B, ...) rows
        value = clean_acts[f"blocks.{layer}.{hook}"][:, p]
        if hook == "hook_resid_pre":  # the input of block ``layer`` changes at row p
            x = base[f"blocks.{layer}.hook_resid_pre"]
            x = x.at[:, p].set(jnp.where(row_mask, value, x[:, p]))
            return resume(module, x, pos_mask, layer)
        out_row = _block_rest(module.blocks[layer], base[f"blocks.{layer}.hook_resid_pre"][:, p],
                              base[f"blocks.{layer}.attn.hook_z"][:, p], hook, value, row_mask)
        x = base[f"blocks.{layer}.hook_resid_post"].at[:, p].set(out_row)
        return resume(module, x, pos_mask, layer + 1)

    model = ADTransformer(cfg)
    total = jnp.zeros((masks.shape[0],), jnp.float32)
    for layer in range(L):  # one mapped call per layer (where to resume is static)
        cells = np.flatnonzero(masks[:, layer].reshape(masks.shape[0], -1).any(-1))
        if not cells.size:
            continue

        def run(mask, layer=layer):
            logits = model.apply({"params": params}, mask,
                                 method=lambda m, mk: one(m, mk, layer))
            return metric(logits, ref)

        total = total.at[cells].set(
            jax.lax.map(run, jnp.asarray(masks[cells, layer]), batch_size=chunk))
    return total


def patch_sweep(params: PyTree, config: ModelConfig, clean: StepInputs,
                corrupt: StepInputs, hook: str, grid: str = "layer_pos", *,
                metric: str = "logit_diff", a_clean=None, a_corrupt=None,
                engine: str = "auto", chunk: int = 64) -> PatchResult:
    """Patch ``hook`` (local name, e.g. ``"attn.hook_z"``, ``"hook_resid_pre"``) from the
    clean run into the corrupted one for every cell of ``grid`` and measure ``metric`` at
    the last step: one jitted call. ``clean`` / ``corrupt``: (B, T) contexts of equal
    shape (B pairs). ``a_clean`` / ``a_corrupt``: the actions of the logit difference
    (default: each run's preferred action at the last step)."""
    if jax.tree.structure(clean) != jax.tree.structure(corrupt) or \
            clean.prev_action.shape != corrupt.prev_action.shape:
        raise ValueError("patch_sweep: clean and corrupted contexts must have the same "
                         f"structure and shape, got {clean.prev_action.shape} and "
                         f"{corrupt.prev_action.shape}")
    T = clean.prev_action.shape[1]
    axes, sizes = grid_axes(config, hook, grid, T)
    if engine not in ("auto", "exact", "fast"):
        raise ValueError(f"engine must be 'auto', 'exact' or 'fast', got {engine!r}")
    fast_ok = hook in POSITION_LOCAL and grid in ("layer_pos", "layer_head_pos", "neuron")
    if engine == "fast" and not fast_ok:
        raise ValueError(f"engine='fast' patches one position of a position-local hook "
                         f"{POSITION_LOCAL}; got hook {hook!r}, grid {grid!r}")
    engine = "fast" if engine == "auto" and fast_ok else engine
    engine = "exact" if engine == "auto" else engine
    values, clean_raw, corrupt_raw = _sweep(params, config, clean, corrupt, hook, grid,
                                            Metric(metric), a_clean, a_corrupt, engine, chunk)
    return PatchResult(values.reshape(sizes), axes, hook, metric, float(clean_raw),
                       float(corrupt_raw))


def _base_names(config, hook) -> list[str]:
    names = []
    for l in range(config.num_layers):
        names += [f"blocks.{l}.{n}" for n in ("hook_resid_pre", "attn.hook_z",
                                               "hook_resid_post", "attn.hook_v",
                                               "attn.hook_k", "attn.hook_rot_k")
                  if not (n == "attn.hook_rot_k" and config.positions != "rope")]
    return names


def _sweep_impl(params, config, clean, corrupt, hook, grid, metric, a_clean, a_corrupt,
                engine, chunk):
    masks = _cell_masks(config, hook, grid, clean.prev_action.shape[1])  # static (NumPy)
    names = [f"blocks.{l}.{hook}" for l in range(config.num_layers)]
    dense = dataclasses.replace(config, attention_impl="dense")
    clean_logits, clean_acts = hooks.run_with_hooks(params, dense, clean, capture=names)
    base_names = names + (_base_names(config, hook) if engine == "fast" else [])
    corrupt_logits, base = hooks.run_with_hooks(params, dense, corrupt, capture=base_names)
    ref = _reference(clean_logits[:, -1], corrupt_logits[:, -1], metric, a_clean, a_corrupt)
    if engine == "fast":
        values = _fast(params, config, corrupt, clean_acts, base, hook, masks, metric, ref,
                       chunk)
    else:
        values = _exact(params, dense, corrupt, clean_acts, hook, masks, metric, ref, chunk)
    return values, metric.raw(clean_logits[:, -1], ref), metric.raw(corrupt_logits[:, -1], ref)


_sweep = jax.jit(_sweep_impl, static_argnames=("config", "hook", "grid", "metric", "engine",
                                               "chunk"))


# ----------------------------------------------------------------------------------------
# Attribution patching
# ----------------------------------------------------------------------------------------
def attribution_patch(params: PyTree, config: ModelConfig, clean: StepInputs,
                      corrupt: StepInputs, hook: str, grid: str = "layer_pos", *,
                      metric: str = "logit_diff", a_clean=None, a_corrupt=None
                      ) -> PatchResult:
    """The linear estimate of ``patch_sweep``: for each cell, ``Σ (clean − corrupted) ·
    ∂metric/∂activation`` over the cell's entries, the gradient taken on the corrupted
    run (one forward and one backward pass for the whole grid)."""
    T = clean.prev_action.shape[1]
    axes, sizes = grid_axes(config, hook, grid, T)
    values, clean_raw, corrupt_raw = _attribution(params, config, clean, corrupt, hook, grid,
                                                  Metric(metric), a_clean, a_corrupt)
    return PatchResult(values.reshape(sizes), axes, hook, metric, float(clean_raw),
                       float(corrupt_raw))


def _attribution_impl(params, config, clean, corrupt, hook, grid, metric, a_clean,
                      a_corrupt):
    dense = dataclasses.replace(config, attention_impl="dense")
    names = [f"blocks.{l}.{hook}" for l in range(config.num_layers)]
    clean_logits, clean_acts = hooks.run_with_hooks(params, dense, clean, capture=names)
    corrupt_logits, corrupt_acts = hooks.run_with_hooks(params, dense, corrupt, capture=names)
    ref = _reference(clean_logits[:, -1], corrupt_logits[:, -1], metric, a_clean, a_corrupt)

    def measured(deltas):
        edits = {n: hooks.Intervention(jnp.ones((), bool), jnp.ones((), jnp.float32),
                                       deltas[n]) for n in names}
        return metric(hooks.run_with_hooks(params, dense, corrupt, edits)[:, -1], ref)

    grads = jax.grad(measured)({n: jnp.zeros_like(corrupt_acts[n]) for n in names})
    prod = jnp.stack([(clean_acts[n] - corrupt_acts[n]) * grads[n] for n in names])
    # Sum the products over each cell's entries (and the batch: the metric averages it).
    axes = ("layer",) + hooks.hook_axes(names[0])
    if grid == "neuron":  # per-neuron cells patch the last position
        prod = jnp.take(prod, -1, axis=axes.index("pos"))
        axes = tuple(a for a in axes if a != "pos")
    keep = {"layer_pos": ("layer", "pos"), "layer_head": ("layer", "head"),
            "layer_head_pos": ("layer", "head", "pos"), "neuron": ("layer", "neuron")}[grid]
    values = jnp.sum(prod, axis=tuple(i for i, a in enumerate(axes) if a not in keep))
    kept = [a for a in axes if a in keep]
    values = jnp.transpose(values, [kept.index(a) for a in keep])
    return values, metric.raw(clean_logits[:, -1], ref), metric.raw(corrupt_logits[:, -1], ref)


_attribution = jax.jit(_attribution_impl, static_argnames=("config", "hook", "grid", "metric"))
