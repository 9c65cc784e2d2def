"""Shared test helpers."""

import functools

import jax
import numpy as np


def assert_history_replays(env, tasks, hist):
    """Replaying the recorded actions through ``env.step`` reproduces obs, rewards, flags.

    Only for envs whose dynamics ignore the key (Dark Room family), so any key replays.
    """

    def replay(params, actions):
        obs0, state0 = env.reset(jax.random.key(0), params)

        def body(c, a):
            obs, state = c
            nobs, nstate, r, term, trunc, _ = env.step(jax.random.key(0), state, a, params)
            return (nobs, nstate), (obs, r, term, trunc)

        return jax.lax.scan(body, (obs0, state0), actions)[1]

    obs, r, term, trunc = jax.jit(jax.vmap(replay))(tasks, hist.action)
    np.testing.assert_array_equal(obs, hist.obs)
    np.testing.assert_array_equal(r, hist.reward)
    np.testing.assert_array_equal(term, hist.terminated)
    np.testing.assert_array_equal(trunc, hist.truncated)


# ---- tiny AD models (tests/ad) ----------------------------------------------------------
def random_stream(seed: int, B: int, T: int, num_actions: int = 5, size: int = 9):
    """A random Dark Room-shaped (obs, action, reward) window, host-side (no compiles)."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, size, (B, T, 2)).astype(np.int32)
    action = rng.integers(0, num_actions, (B, T)).astype(np.int32)
    reward = (rng.random((B, T)) < 0.4).astype(np.float32)
    return obs, action, reward


def random_inputs(seed: int, B: int, T: int, num_actions: int = 5):
    """``StepInputs`` of a random stream that starts at step 0 (host-side)."""
    from ad.inputs import StepInputs

    obs, action, reward = random_stream(seed, B, T, num_actions)
    prev_action = np.concatenate([np.full((B, 1), num_actions), action[:, :-1]], 1)
    prev_reward = np.concatenate([np.zeros((B, 1)), reward[:, :-1]], 1)
    return StepInputs(obs, prev_action.astype(np.int32), prev_reward.astype(np.float32))


def with_episode_starts(inputs, seed: int):
    """The same inputs with random episode boundaries (the first step starts one)."""
    B, T = inputs.prev_action.shape
    start = np.random.default_rng(seed).random((B, T)) < 0.15
    start[:, 0] = True
    return inputs._replace(episode_start=start)


def with_prev_obs(inputs):
    """The same inputs with prev_obs = obs[t-1] (zeros at the stream start)."""
    obs = np.asarray(inputs.obs)
    return inputs._replace(prev_obs=np.concatenate([np.zeros_like(obs[:, :1]), obs[:, :-1]], 1))


@functools.lru_cache(maxsize=None)
def params_for(cfg):
    """Fresh parameters of ``cfg`` (key 0), shared by every test that uses the config."""
    from ad.model import init_params

    return init_params(cfg, jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _jitted_forward(cfg):
    from ad.model import ADTransformer

    model = ADTransformer(cfg)

    @jax.jit
    def f(params, inp, valid=None, rng=None):
        if rng is None:
            return model.apply({"params": params}, inp, train=False, valid=valid)
        return model.apply({"params": params}, inp, train=True, rngs={"dropout": rng})

    return f


def forward(cfg, params):
    """A jitted forward (optionally with a valid mask or a dropout key), shared across
    tests with the same config so equal shapes compile once."""
    f = _jitted_forward(cfg)
    return lambda inp, valid=None, rng=None: f(params, inp, valid, rng)
