"""Shared test helpers."""

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
