"""Settings distilled from sources that learn fast (issue 25): Thompson sampling on the
5-armed bandit, and the tabular model-based learners ``rmax`` (optimism) and ``psrl``
(posterior sampling) of ``source_agents.tabular`` on Dark Room, Dark Room Hard and
Key-to-Door.

Each reuses the model and training recipe of its env's existing setting (the paper's
bandit and Dark Room settings, the Key-to-Door diagnostic ``key-to-door-memory-early``),
so that only the source changes. Results, commands and wall times: docs/results/README.md
and docs/key_to_door.md.
"""

from __future__ import annotations

import dataclasses

from experiments.settings import SETTINGS, register

# 5-armed Bernoulli bandit from Thompson sampling (Beta(1, 1) priors); everything else as `bandit`.
register(dataclasses.replace(SETTINGS["bandit"], name="bandit-thompson", source="thompson"))

# Key-to-Door from R-max histories: the model and training of the explore-and-remember
# diagnostic's best recipe (`key-to-door-memory-early`: previous observation and episode-start
# inputs, 3,000 steps), 2,048-step histories (R-max has explored and exploits by ~1,400) kept
# whole. gamma 0.8: a known key-door path wins over unknown cells a few steps further away.
register(dataclasses.replace(
    SETTINGS["key-to-door-memory-early"], name="key-to-door-rmax", source="rmax",
    source_overrides=dict(num_steps=2048, gamma=0.8), subsample_every=1, subsample_steps=0))

# Dark Room from R-max histories (100 episodes, every 2nd kept); the paper setting's model and training.
register(dataclasses.replace(
    SETTINGS["darkroom"], name="darkroom-rmax", source="rmax", histories=1040,
    source_overrides=dict(num_steps=2000), subsample_every=2))

# Dark Room from PSRL histories: darkroom-rmax with the other tabular learner (same data size
# and subsampling, the paper setting's model and training).
register(dataclasses.replace(SETTINGS["darkroom-rmax"], name="darkroom-psrl", source="psrl"))

# Dark Room Hard from R-max histories (200 episodes, every 2nd kept); the paper setting's model
# and training. An unknown state-action is worth one reward (r_max): Hard pays once on arrival,
# so any known path to the goal is optimal and only how fast the goal is found matters; with
# the textbook r_max / (1 - gamma) R-max first tries every one of the 2,890 state-actions.
# R-max's own held-out figures in this setting: docs/results/README.md.
register(dataclasses.replace(
    SETTINGS["darkroom-hard"], name="darkroom-hard-rmax", source="rmax", histories=1155,
    source_overrides=dict(num_steps=4000, optimistic_value=1.0), subsample_every=2))

# Key-to-Door and Dark Room Hard from PSRL histories, with PSRL's sparse prior on these
# one-payment tasks (source_agents.tabular._PSRL_SPARSE): the R-max settings' data size,
# subsampling, model and training, so that only the source changes.
register(dataclasses.replace(SETTINGS["key-to-door-rmax"], name="key-to-door-psrl", source="psrl",
                             source_overrides=dict(num_steps=2048)))
register(dataclasses.replace(SETTINGS["darkroom-hard-rmax"], name="darkroom-hard-psrl",
                             source="psrl", source_overrides=dict(num_steps=4000)))
