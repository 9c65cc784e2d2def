"""Noise distillation source: the ε schedule, near-uniform actions at the start, optimal
episodes at the end, rising returns, histories that replay through env.step, the
per-episode schedule and the demonstrator hook, on Dark Room (Hard), Key-to-Door and
bandits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import source_agents
from source_agents import noise
from source_agents.history import episode_returns

HORIZON = 20
NUM_EPISODES = 50
SEEDS_PER_GOAL = 2


def run(env, config, params, seed=0, demonstrator=None):
    num = jax.tree.leaves(params)[0].shape[0]
    train = noise.make_train(env, config, demonstrator)
    return jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(seed), num), params)


def episode_starts(done):
    """First step of every episode of one stream (NumPy)."""
    done = np.asarray(done)
    return np.concatenate([[0], np.flatnonzero(done[:-1]) + 1])


@pytest.fixture(scope="module")
def darkroom_run():
    """Every Dark Room goal (both splits), SEEDS_PER_GOAL histories each."""
    env = envs.make("darkroom")
    goals = jnp.concatenate([env.tasks("train").goal, env.tasks("test").goal])
    params = env.tasks("train").replace(goal=jnp.repeat(goals, SEEDS_PER_GOAL, axis=0))
    config = noise.Config(num_steps=HORIZON * NUM_EPISODES, anneal_fraction=0.7)
    return env, config, params, run(env, config, params)


def test_epsilon_schedule():
    config = noise.Config(num_steps=1000, anneal_fraction=0.5)
    eps = np.asarray(noise.epsilon_at(config, jnp.array([0, 250, 500, 999])))
    np.testing.assert_allclose(eps, [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    partial = noise.Config(num_steps=100, anneal_fraction=1.0, epsilon_start=0.8, epsilon_end=0.2)
    np.testing.assert_allclose(noise.epsilon_at(partial, jnp.array([0, 50])), [0.8, 0.5], atol=1e-6)
    flat = noise.Config(num_steps=100, anneal_fraction=0.0, epsilon_end=0.1)
    np.testing.assert_allclose(noise.epsilon_at(flat, jnp.array([0, 99])), [0.1, 0.1], atol=1e-6)


def test_darkroom_start_is_uniform(darkroom_run):
    env, config, params, history = darkroom_run
    # ε falls only from 1 to 0.97 in the first episode: actions are near-uniform, whereas
    # the optimal policy alone would almost never pick the no-op.
    first = np.asarray(history.action[:, :HORIZON]).ravel()
    freqs = np.bincount(first, minlength=env.num_actions) / first.size
    np.testing.assert_allclose(freqs, 1 / env.num_actions, atol=0.04)


def test_darkroom_final_episodes_are_optimal_and_returns_rise(darkroom_run):
    env, config, params, history = darkroom_run
    done = np.asarray(history.terminated | history.truncated)
    returns = np.stack([episode_returns(r, d) for r, d in zip(np.asarray(history.reward), done)])
    assert returns.shape == (params.goal.shape[0], NUM_EPISODES)
    optimal = np.asarray(jax.vmap(env.optimal_return)(params))
    # ε reaches 0 at step 0.7 * 1000 = 700, the start of episode 35: from there on the
    # optimal policy acts alone.
    pure = int(0.7 * NUM_EPISODES)
    expected = np.repeat(optimal[:, None], NUM_EPISODES - pure, 1)
    np.testing.assert_array_equal(returns[:, pure:], expected)
    assert (returns[:, :5] < optimal[:, None]).mean() > 0.9  # the start is far from optimal
    # Mean return (over tasks) in blocks of 5 episodes climbs through the anneal.
    blocks = returns.mean(0).reshape(-1, 5).mean(1)
    print("mean return per 5-episode block:", np.round(blocks, 2))
    assert np.all(np.diff(blocks[: pure // 5 + 1]) > 0), blocks
    assert blocks[0] < 0.25 * blocks[-1]


def test_darkroom_history_replays_through_env_step(darkroom_run):
    env, config, params, history = darkroom_run
    # Dark Room is deterministic, so the recorded actions alone must reproduce the stream.
    step = jax.jit(jax.vmap(env.step, in_axes=(None, 0, 0, 0)))
    obs, state = jax.vmap(env.reset, in_axes=(None, 0))(jax.random.key(0), params)
    key = jax.random.key(1)
    for t in range(config.num_steps):
        np.testing.assert_array_equal(history.obs[:, t], obs, err_msg=f"obs at step {t}")
        action = history.action[:, t]
        obs, state, reward, terminated, truncated, _ = step(key, state, action, params)
        np.testing.assert_array_equal(history.reward[:, t], reward, err_msg=f"reward at step {t}")
        np.testing.assert_array_equal(history.terminated[:, t], terminated)
        np.testing.assert_array_equal(history.truncated[:, t], truncated)


def test_darkroom_hard_and_key_to_door_end_optimal():
    hard = envs.make("darkroom-hard")
    params = hard.tasks("test")
    config = noise.Config(num_steps=HORIZON * 30, anneal_fraction=0.5)
    history = run(hard, config, params, seed=2)
    done = np.asarray(history.truncated)
    returns = np.stack([episode_returns(r, d) for r, d in zip(np.asarray(history.reward), done)])
    np.testing.assert_array_equal(returns[:, 15:], 1.0)  # every goal reachable: optimum 1
    assert returns[:, :3].mean() < 0.5

    k2d = envs.make("key-to-door")
    keys = jax.random.split(jax.random.key(3), 32)
    params = jax.vmap(lambda k: k2d.sample_params(k, "train"))(keys)
    config = noise.Config(num_steps=1500, anneal_fraction=0.5)
    history = run(k2d, config, params, seed=4)
    optimal = np.asarray(jax.vmap(k2d.optimal_return)(params))
    assert np.all(optimal == 2.0)  # at the defaults every start can collect key and door
    early = []
    rewards, terms = np.asarray(history.reward), np.asarray(history.terminated)
    for r, term, trunc in zip(rewards, terms, np.asarray(history.truncated)):
        done = term | trunc
        returns = episode_returns(r, done)
        starts = episode_starts(done)[: len(returns)]
        late = starts >= config.anneal_fraction * config.num_steps
        assert late.sum() >= 5
        np.testing.assert_array_equal(returns[late], 2.0)
        # Episodes of the optimal policy end by opening the door, never by the time limit.
        ends = np.flatnonzero(done)[: len(returns)]
        assert term[ends[late]].all()
        early.append(returns[:3])
    assert np.mean(early) < 1.0  # near-random first episodes rarely finish the task


def test_bandit_noise_distillation():
    env = envs.make("bernoulli-bandit", num_arms=5)
    keys = jax.random.split(jax.random.key(5), 400)
    params = jax.vmap(lambda k: env.sample_params(k, "train"))(keys)
    config = noise.Config(num_steps=100, anneal_fraction=0.5)
    history = run(env, config, params, seed=6)
    best = np.asarray(jnp.argmax(params.means, axis=1))
    action = np.asarray(history.action)
    np.testing.assert_array_equal(action[:, 50:], np.repeat(best[:, None], 50, 1))
    first = action[:, :3].ravel()  # ε >= 0.96
    np.testing.assert_allclose(np.bincount(first, minlength=5) / first.size, 0.2, atol=0.04)


def test_per_episode_schedule_and_demonstrator_hook():
    env = envs.make("darkroom")
    goals = jnp.repeat(env.tasks("train").goal, 4, axis=0)  # 65 goals, 4 histories each
    params = env.tasks("train").replace(goal=goals)
    always_noop = lambda key, obs, state, params: jnp.int32(0)  # noqa: E731

    def noop_freq(per_episode):
        config = noise.Config(num_steps=2 * HORIZON, anneal_fraction=1.0, per_episode=per_episode)
        action = np.asarray(run(env, config, params, seed=7, demonstrator=always_noop).action)
        return (action[:, :HORIZON] == 0).mean(), (action[:, HORIZON:] == 0).mean()

    # P(no-op) = ε/5 + (1 - ε). Per episode: ε = 1 in episode 0 and ε(20) = 0.5 in
    # episode 1, so 0.2 and 0.6. Per step: ε(t) = 1 - t/40, mean ε 0.7625 over episode 0
    # and 0.2625 over episode 1, so 0.39 and 0.79.
    np.testing.assert_allclose(noop_freq(True), [0.2, 0.6], atol=0.03)
    np.testing.assert_allclose(noop_freq(False), [0.39, 0.79], atol=0.03)


def test_first_reward_clock_explores_until_rewarded():
    """clock="first_reward": uniform noise up to the first rewarded step, then (a one-step
    anneal) the demonstrator alone from two steps after it."""
    env = envs.make("darkroom")
    params = env.tasks("train").replace(goal=jnp.repeat(env.tasks("train").goal, 4, axis=0))
    always_noop = lambda key, obs, state, params: jnp.int32(0)  # noqa: E731
    steps = 3 * HORIZON
    config = noise.Config(num_steps=steps, anneal_fraction=1 / steps, clock="first_reward")
    history = run(env, config, params, seed=3, demonstrator=always_noop)
    action, reward = np.asarray(history.action), np.asarray(history.reward)
    before, rewarded = [], 0
    for a, r in zip(action, reward):
        hits = np.flatnonzero(r > 0)
        first = hits[0] if hits.size else steps
        before.append(a[:first + 1])  # ε = 1 through the first rewarded step
        if hits.size:
            rewarded += 1
            assert np.all(a[first + 2:] == 0)  # ε = 0 from the second step after it
    assert 0.3 * len(action) < rewarded < len(action)  # both kinds of history occur
    before = np.concatenate(before)
    np.testing.assert_allclose((before == 0).mean(), 0.2, atol=0.03)


def test_explore_noise_needs_an_explorer():
    with pytest.raises(ValueError, match="explore_action"):
        noise.make_train(envs.make("darkroom"), noise.Config(noise="explore"))
    with pytest.raises(ValueError, match="clock"):
        noise.Config(clock="episode")
    with pytest.raises(ValueError, match="noise"):
        noise.Config(noise="gaussian")


def test_registry_and_bad_input():
    assert source_agents.get("noise") is noise
    with pytest.raises(ValueError, match="num_steps"):
        noise.Config(num_steps=0)
    with pytest.raises(ValueError, match="anneal_fraction"):
        noise.Config(anneal_fraction=1.5)
    with pytest.raises(ValueError, match="epsilon_end"):
        noise.Config(epsilon_end=-0.1)
    with pytest.raises(ValueError, match="demonstrator"):
        noise.make_train(envs.make("darkroom"), noise.Config(), demonstrator="optimal")
