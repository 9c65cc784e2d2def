"""Noise distillation (AD^ε, Zisman et al. 2024): learning histories without a learner.

Instead of recording a real RL agent, a demonstrator (by default the env's optimal
policy, ``env.optimal_action``) acts ε-greedily with ε annealed from ``epsilon_start``
(1) down to ``epsilon_end`` (0) across the history, so the recorded returns climb from
those of a random policy to the optimum, as a learner's would:

- at step ``t`` (0-based) of a history of ``num_steps`` steps, with
  ``p = min(1, t / (anneal_fraction * num_steps))``,
  ``ε(t) = epsilon_start + (epsilon_end - epsilon_start) * p``: a linear fall over the
  first ``anneal_fraction`` of the history, then flat at ``epsilon_end``
  (``anneal_fraction = 0`` means ``epsilon_end`` throughout);
- with ``per_episode=True`` ε is frozen within an episode at ``ε(t0)``, ``t0`` being the
  episode's first step, so each episode is one policy's rollout (its return is then a
  clean sample of that policy's value); by default ε changes every step;
- with probability ε the action is uniform over ``env.num_actions`` (it may coincide with
  the demonstrator's), otherwise it is the demonstrator's action;
- ``noise="explore"``: the noise action comes from ``env.explore_action(key, obs,
  explore_turn_prob)`` instead (MiniGrid: a persistent random walk from the view alone);
- ``clock="first_reward"``: the schedule's clock starts at the step after the first
  rewarded step of the history and ε stays at ``epsilon_start`` until then. The
  demonstrator knows the task (the goal); with the default clock its pull shows up in the
  noisy episodes before the agent has ever been rewarded, so the histories improve for
  reasons no context reveals. With this clock, behaviour before the first reward is pure
  exploration and improvement follows what the history itself has shown: information a
  model can find in its context.

Works on any env that defines ``optimal_action`` (Dark Room, Dark Room Hard,
Key-to-Door, the bandits). A ``demonstrator`` callable ``(key, obs, state, params) ->
action`` passed to ``make_train`` replaces the optimal policy, e.g. a trained policy.
With ``epsilon_end = 0`` (the default), every step from ``anneal_fraction * num_steps``
on, hence every episode starting there or later, is the demonstrator's alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from envs.core import Environment
from source_agents.history import LearningHistory

# (key, obs, state, params) -> () int action; the policy that noise is mixed into.
Demonstrator = Callable[[jax.Array, object, object, object], jax.Array]


@dataclasses.dataclass(frozen=True)
class Config:
    num_steps: int = 10_000  # history length in env steps
    anneal_fraction: float = 0.7  # ε falls linearly over this fraction of the history, then stays
    epsilon_start: float = 1.0  # ε at step 0 (1 = uniformly random actions)
    epsilon_end: float = 0.0  # ε after the anneal (0 = the demonstrator alone)
    per_episode: bool = False  # True: ε is frozen within an episode at its value at the start
    noise: str = "uniform"  # "uniform" actions, or "explore": env.explore_action
    explore_turn_prob: float = 0.15  # noise="explore": P(turn) when the way ahead is free
    clock: str = "step"  # "step": ε follows the history's step; "first_reward": the steps
    #   since the first rewarded step (ε = epsilon_start before it)

    def __post_init__(self):
        n = self.num_steps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"noise Config.num_steps must be an int >= 1, got {n!r}")
        for field in ("anneal_fraction", "epsilon_start", "epsilon_end"):
            value = getattr(self, field)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"noise Config.{field} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.per_episode, bool):
            raise ValueError(f"noise Config.per_episode must be a bool, got {self.per_episode!r}")
        if self.noise not in ("uniform", "explore"):
            raise ValueError(f"noise Config.noise must be 'uniform' or 'explore', got "
                             f"{self.noise!r}")
        if self.clock not in ("step", "first_reward"):
            raise ValueError(f"noise Config.clock must be 'step' or 'first_reward', got "
                             f"{self.clock!r}")
        if not 0.0 <= self.explore_turn_prob <= 1.0:
            raise ValueError(f"noise Config.explore_turn_prob must be in [0, 1], got "
                             f"{self.explore_turn_prob!r}")


def epsilon_at(config: Config, t: jax.Array) -> jax.Array:
    """ε of the schedule at step ``t`` (module docstring); works on arrays of steps."""
    anneal_steps = config.anneal_fraction * config.num_steps
    if anneal_steps == 0:
        return jnp.full(jnp.shape(t), config.epsilon_end, jnp.float32)
    progress = jnp.minimum(jnp.asarray(t, jnp.float32) / anneal_steps, 1.0)
    eps = config.epsilon_start + (config.epsilon_end - config.epsilon_start) * progress
    return eps.astype(jnp.float32)


def make_train(env: Environment, config: Config, demonstrator: Demonstrator | None = None):
    """``train(key, params) -> LearningHistory``: ``num_steps`` ε-noisy demonstrator steps."""
    if not isinstance(env, Environment):
        raise ValueError(f"env must be an envs.core.Environment, got {type(env).__name__}")
    if not isinstance(config, Config):
        raise ValueError(
            f"noise make_train needs a source_agents.noise.Config, got {type(config).__name__}"
        )
    if demonstrator is None:
        if type(env).optimal_action is Environment.optimal_action:
            raise ValueError(
                f"{env.name} defines no optimal_action; pass a demonstrator "
                "(key, obs, state, params) -> action"
            )

        def demonstrator(key, obs, state, params):
            return env.optimal_action(key, state, params)

    elif not callable(demonstrator):
        raise ValueError(f"demonstrator must be callable, got {type(demonstrator).__name__}")
    if config.noise == "explore" and not hasattr(env, "explore_action"):
        raise ValueError(f"noise Config.noise='explore': {env.name} has no explore_action")
    num_actions = env.num_actions
    first_reward_clock = config.clock == "first_reward"

    def noise_action(key, obs):
        if config.noise == "explore":
            return jnp.asarray(env.explore_action(key, obs, config.explore_turn_prob), jnp.int32)
        return jax.random.randint(key, (), 0, num_actions, jnp.int32)

    def epsilon(t, rewarded_at):
        """ε at step ``t`` (a history step) given the first rewarded step (-1: none yet)."""
        if not first_reward_clock:
            return epsilon_at(config, t)
        since = t - rewarded_at - 1  # 0 on the step after the first rewarded one
        started = (rewarded_at >= 0) & (since >= 0)
        return jnp.where(started, epsilon_at(config, jnp.maximum(since, 0)),
                         jnp.float32(config.epsilon_start))

    def train(key: jax.Array, params) -> LearningHistory:
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)

        def step(carry, xs):
            obs, state, episode_start, rewarded_at = carry
            t, step_key = xs
            key_demo, key_explore, key_random, key_env = jax.random.split(step_key, 4)
            eps = epsilon(episode_start if config.per_episode else t, rewarded_at)
            expert = jnp.asarray(demonstrator(key_demo, obs, state, params), jnp.int32)
            noise = noise_action(key_random, obs)
            action = jnp.where(jax.random.uniform(key_explore) < eps, noise, expert)
            next_obs, state, reward, terminated, truncated, _ = env.step(
                key_env, state, action, params
            )
            done = jnp.logical_or(terminated, truncated)
            episode_start = jnp.where(done, t + 1, episode_start)
            reward = jnp.asarray(reward, jnp.float32)
            rewarded_at = jnp.where((rewarded_at < 0) & (reward > 0), t, rewarded_at)
            record = LearningHistory(obs, action, reward, terminated, truncated)
            return (next_obs, state, episode_start, rewarded_at), record

        steps = jnp.arange(config.num_steps, dtype=jnp.int32)
        xs = (steps, jax.random.split(key_steps, config.num_steps))
        _, history = jax.lax.scan(step, (obs, state, jnp.int32(0), jnp.int32(-1)), xs)
        return history

    return train


__all__ = ["Config", "Demonstrator", "epsilon_at", "make_train"]
