"""Source agents that produce learning histories for Algorithm Distillation.

Every source is a module exposing a typed ``Config`` dataclass and
``make_train(env, config) -> train(key, params) -> LearningHistory`` whose loops are
``lax.scan``s, so ``jax.jit(jax.vmap(train))`` runs thousands of histories (one agent,
one task each) at once. ``config.num_steps`` fixes the length of every history in env
steps. Sources never import ``ad``.
"""

from __future__ import annotations

import importlib

from source_agents.history import LearningHistory, episode_returns, episode_returns_jax

# name -> (module, attribute prefix). Modules are imported lazily so that importing the
# package stays cheap and one source's optional dependencies never burden another.
SOURCES = {
    "ppo": "source_agents.ppo",
    "dqn": "source_agents.dqn",
    "ucb": "source_agents.bandits:ucb",
    "thompson": "source_agents.bandits:thompson",
    "egreedy": "source_agents.bandits:egreedy",
    "random": "source_agents.bandits:random",
    "noise": "source_agents.noise",
    "memory": "source_agents.memory",
}


def get(name: str):
    """The source's namespace with ``Config`` and ``make_train`` (see module docstring)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(sorted(SOURCES))}")
    module_name, _, member = SOURCES[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, member) if member else module


def make_config(source, env_name: str, **overrides):
    """The source's tuned preset for ``env_name`` (if it has presets) with ``overrides``."""
    if hasattr(source, "default_config"):
        return source.default_config(env_name, **overrides)
    return source.Config(**overrides)


__all__ = ["LearningHistory", "SOURCES", "episode_returns", "episode_returns_jax", "get", "make_config"]
