"""Hook points and interventions: every activation of the AD transformer by its
TransformerLens-style name, readable and editable in the full forward *and* in the
rolling-KV-cache decode step that in-context rollouts run.

The model calls ``point(module, "attn.hook_z", z)`` at each hook point. With no hook
state active (training, plain evaluation) ``point`` returns its argument untouched, so
the training forward is unchanged and pays nothing. ``active(...)`` (used by
``run_with_hooks``, ``decode_step(..., interventions=)`` and the analysis tools) makes a
``HookState`` current for the duration of one trace: its ``edits`` change activations,
its ``capture`` filter records them (Flax ``sow`` into ``"intermediates"``). A context
variable, not an argument threaded through every module call, carries it: the model's
call signatures stay the training ones, and the state only exists while a forward is
being traced.

Hook points (``N`` tokens = ``T`` steps × ``tokens_per_step``; in the decode step the
token axis is the step's ``K`` tokens and the step axis is 1):

    embed.hook_obs / hook_action / hook_reward    (B, T, d)  each input term's embedding
    embed.hook_episode_start / hook_prev_obs      (B, T, d)  (only when the model has it)
    hook_embed                       (B, N, d)   token embeddings (masked, before dropout)
    blocks.{l}.hook_resid_pre        (B, N, d)
    blocks.{l}.ln1.hook_normalized   (B, N, d)
    blocks.{l}.attn.hook_q / hook_k  (B, N, H, Dh)  before RoPE (TransformerLens)
    blocks.{l}.attn.hook_rot_q / hook_rot_k         after RoPE (RoPE models only)
    blocks.{l}.attn.hook_v           (B, N, H, Dh)
    blocks.{l}.attn.hook_attn_scores (B, H, N, N)   pre-softmax: q·k/√Dh + mask (+ ALiBi)
    blocks.{l}.attn.hook_pattern     (B, H, N, N)   softmax probabilities, before dropout
    blocks.{l}.attn.hook_z           (B, N, H, Dh)
    blocks.{l}.attn.hook_result      (B, N, H, d)   per-head outputs (only when asked for)
    blocks.{l}.hook_attn_out         (B, N, d)
    blocks.{l}.hook_resid_mid        (B, N, d)
    blocks.{l}.ln2.hook_normalized   (B, N, d)
    blocks.{l}.mlp.hook_pre          (B, N, mlp_dim)  before the nonlinearity
    blocks.{l}.mlp.hook_post         (B, N, mlp_dim)
    blocks.{l}.hook_mlp_out          (B, N, d)
    blocks.{l}.hook_resid_post       (B, N, d)
    ln_final.hook_normalized         (B, T, d)   only the tokens that predict actions
    hook_logits                      (B, T, num_actions)

In the decode step the score and pattern hooks are over the cache: ``(B, H, K, c*K + K)``,
the ``c`` slots' ``K`` tokens then the step's own ``K``; ``slot_positions`` maps each
column to the absolute token position it holds (−1 where masked), which makes them
comparable with the full forward's rows. ``hook_rot_q/k`` in the decode step are rotated
by the cache's slot phases (``ad.model``: that keeps RoPE angles small on streams of any
length), so they equal the full forward's up to a rotation, and an edit of them means the
same in both only if it commutes with rotations (zeroing, scaling; to add or patch a key,
edit ``hook_k``). Every other per-position hook equals the full forward's at the same
position (``tests/ad/test_hooks.py``). An intervened decode step writes the *intervened*
keys and values into the cache.

Interventions are data (``Intervention``: where, scale, value — ``x' = where ? scale·x +
value : x``), so a batch of them is a pytree and a sweep is one ``jit(vmap)``; zero and
mean ablation, patching and steering are constructors (``ablate``, ``patch``,
``steer``). Any callable ``fn(x, name) -> x`` is an edit too (``run_with_hooks``), for
arbitrary changes outside ``jit``-ed sweeps.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PyTree = Any

# Axis names of every hook (by the part of its name after "blocks.{l}."). "pos" is a token
# axis (T * tokens_per_step), "step" a step axis (T): the decode step slices either to the
# current step.
_D = ("batch", "pos", "d_model")
_HEADS = ("batch", "pos", "head", "d_head")
_PATTERN = ("batch", "head", "pos", "key_pos")
HOOK_AXES: dict[str, tuple[str, ...]] = {
    "embed.hook_obs": ("batch", "step", "d_model"),
    "embed.hook_action": ("batch", "step", "d_model"),
    "embed.hook_reward": ("batch", "step", "d_model"),
    "embed.hook_episode_start": ("batch", "step", "d_model"),
    "embed.hook_prev_obs": ("batch", "step", "d_model"),
    "hook_embed": _D,
    "hook_resid_pre": _D, "ln1.hook_normalized": _D,
    "attn.hook_q": _HEADS, "attn.hook_k": _HEADS, "attn.hook_v": _HEADS,
    "attn.hook_rot_q": _HEADS, "attn.hook_rot_k": _HEADS,
    "attn.hook_attn_scores": _PATTERN, "attn.hook_pattern": _PATTERN,
    "attn.hook_z": _HEADS, "attn.hook_result": ("batch", "pos", "head", "d_model"),
    "hook_attn_out": _D, "hook_resid_mid": _D, "ln2.hook_normalized": _D,
    "mlp.hook_pre": ("batch", "pos", "neuron"), "mlp.hook_post": ("batch", "pos", "neuron"),
    "hook_mlp_out": _D, "hook_resid_post": _D,
    "ln_final.hook_normalized": ("batch", "step", "d_model"),
    "hook_logits": ("batch", "step", "action"),
}


def local_name(name: str) -> str:
    """``"blocks.1.attn.hook_z"`` -> ``"attn.hook_z"`` (the key of ``HOOK_AXES``)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        return ".".join(parts[2:])
    return name


def hook_axes(name: str) -> tuple[str, ...]:
    """The axis names of hook ``name``; a clear error for an unknown name."""
    local = local_name(name)
    if local not in HOOK_AXES:
        raise KeyError(f"unknown hook {name!r}; hooks are {sorted(HOOK_AXES)} (block hooks "
                       f"prefixed by 'blocks.<layer>.')")
    return HOOK_AXES[local]


def hook_name(path: tuple[str, ...]) -> str:
    """A Flax module path (``("blocks_0", "attn.hook_z")``) as a hook name
    (``"blocks.0.attn.hook_z"``)."""
    parts = []
    for p in path:
        if p.startswith("blocks_") and p[7:].isdigit():
            parts += ["blocks", p[7:]]
        else:
            parts.append(p)
    return ".".join(parts)


def hook_names(config, *, result: bool = True) -> list[str]:
    """Every hook point of a model with ``config`` (a ``ModelConfig``), in forward order."""
    names = ["embed.hook_obs", "embed.hook_action", "embed.hook_reward"]
    if config.episode_start_token:
        names.append("embed.hook_episode_start")
    if config.prev_obs_token:
        names.append("embed.hook_prev_obs")
    names.append("hook_embed")
    for l in range(config.num_layers):
        attn = ["attn.hook_q", "attn.hook_k", "attn.hook_v"]
        if config.positions == "rope":
            attn += ["attn.hook_rot_q", "attn.hook_rot_k"]
        attn += ["attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z"]
        if result:
            attn.append("attn.hook_result")
        names += [f"blocks.{l}.{n}" for n in (
            ["hook_resid_pre", "ln1.hook_normalized"] + attn
            + ["hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre",
               "mlp.hook_post", "hook_mlp_out", "hook_resid_post"])]
    return names + ["ln_final.hook_normalized", "hook_logits"]


# ----------------------------------------------------------------------------------------
# Interventions as data
# ----------------------------------------------------------------------------------------
@struct.dataclass
class Intervention:
    """``x' = where(where, scale * x + value, x)``, each field broadcast to the activation.

    zero ablation: scale 0, value 0; mean ablation: scale 0, value = the mean; patching:
    scale 0, value = the other run's activation; steering: scale 1, value = the vector.
    Entries outside ``where`` are returned bit for bit. A leading batch axis on every
    field (``stack``) makes a sweep: ``jax.vmap`` over it.
    """

    where: jax.Array  # bool, broadcastable to the activation
    scale: jax.Array  # float, broadcastable
    value: jax.Array  # float, broadcastable

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(self.where, self.scale * x + self.value, x).astype(x.dtype)


def where(name: str, config, *, heads=None, positions=None, neurons=None,
          num_positions: int | None = None, batch=None) -> np.ndarray:
    """A bool mask over hook ``name``'s axes, size 1 on every axis not selected.

    ``heads``, ``neurons``: an int, a list of ints or a bool array (counts from ``config``,
    a ``ModelConfig``). ``positions``: ints (``num_positions`` gives the axis length), a
    bool array over the token axis (the step axis for step-indexed hooks, the query axis
    for scores and patterns), or a (B, N) bool array of per-row positions (e.g.
    ``ad.interp.streams.token_positions`` of a selector). ``batch``: a bool array (B,).
    None selects a whole axis.
    """
    axes = hook_axes(name)
    mask = np.ones((1,) * len(axes), bool)

    def along(axis: str, sel, length: int | None):
        nonlocal mask
        if sel is None:
            return
        if axis not in axes:
            raise ValueError(f"hook {name!r} has no {axis!r} axis (axes {axes})")
        sel = np.asarray(sel)
        if sel.dtype == bool and sel.ndim == 2 and axis in ("pos", "step"):
            view = [1] * len(axes)  # per-row positions (B, N), e.g. from a stream selector
            view[0], view[axes.index(axis)] = sel.shape
            mask = mask & sel.reshape(view)
            return
        if sel.dtype != bool:
            if length is None:
                raise ValueError(f"where({name!r}): integer positions need num_positions")
            ints, sel = sel.reshape(-1), np.zeros(length, bool)
            if ints.size and (ints.min() < -length or ints.max() >= length):
                raise ValueError(f"where({name!r}): {axis} {ints.tolist()} out of range "
                                 f"[0, {length})")
            sel[ints] = True
        view = [1] * len(axes)
        view[axes.index(axis)] = sel.shape[0]
        mask = mask & sel.reshape(view)

    along("batch", batch, None)
    along("step" if "step" in axes else "pos", positions, num_positions)
    along("head", heads, config.num_heads)
    along("neuron", neurons, config.mlp_dim)
    return mask


def ablate(name: str, config, *, value=0.0, **select) -> Intervention:
    """Replace the selected entries by ``value``: 0 (zero ablation) or a mean activation
    broadcast to the hook (mean ablation, e.g. ``ad.interp.mean_activations``)."""
    return Intervention(where=jnp.asarray(where(name, config, **select)),
                        scale=jnp.zeros((), jnp.float32), value=jnp.asarray(value, jnp.float32))


def patch(name: str, config, value, **select) -> Intervention:
    """Replace the selected entries by another run's activation ``value`` (full shape)."""
    return Intervention(where=jnp.asarray(where(name, config, **select)),
                        scale=jnp.zeros((), jnp.float32), value=jnp.asarray(value, jnp.float32))


def steer(name: str, config, vector, alpha: float = 1.0, **select) -> Intervention:
    """Add ``alpha * vector`` (broadcast to the hook, e.g. a (d,) direction) to the
    selected entries."""
    return Intervention(where=jnp.asarray(where(name, config, **select)),
                        scale=jnp.ones((), jnp.float32),
                        value=alpha * jnp.asarray(vector, jnp.float32))


def identity(name: str) -> Intervention:
    """An intervention that selects everything and changes nothing (x · 1 + 0)."""
    ndim = len(hook_axes(name))
    return Intervention(where=jnp.ones((1,) * ndim, bool), scale=jnp.ones((), jnp.float32),
                        value=jnp.zeros((), jnp.float32))


def stack(interventions: Iterable[Mapping[str, Intervention]]) -> dict[str, Intervention]:
    """Many edit dicts with the same keys as one dict whose fields have a leading sweep
    axis (broadcast to a common shape first), ready for ``jax.vmap``."""
    interventions = list(interventions)
    keys = set(interventions[0])
    if any(set(i) != keys for i in interventions):
        raise ValueError("stack: every intervention dict needs the same hook names")
    out = {}
    for k in sorted(keys):
        items = [i[k] for i in interventions]
        fields = {}
        for f in ("where", "scale", "value"):
            arrays = [jnp.asarray(getattr(i, f)) for i in items]
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
            fields[f] = jnp.stack([jnp.broadcast_to(a, shape) for a in arrays])
        out[k] = Intervention(**fields)
    return out


# ----------------------------------------------------------------------------------------
# The hook state and the hook point the model calls
# ----------------------------------------------------------------------------------------
Edit = Intervention | Callable[[jax.Array, str], jax.Array]


@dataclasses.dataclass(frozen=True)
class HookState:
    """What the hook points do during one forward (or one decode step)."""

    edits: Mapping[str, Edit] = dataclasses.field(default_factory=dict)
    capture: Callable[[str], bool] | None = None  # names to record (sow), None: none
    step: Any = None  # decode step: the absolute index t of the step being decoded
    tokens_per_step: int = 1  # decode step: how to slice a token axis to the step

    def wants(self, name: str) -> bool:
        return name in self.edits or (self.capture is not None and self.capture(name))


_STATE: contextvars.ContextVar[HookState | None] = contextvars.ContextVar("ad_hooks",
                                                                           default=None)


@contextlib.contextmanager
def active(edits: Mapping[str, Edit] | None = None, capture=None, *, step=None,
           tokens_per_step: int = 1):
    """Make hook edits / capture current while a forward is traced.

    ``capture``: None (record nothing), True (every hook), an iterable of names, or a
    predicate ``name -> bool`` (TransformerLens's ``names_filter``). Unknown edit names
    are refused here, so a typo never silently edits nothing.
    """
    edits = dict(edits or {})
    for name in edits:
        hook_axes(name)
    token = _STATE.set(HookState(edits=edits, capture=names_filter(capture), step=step,
                                 tokens_per_step=tokens_per_step))
    try:
        yield
    finally:
        _STATE.reset(token)


def names_filter(capture) -> Callable[[str], bool] | None:
    """``capture`` (None / True / names / predicate) as a predicate or None."""
    if capture is None or capture is False:
        return None
    if capture is True:
        return lambda name: True
    if callable(capture):
        return capture
    if isinstance(capture, str):
        capture = [capture]
    wanted = frozenset(capture)
    for name in wanted:
        hook_axes(name)
    return wanted.__contains__


def current() -> HookState | None:
    """The active hook state (None outside ``active``)."""
    return _STATE.get()


def full_name(module, local: str) -> str:
    return hook_name(tuple(module.path) + (local,))


def wants(module, local: str) -> bool:
    """Would ``point(module, local, ...)`` do anything (edit or record)?"""
    state = _STATE.get()
    return state is not None and state.wants(full_name(module, local))


def point(module, local: str, x: jax.Array) -> jax.Array:
    """The hook point ``local`` of ``module``: apply its edit, record it if captured.

    The recorded value is the one that flows on (after the edit)."""
    state = _STATE.get()
    if state is None:
        return x
    name = full_name(module, local)
    edit = state.edits.get(name)
    if edit is not None:
        if isinstance(edit, Intervention):
            x = (_at_step(edit, name, state) if state.step is not None
                 else _padded(edit, name, x.shape))(x)
        else:
            x = edit(x, name)
    if state.capture is not None and state.capture(name):
        module.sow("intermediates", local, x)
    return x


def _padded(edit: Intervention, name: str, shape) -> Intervention:
    """The blocked attention pads a window to whole blocks at its end: an intervention
    given over the window's positions selects nothing in the padding."""
    axes = hook_axes(name)
    fields = {"where": edit.where, "scale": edit.scale, "value": edit.value}
    for i, a in enumerate(axes):
        if a not in ("pos", "key_pos"):
            continue
        for f, arr in fields.items():
            arr = jnp.asarray(arr)
            if arr.ndim == len(axes) and 1 < arr.shape[i] < shape[i]:
                pad = [(0, 0)] * arr.ndim
                pad[i] = (0, shape[i] - arr.shape[i])
                fields[f] = jnp.pad(arr, pad)  # where: False, value/scale: 0 (unused)
    return Intervention(**fields)


def _at_step(edit: Intervention, name: str, state: HookState) -> Intervention:
    """In the decode step, an intervention whose fields span a whole stream's positions
    (token or step axis longer than 1) applies its slice for the current step."""
    axes = hook_axes(name)
    if "step" in axes:
        axis, width, start = axes.index("step"), 1, state.step
    else:
        axis, width = axes.index("pos"), state.tokens_per_step
        start = state.step * state.tokens_per_step

    def cut(a):
        a = jnp.asarray(a)
        if a.ndim != len(axes) or a.shape[axis] <= 1:
            return a
        return jax.lax.dynamic_slice_in_dim(a, start, width, axis=axis)
    return Intervention(where=cut(edit.where), scale=cut(edit.scale), value=cut(edit.value))


def collect(intermediates: PyTree) -> dict[str, jax.Array]:
    """Flatten Flax's sown ``"intermediates"`` to ``{hook name: value}``."""
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(
            intermediates, is_leaf=lambda v: isinstance(v, tuple))[0]:
        flat[hook_name(tuple(k.key for k in path))] = value[0]  # sow stores a 1-tuple
    return flat


# ----------------------------------------------------------------------------------------
# Running the model with hooks
# ----------------------------------------------------------------------------------------
def run_with_hooks(params: PyTree, config, inputs, hooks: Mapping[str, Edit] | None = None,
                   *, capture=None, valid=None, train: bool = False, rngs=None):
    """Logits of the full forward with ``hooks`` applied (``{name: Intervention or
    fn(x, name) -> x}``); with ``capture``, also ``{name: activation}`` (after edits).

    Interventions on ``hook_attn_scores`` / ``hook_pattern`` run the dense attention
    (same logits, up to float rounding), since the blocked one never forms those rows.
    """
    from ad.model import ADTransformer  # ad.model imports this module

    hooks = dict(hooks or {})
    if any(local_name(n) in ("attn.hook_attn_scores", "attn.hook_pattern") for n in hooks) \
            and config.attention_impl != "dense":
        config = dataclasses.replace(config, attention_impl="dense")
    with active(hooks, capture):
        out = ADTransformer(config).apply({"params": params}, inputs, train=train,
                                          valid=valid, rngs=rngs,
                                          mutable=["intermediates"] if capture else False)
    if not capture:
        return out
    logits, state = out
    return logits, _trim(collect(state.get("intermediates", {})), inputs, config)


def _trim(cache: dict, inputs, config) -> dict:
    """Drop the blocked attention's end padding (windows are padded to whole blocks)."""
    T = inputs.prev_action.shape[1]
    N = T * config.tokens_per_step
    out = {}
    for name, value in cache.items():
        axes = hook_axes(name)
        if "key_pos" in axes:
            value = value[..., :N, :N]
        elif "pos" in axes:
            value = value[:, :N]
        out[name] = value
    return out


def slot_positions(config, step) -> jax.Array:
    """For the decode step of absolute step ``step``: the token position each column of its
    ``hook_attn_scores`` / ``hook_pattern`` holds (``(c*K + K,)`` int32, −1 where masked:
    empty or stale slots). Column ``s*K + m`` is slot ``s``'s token ``m``; the last ``K``
    columns are the step's own tokens."""
    K, c = config.tokens_per_step, config.context
    w = step % c
    slots = jnp.arange(c)
    age = (w - slots) % c
    held = step - age  # the step each slot holds
    ok = (age > 0) & (held >= 0)
    pos = held[:, None] * K + jnp.arange(K)[None]
    cache_pos = jnp.where(ok[:, None], pos, -1).reshape(c * K)
    return jnp.concatenate([cache_pos, step * K + jnp.arange(K)]).astype(jnp.int32)
