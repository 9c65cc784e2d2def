"""Explore and remember: a hand-written in-context learner whose every act follows from its past.

A diagnostic source for grid tasks with hidden rewarding cells (Dark Room, Dark Room
Hard, Key-to-Door). Unlike noise distillation's demonstrator, which knows the task and
pulls even the noisiest episodes towards it, this agent knows only what its own history
has shown it, so a model that sees that history can in principle act as it does:

- It has ``subgoals`` memory slots (Dark Room: 1, the goal; Key-to-Door: 2, key then
  door), all empty at the start of the history. Within an episode it pursues slot
  ``min(R, subgoals - 1)``, ``R`` being the reward collected so far in that episode (the
  reward is observed; whether the key is held is not, but it is exactly "R ≥ 1").
- When a step pays reward ``r > 0`` and the slots ``R … R + r − 1`` (capped at the last)
  are empty, they remember the cell the step ended on (a Key-to-Door step onto a shared
  key-and-door cell pays 2 and fills both).
- If the pursued slot holds a cell, it walks a shortest path to it
  (``envs.darkroom.greedy_step_towards``: a no-op on arrival, which collects a key on the
  start cell), but takes a uniformly random action with probability ``epsilon``;
  otherwise it explores with uniformly random actions.
- Every history also records ``intended_action``: the shortest-path step wherever the
  pursued cell is known, even in an epsilon step (the executed random action where it
  is not). A model trained on those targets (``DistillConfig.targets``) learns the
  agent's decisions without its epsilon noise (docs/key_to_door.md: 1.61 vs 1.34-1.46 by
  episode 200 on held-out pairs).

So its returns climb from the random level to near the optimum within a few episodes of
its first rewards, for reasons that lie in its history alone: the data of an in-context
learner, against which the real learners' (PPO's) can be compared. It is a diagnostic
oracle, not a learning source: it hard-codes the task family's structure (which cells
pay, in which order), and its results are reported as a diagnostic.

Works on envs whose observation is the agent's ``(x, y)`` cell and whose
``KNOWN_SUBGOALS`` entry says how many rewarding cells are pursued in order.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from envs.core import Environment
from envs.darkroom import greedy_step_towards
from source_agents.history import LearningHistory

# env name -> number of rewarding cells pursued in order within an episode
KNOWN_SUBGOALS = {"darkroom": 1, "darkroom-hard": 1, "key-to-door": 2}


@dataclasses.dataclass(frozen=True)
class Config:
    num_steps: int = 10_000  # history length in env steps
    epsilon: float = 0.1  # P(uniform action) while heading for a remembered cell

    def __post_init__(self):
        n = self.num_steps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"memory Config.num_steps must be an int >= 1, got {n!r}")
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e <= 1.0:
            raise ValueError(f"memory Config.epsilon must be a number in [0, 1], got {e!r}")


def make_train(env: Environment, config: Config):
    """``train(key, params) -> LearningHistory``: ``num_steps`` explore-and-remember steps."""
    if not isinstance(config, Config):
        raise ValueError(
            f"memory make_train needs a source_agents.memory.Config, got {type(config).__name__}"
        )
    if getattr(env, "name", None) not in KNOWN_SUBGOALS:
        raise ValueError(f"memory source: env {getattr(env, 'name', env)!r} is not one of "
                         f"{sorted(KNOWN_SUBGOALS)} (observation = the agent's cell)")
    subgoals = KNOWN_SUBGOALS[env.name]
    num_actions = env.num_actions

    def act(key, obs, memory, collected):
        """``(action, intended)`` at cell ``obs`` given the memory and this episode's
        reward so far: ``intended`` ignores the epsilon noise (a shortest-path
        step when the pursued cell is known; the same random action when it is not)."""
        slot = jnp.minimum(collected, subgoals - 1).astype(jnp.int32)
        target = memory[slot]
        known = target[0] >= 0
        key_noise, key_action = jax.random.split(key)
        random_action = jax.random.randint(key_action, (), 0, num_actions, jnp.int32)
        greedy = greedy_step_towards(obs, target)
        explore = ~known | (jax.random.uniform(key_noise) < config.epsilon)
        return jnp.where(explore, random_action, greedy), jnp.where(known, greedy, random_action)

    def remember(memory, collected, reward, cell):
        """Fill the empty slots ``collected … collected + reward − 1`` with ``cell``."""
        slots = jnp.arange(subgoals)
        first = jnp.minimum(collected, subgoals - 1)
        last = jnp.minimum(collected + reward - 1, subgoals - 1)
        fill = (reward > 0) & (slots >= first) & (slots <= last) & (memory[:, 0] < 0)
        return jnp.where(fill[:, None], cell[None], memory)

    def train(key: jax.Array, params) -> LearningHistory:
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)
        memory = jnp.full((subgoals, 2), -1, jnp.int32)

        def step(carry, step_key):
            obs, state, memory, collected = carry
            key_act, key_env = jax.random.split(step_key)
            action, intended = act(key_act, obs, memory, collected)
            next_obs, state, reward, terminated, truncated, info = env.step(
                key_env, state, action, params)
            reward = jnp.asarray(reward, jnp.float32)
            # the cell the step ended on (next_obs is already the next episode's start
            # when the step ended one, e.g. at Key-to-Door's door)
            cell = jnp.asarray(info["final_obs"], jnp.int32)
            paid = jnp.round(reward).astype(jnp.int32)  # whole rewards: subgoals reached
            memory = remember(memory, collected, paid, cell)
            done = jnp.logical_or(terminated, truncated)
            collected = jnp.where(done, 0, collected + paid)
            record = LearningHistory(obs, action, reward, terminated, truncated, intended)
            return (next_obs, state, memory, collected), record

        carry = (obs, state, memory, jnp.int32(0))
        _, history = jax.lax.scan(step, carry, jax.random.split(key_steps, config.num_steps))
        return history

    return train


__all__ = ["Config", "KNOWN_SUBGOALS", "make_train"]
