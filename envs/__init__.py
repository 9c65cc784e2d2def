"""Task distributions with pure JAX dynamics, each also usable as a ``gymnasium.Env``.

    import envs
    env = envs.make("darkroom")            # or envs.make("darkroom", horizon=30)
    params = env.sample_params(key, "test")
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Registered names (``envs.registered()``) and their semantics are documented in each
environment's module docstring; the contract is in ``envs.core``.

Importing this package also registers every built-in environment with gymnasium under
the project's own ``ad/`` namespace (``GYM_IDS`` maps name -> id), e.g.
``gymnasium.make("ad/DarkRoom-v0")``; the wrapper (``envs.gym.GymnasiumEnv``) is only
imported when such an env is made.

Adding an environment (no edit of this package needed): subclass ``envs.Environment``
as a frozen dataclass (static config fields, ``name`` class attribute, the contract of
``envs.core``) and register it::

    @dataclasses.dataclass(frozen=True)
    class Chain(envs.Environment):
        name: ClassVar[str] = "chain"
        length: int = 7  # WARN: static
        ...

    envs.register("chain", Chain, gym_id="ad/Chain-v0")   # gym_id is optional
    env = envs.make("chain", length=9)                      # and every tool that takes an
                                                            # env name (collect, run) takes it

``register(name, cls, *, gym_id=None, overwrite=False)`` checks that ``name`` is a
non-empty string equal to ``cls.name`` and not yet registered (``overwrite=True``
replaces an entry), that ``cls`` is a subclass of ``envs.core.Environment``, and that
``gym_id`` lies in the ``ad/`` namespace and is not taken; with a ``gym_id`` the env is
registered with gymnasium through the same wrapper as the built-ins (and should pass
``gymnasium.utils.env_checker.check_env``). Registration lives in the process: a script
that collects or evaluates a custom env must import the module that registers it.
The built-ins are registered by the same function. ``unregister(name)`` removes an entry
(and its gymnasium id).
"""

from __future__ import annotations

import dataclasses

import gymnasium
from gymnasium.envs.registration import parse_env_id

from envs.bandits import AdversarialBandit, BernoulliBandit
from envs.core import ArraySpec, Environment
from envs.darkroom import DarkRoom, DarkRoomHard
from envs.key_to_door import KeyToDoor
from envs.minigrid import MINIGRID_ENVS

GYM_NAMESPACE = "ad"  # every gymnasium id of this project: "ad/<Name>-v<k>"
_GYM_ENTRY_POINT = "envs.gym:GymnasiumEnv"

_REGISTRY: dict[str, type[Environment]] = {}
# Registered name -> gymnasium id, in the project's own namespace (never ``MiniGrid-*``).
GYM_IDS: dict[str, str] = {}


def registered() -> list[str]:
    """Names accepted by ``make``."""
    return sorted(_REGISTRY)


def _ours(spec, name: str) -> bool:
    """Whether a gymnasium registry entry is this package's wrapper of env ``name``."""
    return spec.entry_point == _GYM_ENTRY_POINT and dict(spec.kwargs or {}) == {"env": name}


def register(name: str, cls: type[Environment], *, gym_id: str | None = None,
             overwrite: bool = False) -> type[Environment]:
    """Make ``cls`` available as ``envs.make(name, **overrides)`` (module docstring).

    ``cls``: a subclass of ``envs.core.Environment`` (a frozen dataclass whose fields are
    the overridable static config) with ``cls.name == name``. ``gym_id``: its gymnasium
    id under ``ad/`` (default ``"ad/<ClassName>-v0"``), registered with
    ``envs.gym.GymnasiumEnv`` as entry point, so every env has a gymnasium face. ``overwrite``: replace an existing entry
    of the same name (and its gymnasium id) instead of raising. Returns ``cls``.
    Raises ``ValueError`` (``TypeError`` for a non-class ``cls``) naming what is wrong.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"envs.register: name must be a non-empty string, got {name!r}")
    if not isinstance(cls, type) or not issubclass(cls, Environment) or cls is Environment:
        what = cls.__name__ if isinstance(cls, type) else f"{cls!r} ({type(cls).__name__})"
        raise TypeError(f"envs.register({name!r}, ...): {what} is not a subclass of "
                        "envs.core.Environment")
    if cls.name != name:
        raise ValueError(f"envs.register({name!r}, {cls.__name__}): {cls.__name__}.name is "
                         f"{cls.name!r}; set the class attribute name = {name!r} so that the "
                         "env's messages and the sources' presets use the registered name")
    if name in _REGISTRY and not overwrite:
        old = _REGISTRY[name]
        raise ValueError(f"envs.register: an environment named {name!r} is already "
                         f"registered ({old.__module__}.{old.__qualname__}); "
                         "pick another name or pass overwrite=True")
    if gym_id is None:
        gym_id = f"{GYM_NAMESPACE}/{cls.__name__}-v0"
    if not isinstance(gym_id, str):
        raise ValueError(f"envs.register({name!r}): gym_id must be a string, got {gym_id!r}")
    try:
        namespace, _, _ = parse_env_id(gym_id)
    except gymnasium.error.Error as e:
        raise ValueError(f"envs.register({name!r}): bad gym_id {gym_id!r}: {e}") from None
    if namespace != GYM_NAMESPACE:
        raise ValueError(f"envs.register({name!r}): gym_id {gym_id!r} must be in the "
                         f"project's {GYM_NAMESPACE}/ namespace, e.g. "
                         f"'{GYM_NAMESPACE}/MyEnv-v0'")
    taken = [n for n, g in GYM_IDS.items() if g == gym_id and n != name]
    if taken:
        raise ValueError(f"envs.register({name!r}): gym_id {gym_id!r} already belongs to "
                         f"environment {taken[0]!r}")
    spec = gymnasium.registry.get(gym_id)
    if spec is not None and not overwrite and not _ours(spec, name):
        raise ValueError(f"envs.register({name!r}): gym_id {gym_id!r} is already registered "
                         f"with gymnasium (entry point {spec.entry_point!r}); pick another "
                         "id or pass overwrite=True")
    # Validated: replace any previous entry of this name, then add the new one.
    old_id = GYM_IDS.pop(name, None)
    if old_id is not None and old_id != gym_id:
        gymnasium.registry.pop(old_id, None)
    _REGISTRY[name] = cls
    GYM_IDS[name] = gym_id
    spec = gymnasium.registry.get(gym_id)
    if spec is None or not _ours(spec, name):
        gymnasium.registry.pop(gym_id, None)  # overwrite: no "overriding" warning
        # A string entry point keeps ``import envs`` cheap (envs.gym loads on first make).
        gymnasium.register(id=gym_id, entry_point=_GYM_ENTRY_POINT, kwargs={"env": name})
    return cls


def unregister(name: str) -> None:
    """Remove a registered environment (and its gymnasium id); mainly for tests."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; registered: {', '.join(registered())}")
    del _REGISTRY[name]
    gym_id = GYM_IDS.pop(name, None)
    if gym_id is not None:
        gymnasium.registry.pop(gym_id, None)


def make(name: str, **overrides) -> Environment:
    """Build a registered environment, overriding any of its static config fields."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; registered: {', '.join(registered())} "
                         "(add one with envs.register)")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"{name}: unknown override(s) {unknown}; valid fields: {sorted(fields)}"
        )
    return cls(**overrides)


def _minigrid_gym_id(cls) -> str:
    """``ad/`` + minigrid's own id, with ``-Random`` / ``-Dark`` for the variants that
    minigrid has no id for (``ad/MiniGrid-Empty-Random-8x8-v0``,
    ``ad/MiniGrid-FourRooms-Dark-v0``)."""
    base = cls.gym_id.removesuffix("-v0")
    if "-random-" in cls.name and "-Random-" not in base:
        base = base.replace("MiniGrid-Empty-", "MiniGrid-Empty-Random-")
    if cls.hide_goal:
        base += "-Dark"
    return f"{GYM_NAMESPACE}/{base}-v0"


# The built-ins, through the same ``register`` as any user env.
register(DarkRoom.name, DarkRoom, gym_id="ad/DarkRoom-v0")
register(DarkRoomHard.name, DarkRoomHard, gym_id="ad/DarkRoomHard-v0")
register(KeyToDoor.name, KeyToDoor, gym_id="ad/KeyToDoor-v0")
register(BernoulliBandit.name, BernoulliBandit, gym_id="ad/BernoulliBandit-v0")
register(AdversarialBandit.name, AdversarialBandit, gym_id="ad/AdversarialBandit-v0")
# MiniGrid ports (JAX, proven equal to the minigrid package): dict observations
# {"image", "direction"} (a gymnasium Dict space).
for _name, _cls in MINIGRID_ENVS.items():
    register(_name, _cls, gym_id=_minigrid_gym_id(_cls))
del _name, _cls

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
    "register",
    "registered",
    "unregister",
]
