"""Small networks and observation encoders shared by the PPO and DQN sources.

Observations are pytrees of discrete leaves described by the env's observation spec
(``ArraySpec.num_values``). Two encodings turn one observation plus the env's
``source_features`` into a flat float32 vector:

- ``"onehot"``: every entry of every discrete leaf one-hot encoded and concatenated
  (Dark Room's cell ``(x, y)`` becomes 9 + 9 = 18 inputs), then the source features.
- ``"joint"``: one one-hot over the *joint* value of all discrete entries (Dark Room:
  one of 81 cells), outer-multiplied by ``[1, *source_features]`` (Key-to-Door: 81 cell
  indicators plus 81 "cell and has-key" indicators). Even a linear layer on top is then
  a table over states, which makes small-grid learners fast and sure. Only allowed
  when the joint state count is at most ``MAX_JOINT_VALUES``.

Non-discrete leaves (``num_values is None``) are passed through as floats in both.
One-hot codes are built from comparisons with ``arange`` rather than gathers, which
is cheaper under ``vmap`` on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from envs.core import Environment

ENCODINGS = ("onehot", "joint")
ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu}
MAX_JOINT_VALUES = 4096  # beyond this the joint one-hot is a wasteful input layer


class Encoder(NamedTuple):
    """``encode(obs, features) -> (dim,) float32`` for one unbatched observation."""

    encode: Callable[[object, jax.Array], jax.Array]
    dim: int


def one_hot(x: jax.Array, n: int) -> jax.Array:
    """``(..., n)`` float32 one-hot of integer ``x`` via comparisons (no gather)."""
    return (x[..., None] == jnp.arange(n, dtype=x.dtype)).astype(jnp.float32)


def make_encoder(env: Environment, encoding: str = "onehot") -> Encoder:
    """Build the flat float encoder of ``env``'s observations (see module docstring)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    specs, treedef = jax.tree.flatten(
        env.observation_spec(), is_leaf=lambda s: hasattr(s, "num_values")
    )
    num_features = int(np.prod(jax.eval_shape(env.source_features, abstract_state(env)).shape))
    discrete = [s for s in specs if s.num_values is not None]
    continuous_dim = sum(int(np.prod(s.shape)) for s in specs if s.num_values is None)

    if encoding == "onehot":
        dim = sum(int(np.prod(s.shape)) * s.num_values for s in discrete)
        dim += continuous_dim + num_features

        def encode(obs, features):
            parts = []
            for spec, leaf in zip(specs, treedef.flatten_up_to(obs)):
                flat = jnp.reshape(leaf, (-1,))
                if spec.num_values is None:
                    parts.append(flat.astype(jnp.float32))
                else:
                    parts.append(one_hot(flat.astype(jnp.int32), spec.num_values).reshape(-1))
            parts.append(jnp.reshape(features, (-1,)).astype(jnp.float32))
            return jnp.concatenate(parts)

        return Encoder(encode, dim)

    # joint: mixed-radix index over every discrete entry.
    radices = [s.num_values for s in discrete for _ in range(int(np.prod(s.shape)))]
    num_joint = math.prod(radices)
    if num_joint > MAX_JOINT_VALUES:
        raise ValueError(
            f"encoding='joint': {env.name} has {num_joint} joint observation values "
            f"(> {MAX_JOINT_VALUES}); use encoding='onehot'"
        )
    strides = np.cumprod([1] + radices[:-1]).astype(np.int32)
    dim = num_joint * (1 + num_features) + continuous_dim

    def encode(obs, features):
        entries, rest = [], []
        for spec, leaf in zip(specs, treedef.flatten_up_to(obs)):
            flat = jnp.reshape(leaf, (-1,))
            (rest if spec.num_values is None else entries).append(flat)
        index = jnp.sum(jnp.concatenate(entries).astype(jnp.int32) * strides)
        cell = one_hot(index, num_joint)  # (num_joint,)
        scale = jnp.concatenate([jnp.ones((1,)), jnp.reshape(features, (-1,)).astype(jnp.float32)])
        parts = [jnp.outer(scale, cell).reshape(-1)]
        parts += [r.astype(jnp.float32) for r in rest]
        return jnp.concatenate(parts)

    return Encoder(encode, dim)


def abstract_state(env: Environment):
    """An abstract env state, to read the shape of ``source_features`` without running."""
    params = jax.eval_shape(lambda k: env.sample_params(k, "train"), jax.random.key(0))
    return jax.eval_shape(lambda k, p: env.reset(k, p)[1], jax.random.key(0), params)


def scaled_init(gain: float):
    """Truncated-normal weights with std ``gain / sqrt(fan_in)``.

    Not ``orthogonal``: that init runs a batched LAPACK QR when ``train`` is vmapped
    over histories, and jaxlib's QR kernel can deadlock the 2-thread XLA CPU pool
    (observed with jax 0.10.2 on 2 cores: every thread parked in ParallelBatchMap).
    A fan-in-scaled normal has the same per-entry scale for the shapes used here.
    """
    return nn.initializers.variance_scaling(gain**2, "fan_in", "truncated_normal")


class MLP(nn.Module):
    """Hidden layers (init gain sqrt 2, for tanh/relu), then a linear head."""

    hidden_sizes: Sequence[int]
    out_size: int
    activation: str = "tanh"
    head_scale: float = 1.0  # init gain of the output layer

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_sizes:
            x = act(nn.Dense(width, kernel_init=scaled_init(np.sqrt(2)))(x))
        return nn.Dense(self.out_size, kernel_init=scaled_init(self.head_scale))(x)


class ActorCritic(nn.Module):
    """Policy logits and state value; optionally one torso shared by both heads.

    A shared torso halves the hidden-layer FLOPs per step; separate torsos keep the
    value loss from shaping the policy's features. Small policy-head init (0.01) starts
    PPO near the uniform policy, which is what a from-scratch learning history should
    look like.
    """

    num_actions: int
    hidden_sizes: Sequence[int]
    activation: str = "tanh"
    shared_torso: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.shared_torso:
            act = ACTIVATIONS[self.activation]
            h = x
            for width in self.hidden_sizes:
                h = act(nn.Dense(width, kernel_init=scaled_init(np.sqrt(2)))(h))
            # One matmul for both heads: fewer, larger ops.
            out = nn.Dense(
                self.num_actions + 1, kernel_init=_head_init(self.num_actions), name="heads"
            )(h)
            return out[..., :-1], out[..., -1]
        logits = MLP(self.hidden_sizes, self.num_actions, self.activation, 0.01, name="actor")(x)
        value = MLP(self.hidden_sizes, 1, self.activation, 1.0, name="critic")(x)
        return logits, value[..., 0]


def _head_init(num_actions: int):
    """Init scaled 0.01 for the policy columns and 1.0 for the value column."""
    base = scaled_init(1.0)

    def init(key, shape, dtype=jnp.float32):
        w = base(key, shape, dtype)
        scale = jnp.concatenate([jnp.full((num_actions,), 0.01), jnp.ones((1,))]).astype(dtype)
        return w * scale

    return init


class QNetwork(nn.Module):
    """Action values ``(num_actions,)`` from an encoded observation."""

    num_actions: int
    hidden_sizes: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return MLP(self.hidden_sizes, self.num_actions, self.activation, 1.0)(x)
