"""Task distributions with pure JAX dynamics, each also usable as a ``gymnasium.Env``.

    import envs
    env = envs.make("darkroom")            # or envs.make("darkroom", horizon=30)
    params = env.sample_params(key, "test")
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Registered names (``envs.registered()``) and their semantics are documented in each
environment's module docstring; the contract is in ``envs.core``.

Importing this package also registers every environment with gymnasium under the
project's own ``ad/`` namespace (``GYM_IDS`` maps name -> id), e.g.
``gymnasium.make("ad/DarkRoom-v0")``; the wrapper (``envs.gym.GymnasiumEnv``) is only
imported when such an env is made.
"""

from __future__ import annotations

import dataclasses

import gymnasium

from envs.bandits import AdversarialBandit, BernoulliBandit
from envs.core import ArraySpec, Environment
from envs.darkroom import DarkRoom, DarkRoomHard
from envs.key_to_door import KeyToDoor
from envs.minigrid import MINIGRID_ENVS

_REGISTRY: dict[str, type[Environment]] = {
    cls.name: cls
    for cls in (DarkRoom, DarkRoomHard, KeyToDoor, BernoulliBandit, AdversarialBandit)
}
_REGISTRY.update(MINIGRID_ENVS)  # JAX ports proven equal to the minigrid package

# Registered name -> gymnasium id, in the project's own namespace (never ``MiniGrid-*``).
GYM_IDS: dict[str, str] = {
    DarkRoom.name: "ad/DarkRoom-v0",
    DarkRoomHard.name: "ad/DarkRoomHard-v0",
    KeyToDoor.name: "ad/KeyToDoor-v0",
    BernoulliBandit.name: "ad/BernoulliBandit-v0",
    AdversarialBandit.name: "ad/AdversarialBandit-v0",
}



def _minigrid_gym_id(cls) -> str:
    """``ad/`` + minigrid's own id, with ``-Random`` / ``-Dark`` for the variants that
    minigrid has no id for (``ad/MiniGrid-Empty-Random-8x8-v0``,
    ``ad/MiniGrid-FourRooms-Dark-v0``)."""
    base = cls.gym_id.removesuffix("-v0")
    if "-random-" in cls.name and "-Random-" not in base:
        base = base.replace("MiniGrid-Empty-", "MiniGrid-Empty-Random-")
    if cls.hide_goal:
        base += "-Dark"
    return f"ad/{base}-v0"


# MiniGrid ports: dict observations {"image", "direction"} (a gymnasium Dict space).
GYM_IDS.update({name: _minigrid_gym_id(cls) for name, cls in MINIGRID_ENVS.items()})
assert len(set(GYM_IDS.values())) == len(GYM_IDS), "gymnasium ids must be unique"


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


def _register_gymnasium() -> None:
    # A string entry point keeps ``import envs`` cheap; re-imports must not re-register.
    for name, gym_id in GYM_IDS.items():
        if gym_id not in gymnasium.registry:
            gymnasium.register(id=gym_id, entry_point="envs.gym:GymnasiumEnv", kwargs={"env": name})


_register_gymnasium()

__all__ = [
    "GYM_IDS",
    "AdversarialBandit",
    "ArraySpec",
    "BernoulliBandit",
    "DarkRoom",
    "DarkRoomHard",
    "Environment",
    "KeyToDoor",
    "make",
    "registered",
]
