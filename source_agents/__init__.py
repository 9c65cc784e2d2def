"""Source agents that produce learning histories for Algorithm Distillation.

Every source is a module exposing a typed ``Config`` dataclass and
``make_train(env, config) -> train(key, params) -> SourceOutput`` whose loops are
``lax.scan``s, so ``jax.jit(jax.vmap(train))`` runs thousands of histories (one agent,
one task each) at once. Sources never import ``ad``.
"""

from source_agents.history import LearningHistory, episode_returns, episode_returns_jax

__all__ = ["LearningHistory", "episode_returns", "episode_returns_jax"]
