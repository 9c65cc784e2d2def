"""ad.interp.streams: edits checked against hand-computed streams and env replays,
selectors against Python loops, closed-loop feedback edits inside a real ``ad_rollout``
against teacher-forcing their twins through the full forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad import evaluate as ev
from ad.inputs import shift_stream
from ad.interp import streams as S
from envs.darkroom import DarkRoomParams
from tests.helpers import forward, params_for

# Two rows, 8 steps, episodes of 3, 3 and 2 steps (the last one unfinished).
DONE = np.array([[0, 0, 1, 0, 0, 1, 0, 0]] * 2, bool)
REWARD = np.array([[0, 1, 1, 0, 0, 0, 1, 0],
                   [1, 0, 0, 0, 1, 1, 0, 1]], np.float32)


def hand_stream() -> S.Stream:
    obs = np.arange(2 * 8 * 2, dtype=np.int32).reshape(2, 8, 2)
    action = np.array([[0, 1, 2, 3, 4, 0, 1, 2], [4, 3, 2, 1, 0, 4, 3, 2]], np.int32)
    return S.Stream(obs, action, REWARD.copy(), DONE.copy())


def test_reward_edits_match_hand_computed_values():
    s = hand_stream()
    e = S.set_reward(s, 1, 2, 5.0)
    assert e.reward[1, 2] == 5.0 and s.reward[1, 2] == 0.0  # pure: the input is untouched
    np.testing.assert_array_equal(np.delete(e.reward.ravel(), 10), np.delete(REWARD.ravel(), 10))
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        S.set_reward(s, 2, 0, 1.0)
    assert not S.zero_rewards(s).reward.any()
    np.testing.assert_array_equal(S.flip_rewards(s).reward, 1 - REWARD)
    np.testing.assert_array_equal(S.flip_rewards(s, 3.0).reward, 3 - REWARD)
    sh = S.shuffle_rewards(s, seed=4)
    rng = np.random.default_rng(4)
    for b in range(2):  # each row permuted on its own, rows drawn in order
        np.testing.assert_array_equal(sh.reward[b], REWARD[b, rng.permutation(8)])
    # frozen: episodes 1 and 2 read episode 0's rewards step by step (it has 3 steps)
    np.testing.assert_array_equal(S.freeze_rewards(s).reward,
                                  [[0, 1, 1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 0, 0, 1, 0]])
    # a first episode shorter than a later one: 0 beyond its length
    short = s._replace(done=np.array([[1, 0, 0, 0, 0, 0, 0, 0]] * 2, bool))
    frozen = S.freeze_rewards(short).reward  # episode 1's step 0 reads step 0, then 0
    np.testing.assert_array_equal(frozen[:, :2], REWARD[:, [0, 0]])
    np.testing.assert_array_equal(frozen[:, 2:], 0)


def test_episode_edits_match_hand_computed_values():
    s = hand_stream()
    p = S.drop_episode(s, 1)  # steps 3-5 removed: steps 0,1,2,6,7 then two padded
    keep = [0, 1, 2, 6, 7]
    np.testing.assert_array_equal(p.valid, [[1] * 5 + [0] * 3] * 2)
    np.testing.assert_array_equal(p.stream.reward[:, :5], REWARD[:, keep])
    np.testing.assert_array_equal(p.stream.obs[:, :5], s.obs[:, keep])
    np.testing.assert_array_equal(p.stream.done[:, :5], DONE[:, keep])
    np.testing.assert_array_equal(p.stream.action[:, 5:], 0)
    d = S.duplicate_episode(s, 0)  # episode 0 twice, then episode 1, cut at 8 steps
    order = [0, 1, 2, 0, 1, 2, 3, 4]
    for f in ("obs", "action", "reward", "done"):
        np.testing.assert_array_equal(getattr(d, f), getattr(s, f)[:, order])
    np.testing.assert_array_equal(S.episode_index(d)[0], [0, 0, 0, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="unfinished"):
        S.duplicate_episode(s, 2)
    with pytest.raises(ValueError, match="episode 3 does not exist in row 0"):
        S.drop_episode(s, 3)
    donor = S.flip_rewards(s)._replace(obs=s.obs + 100)
    sp = S.splice_episode(s, 1, donor, 0)  # equal lengths: every step stays in place
    assert sp.valid.all()
    src = [s, s, s, donor, donor, donor, s, s]
    idx = [0, 1, 2, 0, 1, 2, 6, 7]
    np.testing.assert_array_equal(sp.stream.reward,
                                  np.stack([src[i].reward[:, j] for i, j in enumerate(idx)], 1))
    np.testing.assert_array_equal(sp.stream.obs[:, 3:6], donor.obs[:, 0:3])
    sp2 = S.splice_episode(s, 0, donor, 2)  # a 2-step episode for a 3-step one: padded
    np.testing.assert_array_equal(sp2.valid[0], [1] * 7 + [0])
    np.testing.assert_array_equal(sp2.stream.reward[:, :7],
                                  np.concatenate([donor.reward[:, 6:8], REWARD[:, 3:8]], 1))


def test_selectors_match_a_python_loop():
    rng = np.random.default_rng(0)
    B, T = 3, 200
    s = S.Stream(rng.integers(0, 3, (B, T, 2)).astype(np.int32),
                 rng.integers(0, 5, (B, T)).astype(np.int32),
                 (rng.random((B, T)) < 0.3).astype(np.float32), rng.random((B, T)) < 0.2)
    ep, k = np.zeros((B, T), int), np.zeros((B, T), int)
    for b in range(B):
        e = j = 0
        for t in range(T):
            ep[b, t], k[b, t] = e, j
            e, j = (e + 1, 0) if s.done[b, t] else (e, j + 1)
    np.testing.assert_array_equal(S.episode_index(s), ep)
    np.testing.assert_array_equal(S.step_in_episode(s), k)
    got = S.select(s, episode=[1, 2], step_in_episode=0, rewarded=False)
    np.testing.assert_array_equal(got, np.isin(ep, [1, 2]) & (k == 0) & (s.reward <= 0))
    got = S.select(s, rewarded=True, cell=(1, 2), after_action=3)
    want = np.zeros((B, T), bool)
    for b in range(B):
        for t in range(T):
            want[b, t] = (s.reward[b, t] > 0 and tuple(s.obs[b, t]) == (1, 2)
                          and t > 0 and s.action[b, t - 1] == 3)
    np.testing.assert_array_equal(got, want)
    assert want.any()

    @dataclasses.dataclass(frozen=True)
    class Oar:
        tokens_per_step: int = 3
    tok = S.token_positions(want, Oar())
    assert sorted(zip(*np.nonzero(tok))) == [(b, 3 * t + 2) for b, t in zip(*np.nonzero(want))]


def _replay(env, goals, actions):
    """Obs and rewards of the env stepped through ``actions`` on tasks with ``goals``."""
    def one(goal, acts):
        params = DarkRoomParams(goal=goal)
        obs0, state0 = env.reset(jax.random.key(0), params)

        def body(c, a):
            obs, state = c
            nobs, nstate, r, term, trunc, _ = env.step(jax.random.key(0), state, a, params)
            return (nobs, nstate), (obs, r, jnp.logical_or(term, trunc))
        return jax.lax.scan(body, (obs0, state0), acts)[1]
    return [np.asarray(x) for x in jax.vmap(one)(jnp.asarray(goals), jnp.asarray(actions))]


# ---- closed loop: a tiny model acting in a short-horizon Dark Room ------------------------
ENV = envs.make("darkroom", horizon=5)
GOALS = np.array([[4, 3], [5, 4], [4, 4]], np.int32)  # near the centre start: rewards happen
STEPS = 24


@pytest.fixture(scope="module")
def model(tiny_config):
    config = tiny_config(num_layers=1, num_heads=1)
    params = params_for(config)  # weights made large enough that every input moves the logits
    params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.key(1), p.shape),
                          params)
    return config, params


def rollout(model, feedback=None):
    config, params = model
    return ev.ad_rollout(params, config, ENV, DarkRoomParams(goal=jnp.asarray(GOALS)),
                         jax.random.key(2), STEPS, record_policy=True, feedback=feedback)


@pytest.fixture(scope="module")
def plain(model):
    return rollout(model)


def teacher_forced(model, stream):
    config, params = model
    return np.asarray(jax.nn.softmax(forward(config, params)(S.to_inputs(stream, config))))


def test_move_goal_equals_an_env_replay(plain):
    s = S.Stream.from_rollout(plain)
    assert s.done.sum() == 3 * (STEPS // 5) and s.reward.sum() > 0
    np.testing.assert_array_equal(S.move_goal(s, GOALS, ENV).reward, s.reward)  # same goal
    cells, counts = np.unique(s.obs.reshape(-1, 2), axis=0, return_counts=True)
    new = cells[np.argsort(counts)[-2]]  # a much-visited cell other than the start
    moved = S.move_goal(s, new, ENV)
    obs, want, _ = _replay(ENV, np.broadcast_to(new, GOALS.shape), s.action)
    np.testing.assert_array_equal(obs, s.obs)
    np.testing.assert_array_equal(moved.reward, want)
    assert want.sum() > 0 and not np.array_equal(want, s.reward)
    # Dark Room Hard pays only the first arrival of an episode (random moves, many arrivals)
    hard = envs.make("darkroom-hard", size=5, horizon=6)
    acts = np.random.default_rng(0).integers(0, 5, (4, 30))
    obs, rew, done = _replay(hard, np.full((4, 2), 2), acts)  # goal = the start cell
    hs = S.Stream(obs, acts.astype(np.int32), rew, done)
    for goal in ([2, 1], [3, 2], [0, 0]):
        np.testing.assert_array_equal(S.move_goal(hs, goal, hard).reward,
                                      _replay(hard, np.full((4, 2), goal), acts)[1])
    with pytest.raises(ValueError, match="not a Dark Room stream"):
        S.move_goal(hs._replace(action=np.zeros_like(hs.action)), [1, 1], hard)


def _seen_rewards(feedback, stream: S.Stream) -> np.ndarray:
    """The protocol ad_rollout runs, step by step over a given stream: (B, T) the reward
    the model reads at each step."""
    prev = shift_stream(*(jnp.asarray(x) for x in stream), num_actions=5)
    state, out = feedback.init(stream.action.shape[0]), []
    for t in range(stream.action.shape[1]):  # eager: cheaper than compiling for 24 steps
        state, seen = feedback(state, jax.tree.map(lambda x: x[:, t], prev), jnp.int32(t))
        out.append(np.asarray(seen.reward))
    return np.stack(out, 1)


def test_flip_feedback_reads_what_flip_rewards_gives(plain):
    """The protocol run step by step (the closed-loop test below covers the other edits
    through the model; this one is cheap to check exactly)."""
    s = S.Stream.from_rollout(plain)
    want = shift_stream(*S.flip_rewards(s), num_actions=5).reward
    assert want[:, 0].tolist() == [0, 0, 0]  # the stream start has no reward to flip
    np.testing.assert_array_equal(_seen_rewards(S.FlipRewards(), s), want)
    src = S.ShuffledRewards(seed=3).source_steps(3, STEPS)
    assert (src <= np.arange(STEPS)).all() and len(np.unique(src)) > STEPS // 2


class Unchanged:
    """A feedback that passes the record through (hashable by identity)."""

    def init(self, n):
        return jnp.zeros((n,))

    def __call__(self, state, prev, t):
        return state + 1.0, prev


def test_feedback_in_closed_loop_equals_teacher_forcing_the_edited_stream(model, plain):
    same = rollout(model, Unchanged())
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    true_policy = lambda r: teacher_forced(model, S.Stream.from_rollout(r))  # noqa: E731
    np.testing.assert_allclose(plain.policy, true_policy(plain), atol=1e-5)
    shuffled = S.ShuffledRewards(seed=3, capacity=64)
    edits = [(S.ZeroRewards(), S.zero_rewards),
             (S.FrozenRewards(capacity=8), S.freeze_rewards),
             (shuffled, lambda s: s._replace(reward=np.take_along_axis(
                 s.reward, shuffled.source_steps(3, STEPS), 1)))]
    for feedback, twin in edits:
        r = rollout(model, feedback)
        s = S.Stream.from_rollout(r)
        # the record stays the env's: rewards are the true ones for the moves made
        np.testing.assert_array_equal(s.reward, S.move_goal(s, GOALS, ENV).reward)
        assert s.reward.sum() > 0, feedback
        np.testing.assert_allclose(r.policy, teacher_forced(model, twin(s)), atol=1e-5,
                                   err_msg=str(feedback))
        assert np.abs(np.asarray(r.policy) - true_policy(r)).max() > 1e-3, feedback


def test_streams_from_histories_and_rollouts_and_their_errors(plain):
    from source_agents.history import LearningHistory

    s = S.Stream.from_rollout(plain)
    h = LearningHistory(s.obs[0], s.action[0], s.reward[0], np.zeros(STEPS, bool), s.done[0])
    one = S.Stream.from_history(h)
    for a, b in zip(one, s):
        np.testing.assert_array_equal(a, b[:1])
    with pytest.raises(ValueError, match="record_policy=True"):
        S.Stream.from_rollout(plain._replace(obs=None))
