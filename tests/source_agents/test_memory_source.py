"""The explore-and-remember source: acts only on what its own history has shown it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import source_agents
from source_agents import memory


def _episodes(history):
    """Per episode of one history: (start step, length, return, start cell)."""
    done = np.asarray(history.terminated | history.truncated)
    ends = np.flatnonzero(done)
    starts = np.concatenate([[0], ends[:-1] + 1])
    rewards = np.asarray(history.reward)
    obs = np.asarray(history.obs)
    return [(s, e - s + 1, rewards[s:e + 1].sum(), obs[s]) for s, e in zip(starts, ends)]


def test_key_to_door_once_both_cells_are_found_every_episode_is_a_shortest_path():
    env = envs.make("key-to-door")
    tasks = jax.tree.map(lambda x: x[::97][:16], env.tasks("train"))
    train = jax.jit(jax.vmap(memory.make_train(env, memory.Config(num_steps=4000, epsilon=0.0))))
    histories = train(jax.random.split(jax.random.PRNGKey(0), 16), tasks)
    solved = 0
    for i in range(16):
        h = jax.tree.map(lambda x: x[i], histories)
        key_cell = np.asarray(tasks.key_cell[i])
        door_cell = np.asarray(tasks.door_cell[i])
        episodes = _episodes(h)
        done_with_door = [j for j, ep in enumerate(episodes) if ep[2] == 2]
        if not done_with_door:
            continue
        solved += 1
        # every episode after the first success: return 2 along a shortest path
        for start, length, ret, cell in episodes[done_with_door[0] + 1:]:
            to_key = max(int(np.abs(cell - key_cell).sum()), 1)
            assert ret == 2 and length == to_key + int(np.abs(key_cell - door_cell).sum())
    assert solved >= 14  # 80 random episodes find key and door in nearly every task


def test_behaviour_before_the_first_reward_does_not_depend_on_the_task():
    env = envs.make("key-to-door")
    train = jax.jit(memory.make_train(env, memory.Config(num_steps=1000)))
    key = jax.random.PRNGKey(3)
    cells = [((1, 1), (7, 7)), ((8, 0), (0, 8))]
    runs = [train(key, envs.key_to_door.KeyToDoorParams(jnp.array(k), jnp.array(d)))
            for k, d in cells]
    rewarded = [np.flatnonzero(np.asarray(h.reward) > 0) for h in runs]
    assert all(len(r) for r in rewarded)
    first = min(int(r[0]) for r in rewarded)  # the first step either run is rewarded at
    assert first >= 10  # a stretch of task-independent exploration to compare
    # same random stream, no reward yet: identical steps up to and including the first reward
    np.testing.assert_array_equal(runs[0].action[:first + 1], runs[1].action[:first + 1])
    np.testing.assert_array_equal(runs[0].obs[:first + 1], runs[1].obs[:first + 1])


def test_darkroom_reaches_the_optimum_after_finding_the_goal():
    env = envs.make("darkroom")
    tasks = env.tasks("test")
    n = jax.tree.leaves(tasks)[0].shape[0]
    train = jax.jit(jax.vmap(memory.make_train(env, memory.Config(num_steps=2000, epsilon=0.0))))
    histories = train(jax.random.split(jax.random.PRNGKey(1), n), tasks)
    optimum = np.asarray(jax.vmap(env.optimal_return)(tasks))
    done = np.asarray(histories.terminated | histories.truncated)
    returns = np.stack([source_agents.episode_returns(histories.reward[i], done[i])
                        for i in range(n)])  # Dark Room episodes all last the horizon
    found = returns.max(1) > 0
    assert found.mean() > 0.9
    # the episode after the first rewarded one, and every later one, is optimal
    for r, opt in zip(returns[found], optimum[found]):
        first = int(np.argmax(r > 0))
        np.testing.assert_allclose(r[first + 1:], opt)


def test_intended_action_is_the_shortest_path_step_once_the_goal_is_known():
    """intended_action: the executed action until the goal is known (exploring), then the
    shortest-path step towards it from wherever the agent is, epsilon steps included."""
    env = envs.make("darkroom")
    tasks = env.tasks("test")
    n = jax.tree.leaves(tasks)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    train = jax.jit(jax.vmap(memory.make_train(env, memory.Config(num_steps=4000, epsilon=0.3))))
    histories = train(keys, tasks)
    for i in range(n):
        h = jax.tree.map(lambda x: x[i], histories)
        paid = np.flatnonzero(np.asarray(h.reward) > 0)
        if not len(paid):
            continue
        known = np.arange(4000) > paid[0]
        np.testing.assert_array_equal(h.intended_action[~known], h.action[~known])
        goal = np.asarray(tasks.goal[i])
        towards = np.asarray(jax.vmap(lambda o: envs.darkroom.greedy_step_towards(o, goal))(
            jnp.asarray(h.obs[known])))
        np.testing.assert_array_equal(h.intended_action[known], towards)
    assert (histories.intended_action != histories.action).mean() > 0.05  # the epsilon steps


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="epsilon"):
        memory.Config(epsilon=1.5)
    with pytest.raises(ValueError, match="num_steps"):
        memory.Config(num_steps=0)
    with pytest.raises(ValueError, match="bernoulli-bandit"):
        memory.make_train(envs.make("bernoulli-bandit"), memory.Config())
    assert source_agents.get("memory") is memory
