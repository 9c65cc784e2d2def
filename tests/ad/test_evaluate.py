"""ad.evaluate's bookkeeping by hand: episode curves, confidence bands, task selection,
and the baselines' curves against what they must be."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad import evaluate as ev


def test_episode_curve_sums_rewards_per_episode_by_hand():
    reward = jnp.asarray([[1, 0, 2, 1, 1, 0, 5], [0, 0, 1, 0, 0, 3, 1]], jnp.float32)
    done = jnp.asarray([[0, 1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 0, 1, 0]], bool)
    r = ev.Rollout(action=jnp.zeros_like(reward, jnp.int32), reward=reward, done=done)
    np.testing.assert_array_equal(ev.episode_curve(r, 3), [[1, 4, 0], [0, 1, 3]])
    with pytest.raises(ValueError, match="only 3 episodes completed"):
        ev.episode_curve(r, 4)  # the trailing, unfinished episode never counts


def test_mean_and_ci_is_the_normal_95_interval():
    curves = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, ci = ev.mean_and_ci(curves)
    np.testing.assert_allclose(mean, [3.0, 2.0])
    np.testing.assert_allclose(ci, [1.96 * 2.0 / np.sqrt(3), 0.0])  # sample sd of 1,3,5 is 2


def test_eval_tasks_cover_a_finite_split_exactly_and_repeat_in_blocks():
    env = envs.make("darkroom")
    tasks = ev.eval_tasks(env, "test", 1000, jax.random.key(0))
    np.testing.assert_array_equal(tasks.goal, env.tasks("test").goal)  # every held-out goal
    sub = ev.eval_tasks(env, "test", 5, jax.random.key(0))
    assert len(sub.goal) == 5 and len({tuple(g) for g in np.asarray(sub.goal)}) == 5
    test_goals = {tuple(g) for g in np.asarray(env.tasks("test").goal)}
    assert {tuple(g) for g in np.asarray(sub.goal)} <= test_goals
    rep = ev.repeat_tasks(sub, 3)  # each task's rollouts adjacent (improvement() relies on it)
    np.testing.assert_array_equal(np.asarray(rep.goal)[:3], np.repeat(np.asarray(sub.goal)[:1], 3, 0))


def test_random_and_source_baselines_on_a_bandit():
    """The random policy's reward per pull is the mean arm mean; UCB1 learning from scratch
    beats it, and its curve covers exactly the asked-for pulls."""
    env = envs.make("bernoulli-bandit")
    tasks = ev.eval_tasks(env, "test", 256, jax.random.key(1))
    rnd = ev.episode_curve(ev.random_rollout(env, tasks, jax.random.key(2), 100), 100)
    assert abs(rnd.mean() - float(np.asarray(tasks.means).mean())) < 0.02
    import source_agents
    src = source_agents.get("ucb")
    _, curve = ev.source_learning(src, source_agents.make_config(src, env.name, num_steps=100),
                                  env, tasks, jax.random.key(3), 100)
    assert curve.shape == (256, 100)
    assert curve[:, 50:].mean() > rnd.mean() + 0.1
