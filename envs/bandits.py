"""Bernoulli multi-armed bandits: the plain one and the adversarial one of the AD paper.

Semantics (both):
- ``num_arms`` arms; action ``a`` in ``[0, num_arms)`` pulls arm ``a`` and pays
  ``1.0`` with probability ``means[a]``, else ``0.0``.
- One pull is one episode: every step returns ``terminated=True`` (and
  ``truncated=False``), so a history is a stream of pulls and the auto-reset of
  ``Environment.step`` starts the next pull of the same task.
- There is nothing to observe: the observation is a constant int32 array of shape
  ``(1,)`` equal to 0, spec ``ArraySpec((1,), int32, 1)`` (gymnasium
  ``MultiDiscrete([1])``).
- The task is the vector of arm means (``BanditParams.means``, float32
  ``(num_arms,)``), a pytree leaf so ``vmap`` over tasks works.
- ``optimal_return`` is the exact expected reward of one pull of the best arm,
  ``max(means)``; ``optimal_action`` is ``argmax(means)`` (lowest index on ties).
- Out-of-range actions are not checked inside jitted code (JAX clamps the index to
  the last arm); the gymnasium face rejects them with a ``ValueError``.

Bernoulli bandit (``bernoulli-bandit``): arm means are drawn i.i.d. from
``mean_dist``: ``"uniform"`` on ``[mean_low, mean_high]`` (default ``[0, 1]``) or
``"beta"`` with shape parameters ``(beta_a, beta_b)``. The task distribution is
continuous, so train and test tasks come from separate key streams:
``sample_params(key, split)`` draws from ``fold_in(key, 0)`` for ``"train"`` and
``fold_in(key, 1)`` for ``"test"``, so the same key never gives the same task in both
splits (and two draws coincide with probability 0).

Adversarial bandit (``adversarial-bandit``, Laskin et al. 2022): 10 arms, means
U(0, 1) drawn as above, then the best arm is moved to a chosen parity of its 0-based
index. In a train task the best arm is made *odd* (index 1, 3, 5, 7, 9) with
probability ``parity_prob`` = 0.95, otherwise even; in a test task it is made *even*
(index 0, 2, 4, 6, 8) with probability 0.95, otherwise odd. The move swaps the best
mean with the mean of an arm drawn uniformly among the arms of the chosen parity (the
swap may be with itself), so the multiset of means is unchanged and still i.i.d.
uniform; only which arm is best is biased. A learner that memorises "odd arms pay"
from training tasks fails on test tasks.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import ArraySpec, Environment, check_split

MEAN_DISTS = ("uniform", "beta")


@struct.dataclass
class BanditParams:
    means: jax.Array  # (num_arms,) float32, success probability of each arm


@struct.dataclass
class BanditState:
    t: jax.Array  # () int32, pulls taken in this episode (0 after reset, 1 after the pull)


def _split_stream(key: jax.Array, split: str) -> jax.Array:
    """The separate key stream of a split (train = fold 0, test = fold 1)."""
    check_split(split)
    return jax.random.fold_in(key, 0 if split == "train" else 1)


@dataclasses.dataclass(frozen=True)
class BernoulliBandit(Environment):
    """K-armed Bernoulli bandit, one pull per episode (module docstring)."""

    name: ClassVar[str] = "bernoulli-bandit"
    reset_uses_key: ClassVar[bool] = False  # only the pull's reward is random

    num_arms: int = 5  # WARN: static (sets the params shape and num_actions), cannot vmap
    mean_dist: str = "uniform"  # distribution of each arm mean: "uniform" or "beta"
    mean_low: float = 0.0  # uniform: lowest arm mean, in [0, 1]
    mean_high: float = 1.0  # uniform: highest arm mean, in [mean_low, 1]
    beta_a: float = 1.0  # beta: first shape parameter, > 0
    beta_b: float = 1.0  # beta: second shape parameter, > 0

    def __post_init__(self):
        self._positive(num_arms=self.num_arms)
        if self.mean_dist not in MEAN_DISTS:
            raise ValueError(
                f"{self.name}: mean_dist must be one of {MEAN_DISTS}, got {self.mean_dist!r}"
            )
        for field in ("mean_low", "mean_high", "beta_a", "beta_b"):
            value = getattr(self, field)
            if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
                raise ValueError(f"{self.name}: {field} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"{self.name}: {field} must be finite, got {value}")
        for field in ("mean_low", "mean_high"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(
                    f"{self.name}: {field} must lie in [0, 1] (it is a probability), "
                    f"got {getattr(self, field)}"
                )
        if self.mean_low > self.mean_high:
            raise ValueError(
                f"{self.name}: mean_low must be <= mean_high, got mean_low={self.mean_low} "
                f"> mean_high={self.mean_high}"
            )
        for field in ("beta_a", "beta_b"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{self.name}: {field} must be > 0, got {getattr(self, field)}")

    @property
    def num_actions(self) -> int:
        return self.num_arms

    @property
    def max_episode_steps(self) -> int:
        return 1  # one pull is one episode

    def observation_spec(self):
        return ArraySpec((1,), jnp.int32, 1)

    # ---- tasks ----------------------------------------------------------------------
    def _draw_means(self, key: jax.Array) -> jax.Array:
        if self.mean_dist == "beta":
            return jax.random.beta(key, self.beta_a, self.beta_b, (self.num_arms,), jnp.float32)
        return jax.random.uniform(
            key, (self.num_arms,), jnp.float32, self.mean_low, self.mean_high
        )

    def sample_params(self, key: jax.Array, split: str = "train") -> BanditParams:
        return BanditParams(means=self._draw_means(_split_stream(key, split)))

    def optimal_return(self, params: BanditParams) -> jax.Array:
        return jnp.max(params.means, axis=-1)

    def optimal_action(self, key, state: BanditState, params: BanditParams) -> jax.Array:
        return jnp.argmax(params.means, axis=-1).astype(jnp.int32)

    # ---- dynamics ---------------------------------------------------------------------
    def reset_env(self, key, params):
        return jnp.zeros((1,), jnp.int32), BanditState(t=jnp.int32(0))

    def step_env(self, key, state: BanditState, action, params: BanditParams):
        reward = (jax.random.uniform(key) < params.means[action]).astype(jnp.float32)
        obs = jnp.zeros((1,), jnp.int32)
        return obs, BanditState(t=state.t + 1), reward, jnp.bool_(True), jnp.bool_(False), {}


@dataclasses.dataclass(frozen=True)
class AdversarialBandit(BernoulliBandit):
    """10-armed bandit whose best arm is odd in 95% of train tasks, even in 95% of test."""

    name: ClassVar[str] = "adversarial-bandit"

    num_arms: int = 10  # WARN: static, cannot vmap; >= 2 so both parities exist
    parity_prob: float = 0.95  # P(best arm has the split's favoured parity): odd train, even test

    def __post_init__(self):
        super().__post_init__()
        if self.num_arms < 2:
            raise ValueError(
                f"{self.name}: num_arms must be >= 2 so that both odd and even arms exist, "
                f"got {self.num_arms}"
            )
        p = self.parity_prob
        if not isinstance(p, (int, float, np.number)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError(f"{self.name}: parity_prob must be a probability in [0, 1], got {p!r}")

    def sample_params(self, key: jax.Array, split: str = "train") -> BanditParams:
        k_means, k_choice = jax.random.split(_split_stream(key, split))
        means = self._draw_means(k_means)
        u_parity, u_arm = jax.random.uniform(k_choice, (2,))
        favoured = 1 if split == "train" else 0  # odd in train, even in test
        parity = jnp.where(u_parity < self.parity_prob, favoured, 1 - favoured)
        # Arms of parity p are p, p + 2, ...: ceil(K/2) even ones, floor(K/2) odd ones.
        count = (self.num_arms - parity + 1) // 2
        slot = jnp.minimum(jnp.floor(u_arm * count).astype(jnp.int32), count - 1)
        target = parity + 2 * slot
        # Swap the best mean with the target's (masks rather than scatters: cheap to
        # compile and to vmap).
        arms = jnp.arange(self.num_arms)
        best = jnp.argmax(means)
        best_mean = jnp.max(means)
        target_mean = jnp.sum(jnp.where(arms == target, means, 0.0))
        swapped = jnp.where(arms == target, best_mean, jnp.where(arms == best, target_mean, means))
        return BanditParams(means=swapped)
