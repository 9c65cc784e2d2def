"""Classic bandit algorithms as source agents: UCB1, Thompson sampling, ε-greedy, random.

Each algorithm is exposed as a ``BanditSource`` record (``ucb``, ``thompson``,
``egreedy``, ``random``) with the source interface of ``source_agents``: a frozen
``Config`` and ``make_train(env, config) -> train(key, params) -> LearningHistory``.
``config.num_steps`` is the number of pulls in the history.

Semantics shared by all four:
- The env's actions are the arms (``env.num_actions`` of them). The algorithms are meant
  for envs whose episodes are single pulls (``bernoulli-bandit``, ``adversarial-bandit``),
  but they treat every env step as one pull and ignore observations and episode flags,
  so they run on any env; they never read the task params, only the rewards they observe.
- Per-arm statistics are the pull count and the summed reward. Rewards are assumed to lie
  in ``[0, 1]`` (Thompson sampling's Beta posterior needs it).
- Step ``t`` of the history is pull ``t``: ``history.reward[t]`` is the reward of that
  pull, so ``history.reward`` *is* the per-pull reward curve used when these algorithms
  serve as evaluation baselines (``pull_rewards`` runs a batch of tasks in one call, and
  ``pseudo_regret`` turns the chosen arms into per-pull expected regret given arm means).

Algorithm details (choices that matter for reproducing numbers):
- UCB1 (Auer et al. 2002): pull every arm once in index order, then pull
  ``argmax_a mean_a + c * sqrt(2 ln n / n_a)`` with ``n`` the pulls so far; ties go to
  the lowest index, so UCB1 is deterministic given the rewards.
- Thompson sampling: independent ``Beta(prior_alpha, prior_beta)`` priors, updated with
  ``alpha += r``, ``beta += 1 - r`` (the exact conjugate update for Bernoulli rewards).
- ε-greedy: with probability ε a uniformly random arm, else the arm with the best
  empirical mean, where an untried arm counts as best (so the greedy branch tries every
  arm once) and ties are broken uniformly at random. ε is constant, or decays linearly
  from 1 to ``epsilon`` over the first ``decay_fraction`` of the pulls.
- random: a uniformly random arm every pull.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from envs.core import Environment
from source_agents.history import LearningHistory


class ArmStats(NamedTuple):
    """What a bandit algorithm knows after some pulls."""

    counts: jax.Array  # (K,) float32, pulls of each arm so far
    sums: jax.Array  # (K,) float32, summed reward of each arm so far


# select(key, stats) -> () int32 arm; the only algorithm-specific part of a bandit learner.
SelectFn = Callable[[jax.Array, ArmStats], jax.Array]


# ---- configs -----------------------------------------------------------------------------
def _check_num_steps(name: str, num_steps) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"{name}.num_steps must be an int >= 1, got {num_steps!r}")


def _check_real(name: str, field: str, value, low: float, high: float = math.inf) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        bounds = f"[{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise ValueError(f"{name}.{field} must be a finite number in {bounds}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class UCBConfig:
    num_steps: int = 100  # pulls in the history
    c: float = 1.0  # exploration scale: bonus c * sqrt(2 ln n / n_a); 1 is textbook UCB1

    def __post_init__(self):
        _check_num_steps("UCBConfig", self.num_steps)
        _check_real("UCBConfig", "c", self.c, 0.0)


@dataclasses.dataclass(frozen=True)
class ThompsonConfig:
    num_steps: int = 100  # pulls in the history
    prior_alpha: float = 1.0  # Beta prior pseudo-successes per arm (1, 1 = uniform prior)
    prior_beta: float = 1.0  # Beta prior pseudo-failures per arm

    def __post_init__(self):
        _check_num_steps("ThompsonConfig", self.num_steps)
        for field in ("prior_alpha", "prior_beta"):
            _check_real("ThompsonConfig", field, getattr(self, field), 0.0)
            if getattr(self, field) <= 0:
                raise ValueError(f"ThompsonConfig.{field} must be > 0, got {getattr(self, field)}")


@dataclasses.dataclass(frozen=True)
class EGreedyConfig:
    num_steps: int = 100  # pulls in the history
    epsilon: float = 0.1  # exploration probability (the final one when decaying)
    # 0: constant ε. f > 0: ε falls linearly from 1 to `epsilon` over the first f * num_steps
    # pulls, then stays at `epsilon`.
    decay_fraction: float = 0.0

    def __post_init__(self):
        _check_num_steps("EGreedyConfig", self.num_steps)
        _check_real("EGreedyConfig", "epsilon", self.epsilon, 0.0, 1.0)
        _check_real("EGreedyConfig", "decay_fraction", self.decay_fraction, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class RandomConfig:
    num_steps: int = 100  # pulls in the history

    def __post_init__(self):
        _check_num_steps("RandomConfig", self.num_steps)


# ---- the shared learner loop ---------------------------------------------------------------
def _make_bandit_train(env: Environment, num_steps: int, select: SelectFn):
    """``train(key, params) -> LearningHistory`` of ``num_steps`` pulls chosen by ``select``."""
    num_arms = env.num_actions

    def train(key: jax.Array, params) -> LearningHistory:
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)
        stats = ArmStats(jnp.zeros(num_arms, jnp.float32), jnp.zeros(num_arms, jnp.float32))

        def pull(carry, step_key):
            obs, state, stats = carry
            key_act, key_env = jax.random.split(step_key)
            action = select(key_act, stats).astype(jnp.int32)
            next_obs, state, reward, terminated, truncated, _ = env.step(
                key_env, state, action, params
            )
            reward = jnp.asarray(reward, jnp.float32)
            stats = ArmStats(stats.counts.at[action].add(1.0), stats.sums.at[action].add(reward))
            record = LearningHistory(obs, action, reward, terminated, truncated)
            return (next_obs, state, stats), record

        _, history = jax.lax.scan(
            pull, (obs, state, stats), jax.random.split(key_steps, num_steps)
        )
        return history

    return train


def _check_env(env: Environment) -> None:
    if not isinstance(env, Environment):
        raise ValueError(f"env must be an envs.core.Environment, got {type(env).__name__}")


def _empirical_means(stats: ArmStats) -> jax.Array:
    return stats.sums / jnp.maximum(stats.counts, 1.0)


# ---- the algorithms ------------------------------------------------------------------------
def ucb_index(stats: ArmStats, c: float) -> jax.Array:
    """UCB1 index of every arm, ``+inf`` for untried arms (so they are pulled first)."""
    total = stats.counts.sum()
    # ln(n) with n >= 1 pulls so far; at n = 1 the bonus is 0 but only untried arms remain.
    bonus = c * jnp.sqrt(2.0 * jnp.log(jnp.maximum(total, 1.0)) / jnp.maximum(stats.counts, 1.0))
    return jnp.where(stats.counts == 0, jnp.inf, _empirical_means(stats) + bonus)


def make_ucb(env: Environment, config: UCBConfig):
    """UCB1: each arm once, then argmax of mean + c * sqrt(2 ln n / n_a) (module docstring)."""
    _check_env(env)
    if not isinstance(config, UCBConfig):
        raise ValueError(f"ucb needs a UCBConfig, got {type(config).__name__}")

    def select(key, stats):
        # jnp.argmax returns the first maximum: untried arms go in index order, ties to
        # the lowest index, and the key is unused (UCB1 is deterministic given rewards).
        return jnp.argmax(ucb_index(stats, config.c))

    return _make_bandit_train(env, config.num_steps, select)


def make_thompson(env: Environment, config: ThompsonConfig):
    """Thompson sampling with independent Beta priors (module docstring)."""
    _check_env(env)
    if not isinstance(config, ThompsonConfig):
        raise ValueError(f"thompson needs a ThompsonConfig, got {type(config).__name__}")

    def select(key, stats):
        alpha = config.prior_alpha + stats.sums
        beta = config.prior_beta + stats.counts - stats.sums
        return jnp.argmax(jax.random.beta(key, alpha, beta))

    return _make_bandit_train(env, config.num_steps, select)


def egreedy_epsilon(config: EGreedyConfig, pulls: jax.Array) -> jax.Array:
    """ε used for the pull that follows ``pulls`` earlier pulls."""
    if config.decay_fraction == 0.0:
        return jnp.float32(config.epsilon)
    decay_pulls = config.decay_fraction * config.num_steps
    progress = jnp.minimum(pulls / decay_pulls, 1.0)
    return (1.0 + (config.epsilon - 1.0) * progress).astype(jnp.float32)


def make_egreedy(env: Environment, config: EGreedyConfig):
    """ε-greedy on empirical means, untried arms first, random tie-breaking (module docstring)."""
    _check_env(env)
    if not isinstance(config, EGreedyConfig):
        raise ValueError(f"egreedy needs an EGreedyConfig, got {type(config).__name__}")
    num_arms = env.num_actions

    def select(key, stats):
        key_explore, key_arm, key_tie = jax.random.split(key, 3)
        value = jnp.where(stats.counts == 0, jnp.inf, _empirical_means(stats))
        # Uniform among the maximisers: with 0/1 rewards ties are frequent, and breaking
        # them towards low indices would bias which arms get exploited.
        best = value == value.max()
        greedy = jnp.argmax(jnp.where(best, jax.random.uniform(key_tie, (num_arms,)), -1.0))
        explore = jax.random.uniform(key_explore) < egreedy_epsilon(config, stats.counts.sum())
        return jnp.where(explore, jax.random.randint(key_arm, (), 0, num_arms), greedy)

    return _make_bandit_train(env, config.num_steps, select)


def make_random(env: Environment, config: RandomConfig):
    """A uniformly random arm every pull (the no-learning baseline)."""
    _check_env(env)
    if not isinstance(config, RandomConfig):
        raise ValueError(f"random needs a RandomConfig, got {type(config).__name__}")
    num_arms = env.num_actions

    def select(key, stats):
        return jax.random.randint(key, (), 0, num_arms)

    return _make_bandit_train(env, config.num_steps, select)


class BanditSource(NamedTuple):
    """One algorithm in the source interface: ``source_agents.get(name)`` returns it."""

    name: str
    Config: type  # the algorithm's frozen config dataclass
    make_train: Callable  # (env, config) -> train(key, params) -> LearningHistory


ucb = BanditSource("ucb", UCBConfig, make_ucb)
thompson = BanditSource("thompson", ThompsonConfig, make_thompson)
egreedy = BanditSource("egreedy", EGreedyConfig, make_egreedy)
random = BanditSource("random", RandomConfig, make_random)


# ---- evaluation-baseline helpers -------------------------------------------------------------
def pull_rewards(source, env: Environment, config, key: jax.Array, params_batch) -> jax.Array:
    """Per-pull rewards ``(num_tasks, num_steps)`` of ``source`` on a batch of tasks.

    ``source`` is anything with ``make_train`` (e.g. ``source_agents.get("ucb")``);
    ``params_batch`` is a task pytree with a leading task axis. Task ``i`` runs with
    ``jax.random.split(key, num_tasks)[i]``. Compiles once per (source, env, config).
    """
    num_tasks = jax.tree.leaves(params_batch)[0].shape[0]
    train = source.make_train(env, config)
    history = jax.jit(jax.vmap(train))(jax.random.split(key, num_tasks), params_batch)
    return history.reward


def pseudo_regret(means: jax.Array, action: jax.Array) -> jax.Array:
    """Per-pull expected regret ``max(means) - means[action]``.

    ``means``: ``(..., K)`` arm means; ``action``: ``(..., T)`` arms pulled. Returns
    ``(..., T)``; its cumulative sum along the last axis is the cumulative pseudo-regret,
    which has far less variance than regret computed from realised rewards.
    """
    means = jnp.asarray(means)
    chosen = jnp.take_along_axis(means, jnp.asarray(action), axis=-1)
    return means.max(axis=-1, keepdims=True) - chosen


__all__ = [
    "ArmStats",
    "BanditSource",
    "EGreedyConfig",
    "RandomConfig",
    "ThompsonConfig",
    "UCBConfig",
    "egreedy",
    "egreedy_epsilon",
    "make_egreedy",
    "make_random",
    "make_thompson",
    "make_ucb",
    "pseudo_regret",
    "pull_rewards",
    "random",
    "thompson",
    "ucb",
    "ucb_index",
]
