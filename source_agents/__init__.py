"""Source agents that produce learning histories for Algorithm Distillation.

Every source is a namespace (a module, or any object) exposing a typed ``Config``
dataclass and ``make_train(env, config) -> train(key, params) -> LearningHistory``
whose loops are ``lax.scan``s, so ``jax.jit(jax.vmap(train))`` runs thousands of
histories (one agent, one task each) at once. ``config.num_steps`` fixes the length of
every history in env steps. An optional ``default_config(env_name, **overrides)``
supplies tuned presets (``make_config``). Sources never import ``ad``.

Finding a source: ``get(name_or_path)`` takes a registered name (``registered()``:
ppo, dqn, ucb, rmax, psrl, ...) or, without registering anything, a module path
``"pkg.mod"`` / ``"pkg.mod:attr"`` (or a top-level module on ``sys.path``) that is
imported on demand; a registered name wins over a module of the same name. Everything that takes a
source name (``CollectConfig.source``, ``Setting.source``, ``--source``) goes through
``get``, so ``source="my_package.my_source"`` works everywhere and is what the dataset
spec records.

Adding a source by name: ``register(name, target, overwrite=False)`` with ``target`` a
module path as above (imported lazily, at the first ``get``) or the namespace object
itself. The built-ins are registered by the same function; importing this package
imports none of them, so one source's optional dependencies never burden another.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from source_agents.history import LearningHistory, episode_returns, episode_returns_jax

# Registered name -> target: a module path "pkg.mod[:attr]" (imported lazily) or a
# namespace object with Config and make_train.
SOURCES: dict[str, Any] = {}
_REQUIRED = ("Config", "make_train")


def registered() -> list[str]:
    """Names accepted by ``get`` (besides module paths)."""
    return sorted(SOURCES)


def _is_module_path(text: str) -> bool:
    module, sep, attr = text.partition(":")
    parts = module.split(".")
    return (all(p.isidentifier() for p in parts)
            and (not sep or all(p.isidentifier() for p in attr.split("."))))


def _importable(module_name: str) -> bool:
    """Whether a top-level module exists on ``sys.path`` (found, not imported)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def _missing(obj) -> list[str]:
    return [attr for attr in _REQUIRED if not hasattr(obj, attr)]


def register(name: str, target, overwrite: bool = False):
    """Register a source under ``name``: ``target`` is a module path ``"pkg.mod"`` or
    ``"pkg.mod:attr"`` (imported at the first ``get``) or an object with ``Config`` and
    ``make_train``. ``overwrite=True`` replaces an existing entry. Returns ``target``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"source_agents.register: name must be a non-empty string, got {name!r}")
    if name in SOURCES and not overwrite:
        raise ValueError(f"source_agents.register: a source named {name!r} is already "
                         f"registered ({SOURCES[name]!r}); pick another name or pass "
                         "overwrite=True")
    if isinstance(target, str):
        if not _is_module_path(target):
            raise ValueError(f"source_agents.register({name!r}): {target!r} is not a module "
                             "path 'pkg.mod' or 'pkg.mod:attr'")
    else:
        missing = _missing(target)
        if missing:
            raise ValueError(f"source_agents.register({name!r}): {target!r} lacks "
                             f"{' and '.join(missing)}; a source exposes Config and make_train")
    SOURCES[name] = target
    return target


def unregister(name: str) -> None:
    """Remove a registered source (mainly for tests)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; registered: {', '.join(registered())}")
    del SOURCES[name]


def _load(path: str, what: str):
    module_name, _, member = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"source {what!r}: cannot import module {module_name!r} ({e})") from None
    source = module
    for attr in member.split(".") if member else ():
        if not hasattr(source, attr):
            raise ValueError(f"source {what!r}: module {module_name!r} has no attribute "
                             f"{member!r}")
        source = getattr(source, attr)
    return source


def get(name: str):
    """The source namespace with ``Config`` and ``make_train``, by registered name or by
    module path ``"pkg.mod[:attr]"`` (module docstring). Raises ``ValueError`` saying
    what is unknown, unimportable or missing."""
    if not isinstance(name, str):
        raise ValueError(f"source must be a registered name or a module path, got {name!r}")
    if name in SOURCES:
        target = SOURCES[name]
        source = _load(target, name) if isinstance(target, str) else target
    elif _is_module_path(name) and ("." in name or ":" in name or _importable(name)):
        source = _load(name, name)
    else:
        raise ValueError(f"unknown source {name!r}; registered: {', '.join(registered())} "
                         "(or give a module path 'pkg.mod' / 'pkg.mod:attr' exposing Config "
                         "and make_train)")
    missing = _missing(source)
    if missing:
        raise ValueError(f"source {name!r}: {getattr(source, '__name__', source)!r} has no "
                         f"{' and no '.join(missing)}; a source exposes Config and make_train")
    return source


def make_config(source, env_name: str, **overrides):
    """The source's tuned preset for ``env_name`` (if it has presets) with ``overrides``."""
    if hasattr(source, "default_config"):
        return source.default_config(env_name, **overrides)
    return source.Config(**overrides)


# The built-ins, through the same ``register`` as any user source.
register("ppo", "source_agents.ppo")
register("dqn", "source_agents.dqn")
register("ucb", "source_agents.bandits:ucb")
register("thompson", "source_agents.bandits:thompson")
register("egreedy", "source_agents.bandits:egreedy")
register("random", "source_agents.bandits:random")
register("noise", "source_agents.noise")
register("memory", "source_agents.memory")
register("rmax", "source_agents.tabular:rmax")
register("psrl", "source_agents.tabular:psrl")

__all__ = ["LearningHistory", "SOURCES", "episode_returns", "episode_returns_jax", "get",
           "make_config", "register", "registered", "unregister"]
