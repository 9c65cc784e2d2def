"""DQN source: config validation, learning a small Dark Room, uniform actions while
ε = 1, and a history that replays exactly through ``env.step``."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import envs
from source_agents import dqn
from source_agents.history import episode_returns
from tests.helpers import assert_history_replays


def test_config_validation():
    with pytest.raises(ValueError, match="train_every"):
        dqn.Config(num_steps=1001, train_every=4)
    with pytest.raises(ValueError, match="learning_starts"):
        dqn.Config(num_steps=1024, learning_starts=2048)
    with pytest.raises(ValueError, match="eps_end"):
        dqn.Config(eps_start=0.1, eps_end=0.5)


def test_learns_small_darkroom_and_history_replays():
    env = envs.make("darkroom", size=5, horizon=10)
    config = dqn.Config(
        num_steps=3000, buffer_size=2048, batch_size=32, train_every=2, learning_starts=200,
        eps_decay_steps=1500, eps_end=0.0, target_update_every=100, lr=3e-3,
        encoding="joint", hidden_sizes=(32,),
    )
    tasks = env.tasks("train")
    n = tasks.goal.shape[0]
    keys = jax.random.split(jax.random.key(0), n)
    hist = jax.jit(jax.vmap(dqn.make_train(env, config)))(keys, tasks)
    assert hist.action.shape == (n, 3000) and hist.obs.shape == (n, 3000, 2)

    opt = np.asarray(jax.vmap(env.optimal_return)(tasks))
    done = np.asarray(hist.terminated | hist.truncated)
    rewards = np.asarray(hist.reward)
    first, last = [], []
    for i in range(n):
        r = episode_returns(rewards[i], done[i])
        first.append(r[:20].mean() / opt[i])
        last.append(r[-20:].mean() / opt[i])
    assert np.mean(last) > 0.85 and np.mean(last) > np.mean(first) + 0.4, (first, last)

    # ε = 1 during warm-up: actions are uniform over the 5 moves (each ~20%).
    counts = np.bincount(np.asarray(hist.action)[:, :200].ravel(), minlength=5) / (n * 200)
    np.testing.assert_allclose(counts, 0.2, atol=0.03)

    # Replaying the recorded actions through env.step reproduces the stream.
    assert_history_replays(env, tasks, hist)
    np.testing.assert_array_equal(done[0], (np.arange(3000) % 10) == 9)
