"""Task distributions with pure JAX dynamics, each also usable as a ``gymnasium.Env``.

    import envs
    env = envs.make("darkroom")            # or envs.make("darkroom", horizon=30)
    params = env.sample_params(key, "test")
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Registered names (``envs.registered()``) and their semantics are documented in each
environment's module docstring; the contract is in ``envs.core``.
"""

from __future__ import annotations

import dataclasses

from envs.core import ArraySpec, Environment
from envs.darkroom import DarkRoom, DarkRoomHard

_REGISTRY: dict[str, type[Environment]] = {
    DarkRoom.name: DarkRoom,
    DarkRoomHard.name: DarkRoomHard,
}


def registered() -> list[str]:
    """Names accepted by ``make``."""
    return sorted(_REGISTRY)


def make(name: str, **overrides) -> Environment:
    """Build a registered environment, overriding any of its static config fields."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; registered: {', '.join(registered())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"{name}: unknown override(s) {unknown}; valid fields: {sorted(fields)}"
        )
    return cls(**overrides)


__all__ = ["ArraySpec", "Environment", "make", "registered", "DarkRoom", "DarkRoomHard"]
