"""One typed config per experimental setting: collect -> distill -> evaluate.

Each ``Setting`` names the env, the source and how long its histories are, the
distillation hyper-parameters and the evaluation protocol. ``experiments.run`` executes
one setting end to end; every field can be overridden from its command line.
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

# One pull is one episode, so the band c = 100 covers a whole 100-pull evaluation and
# every training window is a whole history.
_BANDIT_DISTILL = dict(context=100, window=100, d_model=64, num_layers=2, num_heads=4,
                       mlp_dim=256, dropout=0.0, batch_size=128, num_steps=1500, lr=1e-3,
                       warmup_steps=100)


def _add(setting: Setting) -> None:
    SETTINGS[setting.name] = setting


# 5-armed Bernoulli bandit, 100 pulls, distilled from UCB1. One pull is one episode, so the
# band c = 100 covers a whole evaluation and windows are whole histories.
_add(Setting(
    name="bandit", env="bernoulli-bandit", source="ucb", histories=20_000,
    source_overrides=dict(num_steps=100),
    distill=_BANDIT_DISTILL,
    eval_episodes=100, eval_tasks=1000, report_episodes=(10, 50, 95)))

# The AD paper's adversarial bandit: odd best arms in training, even ones when held out.
_add(Setting(
    name="adversarial-bandit", env="adversarial-bandit", source="ucb", histories=20_000,
    source_overrides=dict(num_steps=100),
    distill=_BANDIT_DISTILL,
    eval_episodes=100, eval_tasks=1000, report_episodes=(10, 50, 95)))

# Dark Room from PPO learning histories on the 65 training goals (16 per goal). The PPO
# preset learns in ~400 episodes; keeping every 4th episode (the paper's subsampling)
# stores ~100 episodes per history that improve 4x faster per episode.
_add(Setting(
    name="darkroom", env="darkroom", source="ppo", histories=1040, source_overrides={},
    subsample_every=8,
    distill=dict(context=60, window=120, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                 dropout=0.1, obs_encoder="xy", batch_size=128, num_steps=2000, lr=1e-3,
                 warmup_steps=200),
    eval_episodes=200, report_episodes=(10, 50, 100, 200)))

# Dark Room from noise-distilled histories (AD^epsilon), reported beside the PPO one.
_add(Setting(
    name="darkroom-noise", env="darkroom", source="noise", histories=520,
    source_overrides=dict(num_steps=1200, anneal_fraction=0.7),
    distill=dict(context=60, window=120, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                 dropout=0.1, obs_encoder="xy", batch_size=64, num_steps=2000, lr=1e-3,
                 warmup_steps=200),
    eval_episodes=200, report_episodes=(10, 50, 100, 200)))

# Dark Room Hard (17x17, +1 only on reaching the goal) from PPO histories (preset: 819
# episodes reaching ~0.66 of 1), every 8th episode kept as for Dark Room.
_add(Setting(
    name="darkroom-hard", env="darkroom-hard", source="ppo", histories=1155, source_overrides={},
    subsample_every=8,
    distill=dict(context=60, window=120, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                 dropout=0.1, obs_encoder="xy", batch_size=128, num_steps=2000, lr=1e-3,
                 warmup_steps=200),
    eval_episodes=200, report_episodes=(10, 50, 100, 200)))

# Key-to-Door from PPO histories (preset, 16,384 steps, but no entropy bonus: ~550
# episodes, 1.54 of 2 by episode 200 and 1.77 by the end on 128 train tasks). With the
# preset's bonus (0.05 -> 0) the final policies stay soft (~0.9 nats of action entropy
# per state) and AD distilled from them did not learn in context at all (0.43 flat; see
# the README); without it ~0.34 nats. Episodes end at the door, so they vary in length:
# every 3rd episode is kept and each history cropped to its first 4,608 kept steps
# (~84% of the 5,461 expected; the fewest any of 256 probe histories kept was 5,115).
# episode_start_token: the cell alone does not say whether the key is held; the model
# must know where the current episode began (random starts; time-outs leave no trace in
# (o, a, r)), so it is told which steps start an episode, as RL² is. Without it (the
# second attempt in the README) AD acted at the random level.
_add(Setting(
    name="key-to-door", env="key-to-door", source="ppo", histories=2000,
    source_overrides=dict(ent_coef=0.0), subsample_every=3, subsample_steps=4608,
    distill=dict(context=100, window=200, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                 dropout=0.1, obs_encoder="xy", episode_start_token=True, batch_size=64,
                 num_steps=3000, lr=1e-3, warmup_steps=200),
    eval_episodes=200, eval_tasks=256, eval_rollouts_per_task=1,
    report_episodes=(10, 50, 100, 200)))


# Dark FourRooms (MiniGrid, the goal renders as floor): each task is one layout made by
# minigrid (fixed start, fixed hidden goal), 100 steps per episode; a bank of 4,096
# layouts (3,340 train, one history each; 756 held out, all evaluated). Source: noise
# distillation (AD^eps) from the shortest-path demonstrator (env.optimal_action), eps
# falling from 1 to 0 over the first 1,000 steps of a 2,500-step history: ~100-step
# random episodes, then shorter ones, optimal after ~5-15 episodes, then optimal ones.
# Why not PPO: a learner must first find a hidden goal in a 19x19 maze; uniform random
# actions find it within 50 episodes in only 25% of held-out layouts (python -m
# experiments.exploration), so PPO histories from the 7x7x3 view would need 10^5-10^6
# steps per layout (our estimate; not run) with network updates, for 3,340 layouts: far beyond a 2-core CPU
# budget, while these histories take about a minute. The band c = 200 steps holds two
# whole 100-step episodes.
_add(Setting(
    name="fourrooms-dark", env="minigrid-fourrooms-dark", source="noise", histories=3340,
    env_overrides=dict(num_layouts=4096),
    source_overrides=dict(num_steps=2500, anneal_fraction=0.4),
    distill=dict(context=200, window=400, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                 dropout=0.1, batch_size=20, num_steps=1800, lr=1e-3, warmup_steps=100),
    eval_episodes=50, eval_tasks=756, eval_rollouts_per_task=1,
    report_episodes=(5, 10, 25, 45)))


# The same tasks and model, histories an in-context learner can actually follow. In
# fourrooms-dark the demonstrator (who knows the goal) pulls the noisy early episodes
# towards the goal before the agent has ever reached it, and uniform noise explores
# badly: AD on held-out layouts can only explore at random, which finds the goal within
# 50 episodes in 25% of layouts. Here the noise is a persistent random walk from the
# view (env.explore_action; finds it in 79% at turn_prob 0.15; experiments.exploration)
# and the anneal starts only after the first rewarded step (clock="first_reward"),
# falling to 0 over the next 250 steps; histories
# are 5,000 steps so the source's own curve covers the 50 evaluated episodes.
_add(Setting(
    name="fourrooms-dark-explore", env="minigrid-fourrooms-dark", source="noise",
    histories=3340, env_overrides=dict(num_layouts=4096),
    source_overrides=dict(num_steps=5000, anneal_fraction=0.05, noise="explore",
                          clock="first_reward"),
    distill=SETTINGS["fourrooms-dark"].distill,
    eval_episodes=50, eval_tasks=756, eval_rollouts_per_task=1,
    report_episodes=(5, 10, 25, 45)))


# Key-to-Door, every 10th episode kept (the paper's figure): the kept episodes show ten
# PPO episodes of progress each, so the improvement shows within a 100-step context.
# Result: no better than every 3rd (0.48 by episode 200; README).
_add(dataclasses.replace(
    SETTINGS["key-to-door"], name="key-to-door-s10", subsample_every=10,
    subsample_steps=1280))

# Key-to-Door from noise-distilled histories (AD^eps): the shortest-path demonstrator
# (env.optimal_action, which knows the key and door) with eps falling from 1 to 0 over the
# first 1,800 of 3,000 steps. Reported beside the PPO settings, as for Dark Room. Result:
# 0.70 by episode 200 (README); the demonstrator heads for the key before the agent has
# found it, which no context explains (as in Dark FourRooms).
_add(dataclasses.replace(
    SETTINGS["key-to-door"], name="key-to-door-noise", source="noise", source_overrides=dict(
        num_steps=3000, anneal_fraction=0.6), subsample_every=1, subsample_steps=0))

# Key-to-Door from PPO with a 2x64 tanh MLP on per-coordinate one-hots (plus has-key),
# instead of the tabular preset: its policy generalises across cells, so what it learns
# from a reward shows everywhere in its next episodes (a context can see it), and it is
# the faster learner here (on 256 held-out pairs, 1.18 / 1.54 / 1.79 by episodes 50 / 100
# / 200 vs the tabular preset's 1.05 / 1.30 / 1.58; both from experiments.run's source
# curves, docs/key_to_door_{mlp,ppo}_eval.json). Every 8th episode kept, as
# for Dark Room; histories cropped to 1,700 kept steps (~83% of the 2,048 expected).
_add(dataclasses.replace(
    SETTINGS["key-to-door"], name="key-to-door-mlp", source_overrides=dict(
        encoding="onehot", hidden_sizes=(64, 64), activation="tanh", lr=3e-3, ent_coef=0.01,
        ent_coef_end=0.0), subsample_every=8, subsample_steps=1700))


# The same MLP source, every 24th episode kept, so that a success in the stored histories
# is followed up far more often (python -m experiments.retention: 89% after one success,
# vs 78% at every 8th). Result: AD 0.75 by episode 200, no better than every 8th (README).
# Every 24th keeps ~700 steps of a 16,384-step history; crop to 512 (600 was too many for
# one history in 2,000).
_add(dataclasses.replace(SETTINGS["key-to-door-mlp"], name="key-to-door-mlp-s24",
                         subsample_every=24, subsample_steps=512))


# The MLP source's histories cropped to their first 800 kept steps (~100-150 PPO
# episodes), so that its first successes and what follows them fill more of the training
# windows (the lesson of key-to-door-memory-early, README); with the previous observation.
# Result: AD 0.67 by episode 200, worse than uncropped (0.86): the crop also drops the
# source's competent later behaviour.
_add(dataclasses.replace(
    SETTINGS["key-to-door-mlp"], name="key-to-door-mlp-early", subsample_steps=800,
    distill={**SETTINGS["key-to-door-mlp"].distill, "prev_obs_token": True}))


# Diagnostic, not a learning source: Key-to-Door histories of a hand-written in-context
# learner (source_agents.memory) that explores at random until rewarded and then walks to
# the cells its own history showed it (key, then door; uniform action w.p. 0.1), so
# every act follows from the history a model sees. Same model as the best PPO attempt
# (previous observation in every token). Does AD reach its source when nothing in the
# data needs knowledge the context lacks? Histories of 10,000 steps (the evaluation's
# source curve needs 200 episodes), cropped to their first 4,096 for training. Result:
# AD 1.27 by episode 200 vs its source's 2.00; it follows up a first success 39% of the
# time where its data does 100% (README).
_add(dataclasses.replace(
    SETTINGS["key-to-door"], name="key-to-door-memory", source="memory",
    source_overrides=dict(num_steps=10_000, epsilon=0.1), subsample_every=1,
    subsample_steps=4096, distill={**SETTINGS["key-to-door"].distill, "prev_obs_token": True}))


# The same source, histories cropped to their first 1,024 steps (~10 exploring episodes,
# then exploitation). In key-to-door-memory the moment a cell is first found and then
# reused lies in 4.2% of the 200-step training windows, so the model rarely sees "one
# success in context -> go back there"; here in 13.4%. Result: AD 1.42 by episode 50
# (1.22 uncropped), still far from its source's 1.91 (README).
_add(dataclasses.replace(SETTINGS["key-to-door-memory"], name="key-to-door-memory-early",
                         subsample_steps=1024))


# The same agent, but each episode is a slip (random actions throughout, memory kept)
# with probability 0.2. In key-to-door-memory-early's histories no episode after the first
# success fails, and AD acting in context, once it slips, succeeds again only 0.09 of the
# time (python -m experiments.retention): does it go back when its data shows it going back?
_add(dataclasses.replace(SETTINGS["key-to-door-memory-early"], name="key-to-door-memory-slips",
                         source_overrides=dict(num_steps=10_000, epsilon=0.1, slip_prob=0.2)))


# DART-style data (Laskey et al. 2017): the same slips, but the model learns the agent's
# intended actions (DistillConfig.targets="intended_action": a shortest-path step wherever
# the pursued cell is known, slip or not), so it sees failures after a success in its
# context and recoveries from them, without being taught to slip. Result: AD 1.17 by
# episode 200 (slips imitated: 1.02; no slips: 1.34 / 1.46), and its recovery from a
# slip (0.37) no better than without slips in its data (README).
_add(dataclasses.replace(
    SETTINGS["key-to-door-memory-slips"], name="key-to-door-memory-dart",
    distill={**SETTINGS["key-to-door-memory-slips"].distill, "targets": "intended_action"}))

# The same idea on the MLP PPO source: each PPO episode is a slip (uniform random actions
# throughout, left out of PPO's policy loss) with probability 0.2, and AD learns the
# actions PPO's policy sampled (its intended ones). With the best model inputs found
# (previous observation, the episode's reward so far), no dropout, 6,000 steps. Result:
# AD 0.82 by episode 200, below the same model on slip-free histories (1.06; README).
_add(dataclasses.replace(
    SETTINGS["key-to-door-mlp"], name="key-to-door-mlp-dart",
    source_overrides={**SETTINGS["key-to-door-mlp"].source_overrides, "slip_prob": 0.2},
    subsample_steps=1400,  # slips are long episodes: some histories keep under 1,600 steps
    distill={**SETTINGS["key-to-door-mlp"].distill, "prev_obs_token": True,
             "episode_return_token": True, "dropout": 0.0, "num_steps": 6000,
             "targets": "intended_action"}))


# Sharpened labels: the same MLP PPO source acts and learns as in key-to-door-mlp, but its
# histories also record the policy's sample at temperature 0.5 under the same Gumbel noise
# (ppo.Config.label_temperature), and AD learns those (targets="intended_action") while its
# inputs hold the executed actions. On the memory diagnostic, labels without the agent's
# epsilon noise lifted AD from 1.34-1.46 to 1.56 by episode 200 (README): a model that
# imitates a noisy policy adds its own errors to the source's noise in closed loop.
# Inputs and training as the best PPO attempt (previous observation, running return, no
# dropout, 6,000 steps). Result: AD 0.96 by episode 200, no better than 1.06 (README).
_add(dataclasses.replace(
    SETTINGS["key-to-door-mlp"], name="key-to-door-mlp-sharp",
    source_overrides={**SETTINGS["key-to-door-mlp"].source_overrides, "label_temperature": 0.5},
    distill={**SETTINGS["key-to-door-mlp"].distill, "prev_obs_token": True,
             "episode_return_token": True, "dropout": 0.0, "num_steps": 6000,
             "targets": "intended_action"}))


def get_setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; available: {', '.join(SETTINGS)}")
    return SETTINGS[name]
