"""The AD paper's settings: bandits, the Dark Room family and Dark FourRooms.

Their results, commands and wall times are the README's Results table; notes on how each
was reached are in docs/results/README.md.
"""

from __future__ import annotations

from experiments.settings import SETTINGS, Setting, register

# One pull is one episode, so the band c = 100 covers a whole 100-pull evaluation and
# every training window is a whole history.
_BANDIT_DISTILL = dict(context=100, window=100, d_model=64, num_layers=2, num_heads=4,
                       mlp_dim=256, dropout=0.0, batch_size=128, num_steps=1500, lr=1e-3,
                       warmup_steps=100)


# 5-armed Bernoulli bandit, 100 pulls, distilled from UCB1 (the demo's setting).
register(Setting(
    name="bandit", env="bernoulli-bandit", source="ucb", histories=20_000,
    source_overrides=dict(num_steps=100),
    distill=_BANDIT_DISTILL,
    eval_episodes=100, eval_tasks=1000, report_episodes=(10, 50, 95)))

# The AD paper's adversarial bandit: odd best arms in training, even ones when held out.
register(Setting(
    name="adversarial-bandit", env="adversarial-bandit", source="ucb", histories=20_000,
    source_overrides=dict(num_steps=100),
    distill=_BANDIT_DISTILL,
    eval_episodes=100, eval_tasks=1000, report_episodes=(10, 50, 95)))

# The Dark Room family's model and training: a band of 3 episodes, windows of 6.
_DARKROOM_DISTILL = dict(context=60, window=120, d_model=64, num_layers=2, num_heads=4,
                         mlp_dim=256, dropout=0.1, obs_encoder="xy", batch_size=128,
                         num_steps=2000, lr=1e-3, warmup_steps=200)

# Dark Room from PPO learning histories on the 65 training goals, every 8th episode kept.
register(Setting(
    name="darkroom", env="darkroom", source="ppo", histories=1040, source_overrides={},
    subsample_every=8,
    distill=_DARKROOM_DISTILL,
    eval_episodes=200, report_episodes=(10, 50, 100, 200)))

# Dark Room from noise-distilled histories (AD^epsilon), reported beside the PPO one.
register(Setting(
    name="darkroom-noise", env="darkroom", source="noise", histories=520,
    source_overrides=dict(num_steps=1200, anneal_fraction=0.7),
    distill={**_DARKROOM_DISTILL, "batch_size": 64},
    eval_episodes=200, report_episodes=(10, 50, 100, 200)))

# Dark Room Hard (17x17, +1 only on first arrival) from PPO histories, every 8th episode kept.
register(Setting(
    name="darkroom-hard", env="darkroom-hard", source="ppo", histories=1155, source_overrides={},
    subsample_every=8,
    distill=_DARKROOM_DISTILL,
    eval_episodes=200, report_episodes=(10, 50, 100, 200)))

# Dark FourRooms (MiniGrid, hidden goal; one layout per task) from noise distillation of the
# shortest-path demonstrator; why not PPO: docs/results/README.md.
register(Setting(
    name="fourrooms-dark", env="minigrid-fourrooms-dark", source="noise", histories=3340,
    env_overrides=dict(num_layouts=4096),
    source_overrides=dict(num_steps=2500, anneal_fraction=0.4),
    distill=dict(context=200, window=400, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                 dropout=0.1, batch_size=20, num_steps=1800, lr=1e-3, warmup_steps=100),
    eval_episodes=50, eval_tasks=756, eval_rollouts_per_task=1,
    report_episodes=(5, 10, 25, 45)))

# The same, noise from a persistent random walk (env.explore_action) and an anneal that
# starts at the first reward.
register(Setting(
    name="fourrooms-dark-explore", env="minigrid-fourrooms-dark", source="noise",
    histories=3340, env_overrides=dict(num_layouts=4096),
    source_overrides=dict(num_steps=5000, anneal_fraction=0.05, noise="explore",
                          clock="first_reward"),
    distill=SETTINGS["fourrooms-dark"].distill,
    eval_episodes=50, eval_tasks=756, eval_rollouts_per_task=1,
    report_episodes=(5, 10, 25, 45)))
