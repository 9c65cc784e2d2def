"""The source at the matched stage (experiments.study.matched): the stage rule by hand,
and the matched policy is each step's own snapshot applied to its observation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import envs
from experiments.study.matched import matched_log_probs, stage_updates
from source_agents import ppo


def test_stage_updates_by_hand():
    # source: episodes of 3 steps, 4 steps per update; model: episodes of 2 steps
    source_done = np.array([[0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]], bool)
    done = np.array([[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]], bool)
    # model episode e -> source episode e starts at step 3e -> update 3e // 4; e >= 4 -> last (9 // 4)
    expected = np.repeat([0 // 4, 3 // 4, 6 // 4, 9 // 4, 9 // 4, 9 // 4], 2)
    np.testing.assert_array_equal(stage_updates(source_done, 4, done), expected[None])


def test_matched_log_probs_apply_each_steps_own_snapshot():
    """Against a Python loop over rows and steps (that the snapshots are the parameters the
    source acted with is tests/source_agents/test_ppo.py's internals/snapshots test)."""
    env = envs.make("darkroom", size=5, horizon=8)
    config = ppo.Config(num_steps=128, rollout_len=32, encoding="joint", hidden_sizes=())
    apply = jax.jit(ppo.make_apply(env, config))
    net = ppo.ActorCritic(env.num_actions, (), config.activation, config.shared_torso)
    dim = ppo.make_encoder(env, config.encoding).dim
    rng = np.random.default_rng(0)
    one = net.init(jax.random.PRNGKey(0), jnp.zeros((dim,)))
    snaps = jax.tree.map(lambda x: np.asarray(x) + rng.normal(size=(2, 3) + x.shape).astype(np.float32), one)
    obs = rng.integers(0, 5, (2, 7, 2)).astype(np.int32)
    updates = rng.integers(0, 3, (2, 7))
    got = matched_log_probs(apply, snaps, updates, obs)
    for b in range(2):
        for t in range(7):
            want = apply(jax.tree.map(lambda x: x[b, updates[b, t]], snaps), obs[b, t])[0]
            np.testing.assert_allclose(got[b, t], want, atol=1e-6)
