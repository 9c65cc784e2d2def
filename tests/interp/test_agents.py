"""Reference agents (ad.interp.agents): hand-computed values, the source's own UCB1, the
scan along a stream equal to a Python loop, and the goal-posterior agent's exploration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import source_agents
from ad.interp import agents as A
from source_agents.bandits import UCBConfig


def test_ucb1_values_by_hand():
    stats = A.UCB1(3).update(A.UCB1(3).init(1), None, jnp.array([0]), jnp.array([1.0]), None)
    stats = A.UCB1(3).update(stats, None, jnp.array([1]), jnp.array([0.0]), None)
    v = np.asarray(A.UCB1(3).values(stats, None))[0]
    bonus = np.sqrt(2 * np.log(2) / 1)
    np.testing.assert_allclose(v[:2], [1 + bonus, 0 + bonus], rtol=1e-6)
    assert v[2] == A.UNTRIED  # untried: first, as in UCB1


def test_ucb1_argmax_reproduces_the_source_exactly():
    """Run on the source's own history, UCB1's argmax (lowest index on ties) is the
    source's action at every pull: the same arithmetic."""
    env = envs.make("bernoulli-bandit")
    tasks = jax.vmap(lambda k: env.sample_params(k, "test"))(jax.random.split(jax.random.key(0), 8))
    train = jax.vmap(source_agents.bandits.make_ucb(env, UCBConfig(num_steps=60)))
    h = train(jax.random.split(jax.random.key(1), 8), tasks)
    v = A.along_stream(A.UCB1(env.num_actions), h.obs, h.action, h.reward, h.terminated)
    np.testing.assert_array_equal(np.asarray(v).argmax(-1), np.asarray(h.action))


def _bandit_stream(seed: int):
    """3 random 4-armed bandit streams of 12 pulls: (obs, action, reward, done)."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 4, (3, 12)).astype(np.int32)
    reward = rng.integers(0, 2, (3, 12)).astype(np.float32)
    return np.zeros((3, 12), np.int32), action, reward, np.ones((3, 12), bool)


def test_along_stream_equals_a_python_loop():
    obs, action, reward, done = _bandit_stream(0)
    agent = A.Greedy(4)
    got = np.asarray(A.along_stream(agent, obs, action, reward, done))
    for b in range(3):
        counts, sums = np.zeros(4), np.zeros(4)
        for t in range(12):
            want = np.where(counts == 0, A.UNTRIED, sums / np.maximum(counts, 1))
            np.testing.assert_allclose(got[b, t], want, rtol=1e-6)
            counts[action[b, t]] += 1
            sums[action[b, t]] += reward[b, t]


def test_states_along_is_the_state_before_each_step_as_a_python_loop():
    obs, action, reward, done = _bandit_stream(1)
    got = A.states_along(A.UCB1(4), obs, action, reward, done)
    for b in range(3):
        counts, sums = np.zeros(4), np.zeros(4)
        for t in range(12):
            np.testing.assert_array_equal(got.counts[b, t], counts)
            np.testing.assert_array_equal(got.sums[b, t], sums)
            counts[action[b, t]] += 1
            sums[action[b, t]] += reward[b, t]
    # Dark Room: (4,4) right -> (5,4) unpaid, right -> (6,4) paid: the goal is known after
    cells = np.array([[[4, 4], [5, 4], [6, 4]]], np.int32)
    belief = A.states_along(A.GoalPosterior(9), cells, np.array([[1, 1, 0]], np.int32),
                            np.array([[0., 1., 1.]], np.float32), np.zeros((1, 3), bool))
    np.testing.assert_array_equal(belief.known[0], [False, False, True])
    np.testing.assert_array_equal(belief.ruled_out[0].sum(-1), [0, 1, 1])
    assert belief.ruled_out[0, 1, 4 * 9 + 5]
    np.testing.assert_array_equal(belief.goal[0, 2], [6, 4])


def test_darkroom_optimal_actions_by_hand():
    opt = np.asarray(A.darkroom_optimal_actions(np.array([[4, 4], [2, 2], [0, 0]]),
                                                np.array([[6, 3], [2, 2], [0, 0]]), 9))
    # (4,4)->(6,3): right (x+1) and up (y-1); on the goal: stay, and at the corner the
    # moves into the wall also stay there
    np.testing.assert_array_equal(opt, [[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [1, 0, 1, 0, 1]])


def test_goal_posterior_agent_finds_every_goal_and_then_goes_straight_back():
    env = envs.make("darkroom")
    tasks = env.tasks("test")
    ro = A.agent_rollout(A.GoalPosterior(env.size), env, tasks, jax.random.key(0), 20 * 8)
    reward = np.asarray(ro.reward).reshape(16, 8, 20).sum(-1)  # (tasks, episodes)
    found = np.argmax(reward > 0, axis=1)
    assert (reward.max(1) > 0).all()  # every goal found
    assert (found <= 7).all()
    # from the episode after the goal was found, every episode is optimal
    opt = np.asarray(jax.vmap(env.optimal_return)(tasks))
    for i in range(16):
        np.testing.assert_array_equal(reward[i, found[i] + 1:], opt[i])


def test_goal_posterior_never_revisits_before_the_goal_is_known():
    """Within one episode, before any reward, the systematic explorer ends each step on a
    cell not seen before while unvisited cells lie within reach (it may pass back only over
    explored ground to reach the next unexplored cell)."""
    env = envs.make("darkroom")
    goal = env.tasks("test").goal[:1]
    ro = A.agent_rollout(A.GoalPosterior(env.size), env, type(env.tasks("test"))(goal=goal),
                         jax.random.key(3), 20)
    obs, action, reward = (np.asarray(x)[0] for x in (ro.obs, ro.action, ro.reward))
    ends = np.clip(obs + np.asarray(A._MOVES)[action], 0, 8)
    before = reward.cumsum() == 0
    first_steps = [tuple(e) for e, b in zip(ends, before) if b]
    # the first moves from the centre of an empty room: all new cells (no dead end yet)
    assert len(set(first_steps[:8])) == len(first_steps[:8])


def test_uniform_agent_is_uniform():
    env = envs.make("bernoulli-bandit")
    tasks = jax.vmap(lambda k: env.sample_params(k, "test"))(jax.random.split(jax.random.key(0), 400))
    ro = A.agent_rollout(A.Uniform(env.num_actions), env, tasks, jax.random.key(1), 25)
    freq = np.bincount(np.asarray(ro.action).ravel(), minlength=5) / 10_000
    np.testing.assert_allclose(freq, 0.2, atol=0.02)  # 5 SE of 10,000 draws


def test_gittins_index_matches_the_published_table_and_its_limits():
    """Gittins' tables give 0.7029 for a Beta(1, 1) arm at discount 0.9; the index exceeds
    the posterior mean (the value of information) and falls to it as the discount -> 0."""
    g = A.gittins_table(0.9, max_pulls=8, depth=160, grid=4001)
    assert abs(g[1, 1] - 0.7029) < 5e-4
    for a, b in [(1, 1), (2, 1), (1, 3), (4, 5)]:
        assert g[a, b] > a / (a + b)
        assert g[a + 1, b] > g[a, b] > g[a, b + 1]
    myopic = A.gittins_table(1e-4, max_pulls=8, depth=20, grid=4001)
    for a, b in [(1, 1), (2, 1), (1, 3), (4, 5)]:
        assert abs(myopic[a, b] - a / (a + b)) < 5e-4


def test_bayes_bandit2_is_the_brute_force_recursion():
    """Every state of a 6-pull 2-armed bandit: the table's Q-values equal a plain memoised
    recursion over (s1, f1, s2, f2); with one pull left they are the posterior means."""
    import functools

    H = 6

    @functools.lru_cache(None)
    def q(s1, f1, s2, f2):
        def v(*state):
            return 0.0 if sum(state) == H else max(q(*state))

        p1, p2 = (1 + s1) / (2 + s1 + f1), (1 + s2) / (2 + s2 + f2)
        return (p1 * (1 + v(s1 + 1, f1, s2, f2)) + (1 - p1) * v(s1, f1 + 1, s2, f2),
                p2 * (1 + v(s1, f1, s2 + 1, f2)) + (1 - p2) * v(s1, f1, s2, f2 + 1))

    states = np.array([s for s in np.ndindex(H, H, H, H) if sum(s) < H])  # 126 states
    stats = A.ArmStats(jnp.asarray(states[:, [0, 2]] + states[:, [1, 3]], jnp.float32),
                       jnp.asarray(states[:, [0, 2]], jnp.float32))
    got = np.asarray(A.BayesBandit2(2, H).values(stats, None))
    np.testing.assert_allclose(got, [q(*map(int, s)) for s in states], rtol=1e-6)
    last = states.sum(1) == H - 1
    np.testing.assert_allclose(got[last], (1 + states[last][:, [0, 2]]) /
                               (2 + states[last][:, [0, 2]] + states[last][:, [1, 3]]), rtol=1e-6)
    assert A.bayes2_table(H).shape == (126, 2)  # C(H + 3, 4): the layout has no gaps


def test_bayes_bandit2_has_less_regret_than_ucb1():
    """Acting, the Bayes-optimal policy beats UCB1 over 100 pulls on the same 2-armed tasks
    (~1.9 vs ~5.7 pseudo-regret)."""
    from experiments.run import _pseudo_regret

    env = envs.make("bernoulli-bandit", num_arms=2)
    keys = jax.random.split(jax.random.key(0), 200)
    tasks = jax.vmap(lambda k: env.sample_params(k, "test"))(keys)
    regret = {}
    for agent in (A.BayesBandit2(2, 100), A.UCB1(2)):
        ro = A.agent_rollout(agent, env, tasks, jax.random.key(1), 100)
        pseudo = _pseudo_regret(env, tasks, np.asarray(ro.action))
        regret[type(agent).__name__] = pseudo[:, -1].mean()
    assert regret["BayesBandit2"] < 0.6 * regret["UCB1"], regret


def test_thompson_values_are_its_action_probabilities():
    """One arm pulled 20 times with 20 rewards, the other 20 times with none: Thompson picks
    the first almost surely; with no data both are equally likely."""
    agent = A.Thompson(2, samples=4000)
    stats = A.ArmStats(jnp.array([[20.0, 20.0], [0.0, 0.0]]), jnp.array([[20.0, 0.0], [0.0, 0.0]]))
    p = np.exp(np.asarray(agent.values(stats, None)))
    np.testing.assert_allclose(p[0], [1, 0], atol=1e-3)
    np.testing.assert_allclose(p[1], [0.5, 0.5], atol=0.03)  # > 4 SE of 4,000 draws
