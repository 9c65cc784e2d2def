"""Bandit source agents: regret parity with NumPy references, a hand-traced UCB1 run,
sanity of ε-greedy and random, the source interface and the baseline helpers."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import envs
import source_agents
from envs.core import ArraySpec, Environment
from source_agents import bandits

NUM_TASKS = 2000
NUM_PULLS = 100
NUM_ARMS = 5


# ---- NumPy references: one loop over pulls, vectorised over tasks ---------------------------
def _numpy_bandit(means, num_pulls, rng, choose):
    """Run ``choose(t, counts, sums, rng) -> (N,) arms`` on Bernoulli arms; return (N, T) arms."""
    n, k = means.shape
    rows = np.arange(n)
    counts = np.zeros((n, k))
    sums = np.zeros((n, k))
    actions = np.zeros((n, num_pulls), np.int64)
    for t in range(num_pulls):
        a = choose(t, counts, sums, rng)
        reward = (rng.random(n) < means[rows, a]).astype(np.float64)
        counts[rows, a] += 1
        sums[rows, a] += reward
        actions[:, t] = a
    return actions


def numpy_ucb1(means, num_pulls, rng, c=1.0):
    k = means.shape[1]

    def choose(t, counts, sums, rng):
        if t < k:  # initial round: every arm once, in index order
            return np.full(len(counts), t)
        return np.argmax(sums / counts + c * np.sqrt(2 * np.log(t) / counts), axis=1)

    return _numpy_bandit(means, num_pulls, rng, choose)


def numpy_thompson(means, num_pulls, rng):
    def choose(t, counts, sums, rng):
        return np.argmax(rng.beta(1 + sums, 1 + counts - sums), axis=1)

    return _numpy_bandit(means, num_pulls, rng, choose)


def numpy_egreedy(means, num_pulls, rng, epsilon):
    n, k = means.shape

    def choose(t, counts, sums, rng):
        value = np.where(counts == 0, np.inf, sums / np.maximum(counts, 1))
        ties = value == value.max(axis=1, keepdims=True)
        greedy = np.argmax(np.where(ties, rng.random((n, k)), -1.0), axis=1)
        return np.where(rng.random(n) < epsilon, rng.integers(0, k, n), greedy)

    return _numpy_bandit(means, num_pulls, rng, choose)


def numpy_regret(means, actions):
    """Cumulative pseudo-regret (N, T)."""
    chosen = np.take_along_axis(means, actions, axis=1)
    return np.cumsum(means.max(axis=1, keepdims=True) - chosen, axis=1)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env():
    return envs.make("bernoulli-bandit", num_arms=NUM_ARMS)


@pytest.fixture(scope="module")
def tasks(env):
    keys = jax.random.split(jax.random.key(0), NUM_TASKS)
    return jax.vmap(lambda k: env.sample_params(k, "train"))(keys)


_RUNS: dict = {}


def jax_regret(name, env, tasks, **hyper):
    """Cumulative pseudo-regret (N, T) and the histories of one batched run (memoised:
    several tests share a run, and each distinct config costs a compilation)."""
    run_key = (name, tuple(sorted(hyper.items())))
    if run_key not in _RUNS:
        source = source_agents.get(name)
        train = source.make_train(env, source.Config(num_steps=NUM_PULLS, **hyper))
        keys = jax.random.split(jax.random.key(1), NUM_TASKS)
        history = jax.jit(jax.vmap(train))(keys, tasks)
        regret = jnp.cumsum(bandits.pseudo_regret(tasks.means, history.action), axis=1)
        _RUNS[run_key] = (np.asarray(regret), history)
    return _RUNS[run_key]


# ---- parity with the NumPy references ---------------------------------------------------------
@pytest.mark.parametrize(
    "name, reference, hyper",
    [
        ("ucb", numpy_ucb1, {}),
        ("thompson", numpy_thompson, {}),
        ("egreedy", lambda m, t, rng: numpy_egreedy(m, t, rng, 0.1), {"epsilon": 0.1}),
    ],
)
def test_regret_matches_numpy_reference(env, tasks, name, reference, hyper):
    ours, _ = jax_regret(name, env, tasks, **hyper)
    means = np.asarray(tasks.means, np.float64)
    ref = numpy_regret(means, reference(means, NUM_PULLS, np.random.default_rng(0)))
    for t in (25, 50, 100):
        a, b = ours[:, t - 1].mean(), ref[:, t - 1].mean()
        print(f"{name}: mean cumulative regret after {t} pulls: jax {a:.3f}, numpy {b:.3f}")
        assert abs(a - b) <= 0.10 * b, (name, t, a, b)


def test_ucb_and_thompson_learn(env, tasks):
    """Both beat random by far, and their per-pull regret shrinks over the history."""
    means = np.asarray(tasks.means)
    random_regret = (means.max(1) - means.mean(1)).mean() * NUM_PULLS
    # UCB1's sqrt(2 ln n / n_a) bonus keeps exploring hard at 100 pulls (about half of
    # random's regret); Thompson sampling is far greedier (about a quarter).
    for name, ratio in (("ucb", 0.6), ("thompson", 0.35)):
        regret, _ = jax_regret(name, env, tasks)
        total = regret[:, -1].mean()
        assert total < ratio * random_regret, (name, total, random_regret)
        per_pull = np.diff(regret, axis=1, prepend=0).mean(0)
        assert per_pull[-20:].mean() < 0.6 * per_pull[:20].mean(), (name, per_pull)


def test_random_regret_is_gap_to_mean(env, tasks):
    regret, history = jax_regret("random", env, tasks)
    means = np.asarray(tasks.means)
    expected = (means.max(1) - means.mean(1)).mean() * NUM_PULLS
    measured = regret[:, -1].mean()
    print(f"random: mean regret {measured:.3f}, expected (max - mean) * 100 = {expected:.3f}")
    # Per task the regret sums 100 i.i.d. terms of sd <= 1/2: SE of the mean < 0.12 here.
    assert abs(measured - expected) < 0.03 * expected
    action = np.asarray(history.action).ravel()
    freqs = np.bincount(action, minlength=NUM_ARMS) / action.size
    np.testing.assert_allclose(freqs, 1 / NUM_ARMS, atol=0.01)


def test_egreedy_sanity(env, tasks):
    means = np.asarray(tasks.means)
    random_regret = (means.max(1) - means.mean(1)).mean() * NUM_PULLS
    greedy_ish, _ = jax_regret("egreedy", env, tasks, epsilon=0.1)
    assert greedy_ish[:, -1].mean() < 0.5 * random_regret
    # Decaying from 1 towards 0.1 over the whole history explores more than constant 0.1 ...
    decayed, history = jax_regret("egreedy", env, tasks, epsilon=0.1, decay_fraction=1.0)
    assert decayed[:, -1].mean() > greedy_ish[:, -1].mean()
    # ... so early on it pulls the best arm less often.
    best = np.asarray(tasks.means).argmax(1)[:, None]
    _, constant_history = jax_regret("egreedy", env, tasks, epsilon=0.1)
    early_best_decayed = (np.asarray(history.action[:, 5:25]) == best).mean()
    early_best_constant = (np.asarray(constant_history.action[:, 5:25]) == best).mean()
    assert early_best_decayed < early_best_constant - 0.1


def test_egreedy_epsilon_schedule():
    config = bandits.EGreedyConfig(num_steps=100, epsilon=0.2, decay_fraction=0.5)
    eps = [float(bandits.egreedy_epsilon(config, jnp.float32(t))) for t in (0, 25, 50, 99)]
    np.testing.assert_allclose(eps, [1.0, 0.6, 0.2, 0.2], rtol=1e-6)
    constant = bandits.EGreedyConfig(num_steps=100, epsilon=0.3)
    assert float(bandits.egreedy_epsilon(constant, jnp.float32(0))) == pytest.approx(0.3)


# ---- UCB1 on a hand-made deterministic reward sequence -----------------------------------------
@struct.dataclass
class TableParams:
    rewards: jax.Array  # (K, T) float32, reward of the n-th pull of each arm


@struct.dataclass
class TableState:
    pulls: jax.Array  # (K,) int32, pulls of each arm so far


@dataclasses.dataclass(frozen=True)
class TableBandit(Environment):
    """Arm a's n-th pull pays rewards[a, n]; every pull terminates (a bandit episode)."""

    name: ClassVar[str] = "table-bandit"
    num_arms: int = 2

    @property
    def num_actions(self):
        return self.num_arms

    def observation_spec(self):
        return ArraySpec((1,), jnp.int32, 1)

    def reset_env(self, key, params):
        return jnp.zeros((1,), jnp.int32), TableState(jnp.zeros(self.num_arms, jnp.int32))

    def step(self, key, state, action, params):
        # Overrides the auto-reset on purpose: the per-arm pull counters must survive the
        # end of each one-pull episode for the reward table to be read in order.
        reward = params.rewards[action, state.pulls[action]]
        state = TableState(state.pulls.at[action].add(1))
        return jnp.zeros((1,), jnp.int32), state, reward, jnp.bool_(True), jnp.bool_(False), {}


def test_ucb_hand_trace():
    # Arm 0 pays 1 then 0s; arm 1 pays 0 then 1s.
    rewards = np.zeros((2, 16), np.float32)
    rewards[0, 0] = 1.0
    rewards[1, 1:] = 1.0
    params = TableParams(jnp.asarray(rewards))
    env = TableBandit()
    # Hand trace with c = 1 (index = mean + sqrt(2 ln n / n_a), n = pulls so far):
    # n=0: both untried -> arm 0 (r=1).  n=1: arm 1 untried -> arm 1 (r=0).
    # n=2: 1 + sqrt(2 ln2 / 1) = 2.18 vs 0 + 1.18      -> arm 0 (r=0)
    # n=3: 1/2 + sqrt(2 ln3 / 2) = 1.55 vs sqrt(2 ln3) = 1.48 -> arm 0 (r=0)
    # n=4: 1/3 + sqrt(2 ln4 / 3) = 1.29 vs sqrt(2 ln4) = 1.67 -> arm 1 (r=1)
    # n=5: 1/3 + sqrt(2 ln5 / 3) = 1.37 vs 1/2 + sqrt(2 ln5 / 2) = 1.77 -> arm 1 (r=1)
    # n=6: 1/3 + sqrt(2 ln6 / 3) = 1.43 vs 2/3 + sqrt(2 ln6 / 3) = 1.76 -> arm 1
    # n=7: 1/3 + sqrt(2 ln7 / 3) = 1.47 vs 3/4 + sqrt(2 ln7 / 4) = 1.74 -> arm 1
    train = bandits.make_ucb(env, bandits.UCBConfig(num_steps=8, c=1.0))
    history = jax.jit(train)(jax.random.key(0), params)
    np.testing.assert_array_equal(history.action, [0, 1, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(history.reward, [1, 0, 0, 0, 1, 1, 1, 1])
    # c = 0 is greedy after the initial round: arm 0's mean (1, 1/2, 1/3, ...) stays
    # above arm 1's 0 forever.
    greedy = bandits.make_ucb(env, bandits.UCBConfig(num_steps=8, c=0.0))
    greedy_actions = jax.jit(greedy)(jax.random.key(0), params).action
    np.testing.assert_array_equal(greedy_actions, [0, 1] + [0] * 6)


def test_ucb_index_values():
    stats = bandits.ArmStats(jnp.array([2.0, 1.0, 0.0]), jnp.array([1.0, 1.0, 0.0]))
    index = np.asarray(bandits.ucb_index(stats, 0.5))
    n = 3.0  # pulls so far
    expected = [0.5 + 0.5 * np.sqrt(2 * np.log(n) / 2), 1.0 + 0.5 * np.sqrt(2 * np.log(n) / 1)]
    np.testing.assert_allclose(index[:2], expected, rtol=1e-6)
    assert index[2] == np.inf


# ---- the source interface and the helpers --------------------------------------------------------
@pytest.mark.parametrize("name", ["ucb", "thompson", "egreedy", "random"])
def test_source_interface(env, tasks, name):
    source = source_agents.get(name)
    config = source.Config(num_steps=7)
    assert dataclasses.is_dataclass(config) and config.num_steps == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_steps = 3
    _, history = jax_regret(name, env, tasks, **({"epsilon": 0.1} if name == "egreedy" else {}))
    assert isinstance(history, source_agents.LearningHistory)
    assert history.obs.shape == (NUM_TASKS, NUM_PULLS, 1)
    assert history.action.shape == (NUM_TASKS, NUM_PULLS) and history.action.dtype == jnp.int32
    assert history.reward.dtype == jnp.float32
    assert bool(history.terminated.all()) and not bool(history.truncated.any())
    assert int(history.action.min()) >= 0 and int(history.action.max()) < NUM_ARMS
    # Rewards are the Bernoulli draws of the pulled arms: always 0 or 1.
    assert set(np.unique(history.reward)) <= {0.0, 1.0}


def test_pull_rewards_and_pseudo_regret(env):
    keys = jax.random.split(jax.random.key(5), 3)
    params = jax.vmap(lambda k: env.sample_params(k, "test"))(keys)
    config = bandits.UCBConfig(num_steps=9)
    rewards = bandits.pull_rewards(bandits.ucb, env, config, jax.random.key(6), params)
    train = bandits.make_ucb(env, config)
    direct = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(6), 3), params)
    np.testing.assert_array_equal(rewards, direct.reward)
    regret = bandits.pseudo_regret(jnp.array([[0.1, 0.7, 0.4]]), jnp.array([[0, 1, 2, 1]]))
    np.testing.assert_allclose(regret, [[0.6, 0.0, 0.3, 0.0]], rtol=1e-6)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="num_steps"):
        bandits.UCBConfig(num_steps=0)
    with pytest.raises(ValueError, match="c"):
        bandits.UCBConfig(c=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        bandits.EGreedyConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="decay_fraction"):
        bandits.EGreedyConfig(decay_fraction=2.0)
    with pytest.raises(ValueError, match="prior_alpha"):
        bandits.ThompsonConfig(prior_alpha=0.0)
    with pytest.raises(ValueError, match="UCBConfig"):
        bandits.make_ucb(envs.make("bernoulli-bandit"), bandits.ThompsonConfig())
