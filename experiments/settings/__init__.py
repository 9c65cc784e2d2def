"""One typed config per experimental setting: collect -> distill -> evaluate.

Each ``Setting`` names the env, the source and how long its histories are, the
distillation hyper-parameters and the evaluation protocol. ``experiments.run`` executes
one setting end to end; every field can be overridden from its command line.

The settings live in two modules, registered into ``SETTINGS`` on import:

- ``experiments.settings.paper``: the AD paper's settings (bandits, Dark Room family,
  Dark FourRooms); their results are the README's table.
- ``experiments.settings.key_to_door``: the Key-to-Door study (docs/key_to_door.md has
  every attempt, its command and its result).
- ``experiments.settings.sources``: the same tasks distilled from sources that learn fast
  (Thompson sampling; tabular R-max and PSRL).

A setting of your own needs no registration: ``experiments.run.run(Setting(...))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Setting:
    """Everything one ``python -m experiments.run NAME`` does."""

    name: str  # setting name (results/<name>/...)
    env: str  # registered env (envs.make)
    source: str  # source algorithm whose learning histories are distilled
    histories: int  # learning histories collected on training tasks
    source_overrides: dict[str, Any]  # fields of the source's Config (num_steps, ...)
    distill: dict[str, Any]  # fields of ad.train.DistillConfig (not dataset/out/seed)
    eval_episodes: int  # in-context episodes per evaluation rollout
    eval_tasks: int = 200  # tasks per split (continuous sets: sampled; finite: all, or a random subset if more)
    eval_rollouts_per_task: int = 8  # rollouts per task for finite task sets
    report_episodes: tuple[int, ...] = (10, 50)  # "by episode k" figures in the summary
    env_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    subsample_every: int = 1  # keep every k-th episode of each history (paper's trick)
    subsample_steps: int = 0  # crop subsampled histories to this many steps (variable-length episodes)
    ed_last_steps: int = 0  # Expert Distillation: windows from each history's last steps


SETTINGS: dict[str, Setting] = {}


def register(setting: Setting) -> Setting:
    """Add ``setting`` to ``SETTINGS`` under its name (which must be new)."""
    if setting.name in SETTINGS:
        raise ValueError(f"setting {setting.name!r} is already registered")
    SETTINGS[setting.name] = setting
    return setting


def get_setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; available: {', '.join(SETTINGS)}")
    return SETTINGS[name]


# Registration happens on import; the modules need Setting and register defined above.
from experiments.settings import paper, key_to_door, sources  # noqa: E402,F401  (order: paper first)

__all__ = ["SETTINGS", "Setting", "get_setting", "register"]
