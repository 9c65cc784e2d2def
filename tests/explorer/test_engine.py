"""The explorer's computations against the library they stand on (no browser).

Every number the page shows comes from ``ModelSession``; these tests check it equals what
``ad.model`` / ``ad.hooks`` / ``ad.interp`` compute directly for the same stream (edited,
ablated, patched), that the shortcuts it takes (padding to buckets, a window for the inside
view, a truncated prompt for continuing) change nothing, and the reference agents by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ad import hooks
from ad.evaluate import ad_rollout
from ad.interp import streams
from ad.interp.cache import run_with_cache
from ad.interp.explorer import engine

_forward = jax.jit(hooks.run_with_hooks, static_argnums=1)
from ad.interp.streams import Stream
from source_agents.history import LearningHistory


def library_policy(session, stream, edits=None):
    """The library's softmax policy over ``stream`` + the query step, unpadded."""
    q = session.with_query(stream)
    # jitted (one compile per length) rather than op by op: the same library forward
    logits = _forward(session.model.params, session.config,
                      streams.to_inputs(q, session.config), edits)
    return np.asarray(jax.nn.softmax(logits[0], -1))


@pytest.fixture(scope="module")
def stream(session):
    return session.rollout(task=3, episodes=10, seed=1)  # 200 steps, as the page's


def test_rollout_is_ad_rollout_and_policy_is_the_library_forward(session, stream):
    assert stream.action.shape == (1, 200) and stream.done[0, 19::20].all()
    assert stream.done[0].sum() == 10
    p = session.policy(stream)
    assert p.shape == (201, 5)
    np.testing.assert_allclose(p, library_policy(session, stream), atol=2e-6)
    # the recorded rollout policy (decode with the KV cache) agrees step by step
    r = ad_rollout(session.model.params, session.config, session.env, session.task(3),
                   jax.random.fold_in(jax.random.PRNGKey(1), 0), 200, record_policy=True,
                   hooks=engine.Ablation.none(session.config).interventions(session.config))
    np.testing.assert_array_equal(np.asarray(r.action), stream.action)
    np.testing.assert_allclose(np.asarray(r.policy)[0], p[:200], atol=2e-5)


@pytest.mark.parametrize("op,args", [
    ("flip_reward", {"t": 100}), ("delete_reward", {"t": 55}),
    ("set_reward", {"t": 7, "value": 1.0}), ("move_goal", {"goal": [1, 7]}),
    ("drop_episode", {"episode": 2}), ("duplicate_episode", {"episode": 1}),
    ("splice_random", {"episode": 4, "seed": 2}),
    ("splice_drawn", {"episode": 0, "cells": [[4, 3], [3, 3], [3, 2]]}),
])
def test_edits_are_the_streams_edits_and_their_policy_the_library_one(session, stream, op, args):
    edited = session.edit(stream, op, 3, **args)
    if op == "flip_reward":
        want = streams.set_reward(stream, 0, 100, 1.0 - stream.reward[0, 100])
    elif op == "delete_reward":
        want = streams.set_reward(stream, 0, 55, 0.0)
    elif op == "set_reward":
        want = streams.set_reward(stream, 0, 7, 1.0)
    elif op == "move_goal":
        want = streams.move_goal(stream, np.array([1, 7]), session.env)
    elif op == "drop_episode":
        want = Stream(*(np.asarray(x)[:, :180] for x in streams.drop_episode(stream, 2).stream))
    elif op == "duplicate_episode":  # the copy is kept whole: 11 episodes, 220 steps
        s = stream
        want = Stream(*(np.concatenate([np.asarray(x)[:, :40], np.asarray(x)[:, 20:40],
                                        np.asarray(x)[:, 40:]], 1) for x in s))
    else:
        want = None
    if want is not None:
        for a, b in zip(edited, want):
            np.testing.assert_array_equal(a, b)
    assert edited.done[0, -1] and edited.action.shape[1] % 20 == 0
    if op != "move_goal":  # a lived Dark Room stream: moves follow the env, rewards its goal
        goal = np.asarray(session.tasks.goal)[3]
        np.testing.assert_array_equal(streams.move_goal(edited, goal, session.env).reward,
                                      edited.reward if op not in ("flip_reward", "delete_reward",
                                                                  "set_reward") else
                                      stream.reward)
    if op in ("splice_random", "splice_drawn"):  # the other episodes are untouched
        k = args["episode"]
        keep = np.ones(200, bool)
        keep[20 * k:20 * k + 20] = False
        np.testing.assert_array_equal(edited.action[0, keep], stream.action[0, keep])
    if op == "splice_drawn":
        np.testing.assert_array_equal(edited.obs[0, :4], [[4, 4], [4, 3], [3, 3], [3, 2]])
        np.testing.assert_array_equal(edited.action[0, :4], [4, 2, 4, 0])
    np.testing.assert_allclose(session.policy(edited), library_policy(session, edited),
                               atol=2e-6)


def test_inside_window_equals_the_full_forward(session, stream):
    """The window (last reach steps) gives the full forward's logits; DLA sums to them; the
    last lens row is them; the attention rows are distributions over the visible steps."""
    cfg = session.config
    full = hooks.run_with_hooks(session.model.params, cfg,
                                streams.to_inputs(session.with_query(stream), cfg))[0]
    for t in (5, 80, 200):
        r = session.inside(stream, t)
        np.testing.assert_allclose(r.probs, jax.nn.softmax(full[t]), atol=1e-5)
        np.testing.assert_allclose(r.dla.sum(0), full[t], atol=1e-4)
        np.testing.assert_allclose(r.lens[-1], full[t], atol=1e-4)
        assert r.patterns.shape[:2] == (cfg.num_layers, cfg.num_heads)
        # the band: the c steps up to t, each row a distribution over them
        assert r.patterns.shape[-1] == min(cfg.context, t + 1)
        assert r.window_start == t + 1 - r.patterns.shape[-1]
        np.testing.assert_allclose(r.patterns.sum(-1), 1.0, atol=1e-5)


def test_ablation_equals_library_ablation(session, stream):
    cfg = session.config
    ab = engine.Ablation.parse(cfg, heads=[[1, 0]], mlps=[0])
    edits = {"blocks.1.attn.hook_z": hooks.ablate("blocks.1.attn.hook_z", cfg, heads=[0]),
             "blocks.0.hook_mlp_out": hooks.ablate("blocks.0.hook_mlp_out", cfg)}
    want = library_policy(session, stream, edits)
    got = session.policy(stream, ab)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.abs(got - session.policy(stream)).max() > 1e-3  # it does something
    r = session.inside(stream, 200, ab)
    np.testing.assert_allclose(r.probs, want[200], atol=1e-5)
    # the DLA shown is the library's, of the ablated run
    q = session.with_query(stream)
    _, cache = run_with_cache(session.model.params, cfg, streams.to_inputs(q, cfg), hooks_=edits)
    dla, labels = cache.dla(2)
    assert labels == r.dla_labels
    np.testing.assert_allclose(r.dla[:, 2], np.asarray(dla)[:, 0, 200], atol=1e-4)
    # an empty ablation is the plain forward bit for bit
    np.testing.assert_array_equal(session.policy(stream, engine.Ablation.none(cfg)),
                                  session.policy(stream))


def test_patch_from_a_second_context(session, stream):
    """Patching every head and MLP at the step from the donor gives the donor's policy
    there when the two contexts differ only before it... and patching from the stream
    itself changes nothing."""
    cfg = session.config
    all_on = engine.Ablation(np.ones((cfg.num_layers, cfg.num_heads), bool),
                             np.ones(cfg.num_layers, bool))
    edited = session.edit(stream, "flip_reward", 3, t=190)
    same = session.inside(edited, 195, all_on, donor=edited)
    np.testing.assert_allclose(same.probs, session.policy(edited)[195], atol=1e-5)
    patched = session.inside(edited, 195, all_on, donor=stream)
    # every component's write at step 195 comes from the clean run; the embedding of the
    # step itself is the same in both (the flip is at 190), so the residual is the clean one
    np.testing.assert_allclose(patched.probs, session.policy(stream)[195], atol=1e-5)
    assert np.abs(session.policy(edited)[195] - session.policy(stream)[195]).max() > 1e-4


def test_continue_feeds_only_the_reach_and_matches_the_full_context(session, stream):
    """Continuing feeds only the last ``reach`` steps as the prompt, yet the policy it
    samples from at every new step is the library forward over the *whole* new stream."""
    assert session.reach < 200
    cont = session.rollout(3, 2, seed=5, prompt=stream)
    assert cont.action.shape == (1, 240) and cont.done[0, 219] and cont.done[0, 239]
    for a, b in zip(cont, stream):
        np.testing.assert_array_equal(np.asarray(a)[:, :200], b)
    # the recorded policy of the rollout's new steps, through the explorer's own ad_rollout
    # call (same key): rerun it to read the policy the actions were sampled from
    keep = slice(200 - session.reach, 200)
    hist = LearningHistory(obs=jnp.asarray(stream.obs[:, keep]),
                           action=jnp.asarray(stream.action[:, keep]),
                           reward=jnp.asarray(stream.reward[:, keep]),
                           terminated=jnp.zeros((1, session.reach), bool),
                           truncated=jnp.asarray(stream.done[:, keep]))
    r = ad_rollout(session.model.params, session.config, session.env, session.task(3),
                   jax.random.fold_in(jax.random.PRNGKey(5), 200), 40, prompt=hist,
                   record_policy=True,
                   hooks=engine.Ablation.none(session.config).interventions(session.config))
    np.testing.assert_array_equal(np.asarray(r.action), cont.action[:, 200:])
    np.testing.assert_allclose(np.asarray(r.policy)[0], library_policy(session, cont)[200:240],
                               atol=2e-5)


def test_darkroom_reference_by_hand():
    """Start at the centre knowing nothing: the centre and its four neighbours are all
    untested, so staying and the four moves tie; once the centre paid nothing, the four
    moves; a paid cell is the goal: head back to it."""
    obs = np.array([[4, 4], [4, 4], [5, 4], [6, 4], [6, 4]])
    action = np.array([0, 1, 1, 0, 2])
    reward = np.array([0, 0, 1, 1, 0], np.float32)
    s = Stream(obs[None], action[None], reward[None], np.zeros((1, 5), bool))
    p = engine.darkroom_reference(s, 9)
    np.testing.assert_allclose(p[0], [.2, .2, .2, .2, .2], atol=1e-7)
    np.testing.assert_array_equal(p[1], [0, .25, .25, .25, .25])
    np.testing.assert_allclose(p[2], [0, 1 / 3, 0, 1 / 3, 1 / 3], atol=1e-7)  # (4,4), (5,4) out
    np.testing.assert_array_equal(p[3], [1, 0, 0, 0, 0])  # on the goal (6,4): stay
    np.testing.assert_array_equal(p[4], [1, 0, 0, 0, 0])
    # on the goal against the top wall, "up" stays too: the two share the probability
    s = Stream(np.array([[[4, 4], [4, 3], [4, 2], [4, 1], [4, 0], [4, 0]]]),
               np.array([[4, 4, 4, 4, 0, 0]]), np.array([[0, 0, 0, 1, 1, 0]], np.float32),
               np.zeros((1, 6), bool))
    p = engine.darkroom_reference(s, 9)
    # at (4,3), itself ruled out (the move there paid nothing): its 4 neighbours, (4,4) too
    np.testing.assert_array_equal(p[1], [0, .25, .25, .25, .25])
    np.testing.assert_array_equal(p[4], [.5, 0, 0, 0, .5])


def test_ucb1_reference_is_the_source_exactly():
    """On a UCB1 learning history, the reference puts probability 1 on every action UCB1
    took (the source is deterministic given the rewards)."""
    import envs
    import source_agents

    env = envs.make("bernoulli-bandit")
    src = source_agents.get("ucb")
    cfg = source_agents.make_config(src, "bernoulli-bandit", num_steps=60)
    task = env.sample_params(jax.random.PRNGKey(4), "test")
    hist = jax.jit(src.make_train(env, cfg))(jax.random.PRNGKey(5), task)
    s = Stream.from_history(hist)
    p = engine.ucb1_policy(s, 5, c=cfg.c)
    np.testing.assert_array_equal(p.argmax(-1), s.action[0])
    assert np.all(p.max(-1) == 1.0)


def test_bad_input_is_refused_with_a_clear_error(session, stream):
    with pytest.raises(ValueError, match="episode 12 does not exist"):
        session.edit(stream, "drop_episode", 3, episode=12)
    with pytest.raises(ValueError, match="unknown edit 'paint'"):
        session.edit(stream, "paint", 3)
    with pytest.raises(ValueError, match="not adjacent"):
        session.edit(stream, "splice_drawn", 3, episode=0, cells=[[6, 6]])
    with pytest.raises(ValueError, match="head \\[5, 0\\] outside"):
        engine.Ablation.parse(session.config, heads=[[5, 0]])
    with pytest.raises(ValueError, match="must end with a finished episode"):
        session.rollout(3, 1, prompt=Stream(*(np.asarray(x)[:, :30] for x in stream)))
    with pytest.raises(ValueError, match="shapes"):
        engine.stream_from_json({"obs": [[1, 2]], "action": [0, 1], "reward": [0],
                                 "done": [True]}, session.config)
