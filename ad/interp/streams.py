"""RL streams as analysis objects: what a learner lived, edits to it, and position selectors.

A ``Stream`` is a batch of learners' steps as lived: at step ``t`` of row ``b`` the agent
saw ``obs[b, t]``, took ``action[b, t]`` and got ``reward[b, t]``; ``done[b, t]`` says the
step ended an episode (terminated or truncated), so step ``t + 1`` starts the next episode
of the same task (the envs auto-reset). The model reads a stream through the one input
builder (``to_inputs`` -> ``ad.inputs.stream_inputs``): at step ``t`` it sees ``obs[t]``
and the record of step ``t - 1``.

Three kinds of tools:

* **Teacher-forced edits** (pure, NumPy in and out): change what a stream says before the
  input builder reads it — a reward set, all rewards zeroed / flipped / shuffled / frozen
  at the first episode's, an episode dropped, duplicated or spliced in from another
  stream, the goal of a Dark Room stream moved (rewards recomputed by the env's own move
  rule). Replay the edited stream with ``ADTransformer`` over ``to_inputs(edited)``.
* **Closed-loop feedback edits** (``ZeroRewards``, ``FlipRewards``, ``ShuffledRewards``,
  ``FrozenRewards``) for ``ad.evaluate.ad_rollout(..., feedback=...)``: the env and the
  returned record stay true, only what the model reads of the previous step is altered,
  so an in-context learning curve can be measured under the edit. Each is the closed-loop
  twin of a teacher-forced edit: teacher-forcing the rollout's own (true) stream edited
  by the twin gives the rollout's policy (``tests/interp/test_streams.py``).
* **Selectors**: ``episode_index``, ``step_in_episode``, ``select`` (steps by episode,
  step in episode, reward, cell, previous action) and ``token_positions`` (a step mask as
  the mask of the tokens that predict those steps' actions), for caches, patching and
  probes.

Nothing in ``ad`` outside ``ad.interp`` imports this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad.config import ModelConfig
from ad.inputs import Previous, StepInputs, stream_inputs

PyTree = Any


# ----------------------------------------------------------------------------------------
# Streams
# ----------------------------------------------------------------------------------------
class Stream(NamedTuple):
    """A batch of streams of steps as lived, leading dims (B, T)."""

    obs: PyTree  # leaves (B, T, *obs_shape) int: what the agent saw before acting
    action: np.ndarray  # (B, T) int32
    reward: np.ndarray  # (B, T) float32: what the step that took action[t] returned
    done: np.ndarray  # (B, T) bool: the step ended an episode (terminated or truncated)

    @classmethod
    def from_history(cls, history) -> "Stream":
        """From a ``LearningHistory`` (leaves (T, ...) for one, (B, T, ...) for a batch)."""
        action = np.asarray(history.action)
        one = action.ndim == 1
        lift = (lambda x: np.asarray(x)[None]) if one else np.asarray  # noqa: E731
        return cls(obs=jax.tree.map(lambda o: lift(o).astype(np.int32), history.obs),
                   action=lift(action).astype(np.int32),
                   reward=lift(history.reward).astype(np.float32),
                   done=lift(np.logical_or(np.asarray(history.terminated),
                                           np.asarray(history.truncated))))

    @classmethod
    def from_rollout(cls, rollout) -> "Stream":
        """From an ``ad.evaluate.Rollout`` (leaves (N, S)); it must carry the observations,
        i.e. come from ``ad_rollout(..., record_policy=True)``."""
        if rollout.obs is None:
            raise ValueError("Stream.from_rollout: the rollout has no observations; run "
                             "ad_rollout(..., record_policy=True)")
        return cls(obs=jax.tree.map(lambda o: np.asarray(o).astype(np.int32), rollout.obs),
                   action=np.asarray(rollout.action).astype(np.int32),
                   reward=np.asarray(rollout.reward).astype(np.float32),
                   done=np.asarray(rollout.done).astype(bool))


class Padded(NamedTuple):
    """An edited stream whose rows may end early: ``valid`` (B, T) marks the real steps.

    Padding is at the right end of a row (zero obs, action 0, reward 0, done False). The
    model is causal, so padding never changes the logits of the real steps: read
    ``logits[valid]``, or pass ``valid`` to the forward."""

    stream: Stream
    valid: np.ndarray  # (B, T) bool


def to_inputs(stream: Stream, config: ModelConfig) -> StepInputs:
    """The model's inputs for whole streams (each row starts its stream), built by the one
    input builder (``ad.inputs.stream_inputs``)."""
    return stream_inputs(stream.obs, stream.action, stream.reward, stream.done, config)


def _np(stream: Stream) -> Stream:
    """A host copy with the canonical dtypes (edits never alias their input)."""
    return Stream(obs=jax.tree.map(lambda o: np.array(o, np.int32), stream.obs),
                  action=np.array(stream.action, np.int32),
                  reward=np.array(stream.reward, np.float32),
                  done=np.array(stream.done, bool))


def _shape(stream: Stream) -> tuple[int, int]:
    action = np.asarray(stream.action)
    if action.ndim != 2:
        raise ValueError(f"a Stream's action must be (B, T), got shape {action.shape}")
    return action.shape


# ----------------------------------------------------------------------------------------
# Selectors
# ----------------------------------------------------------------------------------------
def episode_index(stream: Stream) -> np.ndarray:
    """(B, T) int: the episode each step belongs to (0-based; = episode ends before it)."""
    done = np.asarray(stream.done, bool)
    return (np.cumsum(done, axis=-1) - done).astype(np.int64)


def step_in_episode(stream: Stream) -> np.ndarray:
    """(B, T) int: steps since the episode started (0 at the episode's first step)."""
    done = np.asarray(stream.done, bool)
    B, T = done.shape
    starts = np.concatenate([np.ones((B, 1), bool), done[:, :-1]], axis=1)
    t = np.broadcast_to(np.arange(T), (B, T))
    # the index of the latest start at or before t, by a running maximum
    last_start = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
    return (t - last_start).astype(np.int64)


_step_in_episode = step_in_episode  # select() takes a keyword of the same name


def _isin(values: np.ndarray, wanted) -> np.ndarray:
    return np.isin(values, np.atleast_1d(np.asarray(wanted)))


def select(stream: Stream, *, episode=None, step_in_episode=None, rewarded=None,
           cell=None, after_action=None) -> np.ndarray:
    """(B, T) bool: the steps that meet every given criterion (ANDed; None = any).

    - ``episode``: an episode index or a list of them (``episode_index``).
    - ``step_in_episode``: a step within the episode or a list (``step_in_episode``).
    - ``rewarded``: True = steps whose own ``reward[t] > 0``; False = ``reward[t] <= 0``.
    - ``cell``: steps whose observation equals ``cell`` (array observations only; e.g. a
      Dark Room (x, y) pair).
    - ``after_action``: steps whose *previous step in the stream* took this action (what
      the model reads as ``prev_action``; across episode boundaries too). Never the first
      step of a row, which has no previous action.
    """
    B, T = _shape(stream)
    mask = np.ones((B, T), bool)
    if episode is not None:
        mask &= _isin(episode_index(stream), episode)
    if step_in_episode is not None:
        mask &= _isin(_step_in_episode(stream), step_in_episode)
    if rewarded is not None:
        r = np.asarray(stream.reward) > 0
        mask &= r if rewarded else ~r
    if cell is not None:
        if not isinstance(stream.obs, np.ndarray | jax.Array):
            raise ValueError("select(cell=...): needs array observations, got a "
                             f"{type(stream.obs).__name__}")
        obs = np.asarray(stream.obs)
        cell = np.asarray(cell)
        if cell.shape != obs.shape[2:]:
            raise ValueError(f"select: cell {cell.tolist()} has shape {cell.shape}, "
                             f"observations are {obs.shape[2:]}")
        mask &= np.all(obs.reshape(B, T, -1) == cell.reshape(-1), axis=-1)
    if after_action is not None:
        prev = np.concatenate([np.full((B, 1), -1), np.asarray(stream.action)[:, :-1]], 1)
        mask &= prev == after_action
    return mask


def token_positions(mask, config: ModelConfig) -> np.ndarray:
    """A (B, T) step mask as a (B, T*K) token mask (K = ``config.tokens_per_step``): True
    at token ``t*K + K-1`` — the token whose output predicts ``action[t]`` — for every
    selected step ``t``. Index a "pos"-axis activation (B, N, ...) with it;
    ``np.nonzero`` gives the (row, token) pairs."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"token_positions: the step mask must be (B, T), got {mask.shape}")
    K = config.tokens_per_step
    out = np.zeros((mask.shape[0], mask.shape[1] * K), bool)
    out[:, K - 1::K] = mask
    return out


# ----------------------------------------------------------------------------------------
# Teacher-forced edits (NumPy)
# ----------------------------------------------------------------------------------------
def set_reward(stream: Stream, b: int, t: int, value: float) -> Stream:
    """The stream with ``reward[b, t] = value`` (read by the model at step ``t + 1``)."""
    B, T = _shape(stream)
    if not (0 <= b < B and 0 <= t < T):
        raise ValueError(f"set_reward: (b, t) = ({b}, {t}) is outside the stream (B, T) = "
                         f"({B}, {T})")
    out = _np(stream)
    out.reward[b, t] = value
    return out


def zero_rewards(stream: Stream) -> Stream:
    """Every reward 0: the context shows the moves but never what they paid."""
    return _np(stream)._replace(reward=np.zeros(_shape(stream), np.float32))


def flip_rewards(stream: Stream, max_reward: float = 1.0) -> Stream:
    """``r -> max_reward - r``. For 0/1 rewards (Bernoulli bandits, Dark Room) the default
    gives ``1 - r``: paying steps read 0 and every other step reads 1 (in Dark Room every
    step off the goal then looks paid)."""
    out = _np(stream)
    return out._replace(reward=(np.float32(max_reward) - out.reward).astype(np.float32))


def shuffle_rewards(stream: Stream, seed: int = 0) -> Stream:
    """Each row's rewards permuted among its own steps (seeded; rows independently, in
    order, from ``np.random.default_rng(seed)``): the same reward totals, no link between
    a reward and the move that earned it."""
    out = _np(stream)
    rng = np.random.default_rng(seed)
    for b in range(out.reward.shape[0]):
        out.reward[b] = out.reward[b, rng.permutation(out.reward.shape[1])]
    return out


def freeze_rewards(stream: Stream) -> Stream:
    """Every episode after the first reads the first episode's rewards: step ``s`` of a
    later episode gets the first episode's reward at step ``s``, 0 beyond the first
    episode's length. The first episode is unchanged (per row)."""
    out = _np(stream)
    ep, s = episode_index(stream), step_in_episode(stream)
    for b in range(out.reward.shape[0]):
        first = out.reward[b, ep[b] == 0]
        later = ep[b] > 0
        k = s[b, later]
        out.reward[b, later] = np.where(k < len(first), first[np.minimum(k, len(first) - 1)],
                                        0.0)
    return out


def _episodes(stream: Stream, b: int) -> list[np.ndarray]:
    """The step indices of each episode of row ``b`` (a trailing partial one included)."""
    ep = episode_index(stream)[b]
    return [np.flatnonzero(ep == e) for e in range(int(ep[-1]) + 1)]


def _check_episode(name: str, k: int, episodes: list, b: int):
    if not 0 <= k < len(episodes):
        raise ValueError(f"{name}: episode {k} does not exist in row {b} "
                         f"(it has {len(episodes)} episodes, 0..{len(episodes) - 1})")


def _take_rows(stream: Stream, rows: list[list[tuple[Stream, int, np.ndarray]]]) -> Padded:
    """Row ``b`` of the result is the concatenation of the parts ``rows[b]``, each
    ``(source stream, its row, step indices)``, cut at T or right-padded to T."""
    B, T = _shape(stream)
    out = Stream(obs=jax.tree.map(lambda o: np.zeros(np.shape(o), np.int32), stream.obs),
                 action=np.zeros((B, T), np.int32),
                 reward=np.zeros((B, T), np.float32), done=np.zeros((B, T), bool))
    valid = np.zeros((B, T), bool)
    for b, parts in enumerate(rows):
        pos = 0
        for src, row, idx in parts:
            idx = idx[:max(T - pos, 0)]
            n = len(idx)
            jax.tree.map(lambda o, s: o.__setitem__((b, slice(pos, pos + n)), s[row, idx]),
                         out.obs, jax.tree.map(np.asarray, src.obs))
            out.action[b, pos:pos + n] = np.asarray(src.action)[row, idx]
            out.reward[b, pos:pos + n] = np.asarray(src.reward)[row, idx]
            out.done[b, pos:pos + n] = np.asarray(src.done)[row, idx]
            pos += n
        valid[b, :pos] = True
    return Padded(out, valid)


def drop_episode(stream: Stream, k: int) -> Padded:
    """Episode ``k`` removed from every row: later steps shift left and the row is
    right-padded to its length (``Padded.valid`` marks the real steps)."""
    B, T = _shape(stream)
    rows = []
    for b in range(B):
        eps = _episodes(stream, b)
        _check_episode("drop_episode", k, eps, b)
        rows.append([(stream, b, idx) for e, idx in enumerate(eps) if e != k])
    return _take_rows(stream, rows)


def duplicate_episode(stream: Stream, k: int) -> Stream:
    """Episode ``k`` lived twice in a row in every row (the copy right after it): later
    steps shift right and the row is cut at its length T."""
    B, T = _shape(stream)
    rows = []
    for b in range(B):
        eps = _episodes(stream, b)
        _check_episode("duplicate_episode", k, eps, b)
        if not np.asarray(stream.done)[b, eps[k][-1]]:
            raise ValueError(f"duplicate_episode: episode {k} of row {b} is the unfinished "
                             f"last one; a copy of it would not start a new episode")
        parts = [(stream, b, idx) for idx in eps[:k + 1]] + [(stream, b, eps[k])]
        rows.append(parts + [(stream, b, idx) for idx in eps[k + 1:]])
    return _take_rows(stream, rows).stream


def splice_episode(stream: Stream, k: int, donor: Stream, j: int) -> Padded:
    """Episode ``k`` of every row replaced by episode ``j`` of the same row of ``donor``
    (e.g. an episode lived on another task). With episodes of equal length (Dark Room) the
    rows keep their steps; otherwise later steps shift and the row is cut at T or
    right-padded (``Padded.valid``)."""
    B, T = _shape(stream)
    if _shape(donor)[0] != B:
        raise ValueError(f"splice_episode: donor has {_shape(donor)[0]} rows, stream {B}")
    rows = []
    for b in range(B):
        eps, d_eps = _episodes(stream, b), _episodes(donor, b)
        _check_episode("splice_episode", k, eps, b)
        _check_episode("splice_episode (donor)", j, d_eps, b)
        rows.append([(stream, b, idx) if e != k else (donor, b, d_eps[j])
                     for e, idx in enumerate(eps)])
    return _take_rows(stream, rows)


def move_goal(stream: Stream, goal, env) -> Stream:
    """A Dark Room-family stream (``env``: ``envs.darkroom.DarkRoom`` or ``DarkRoomHard``)
    with its goal moved to ``goal`` ((2,) or (B, 2) int (x, y)): the same moves, rewards
    recomputed by the env's rule for the new goal.

    The cell a move ends on is ``envs.darkroom.move(obs[t], action[t])`` — the env's own
    move rule — not ``obs[t + 1]``: at the last step of an episode (``done[t]``) the env
    has auto-reset and ``obs[t + 1]`` is the next episode's start, and the last step of a
    stream has no ``obs[t + 1]``. Within an episode ``obs[t + 1]`` must equal it (checked:
    a stream that does not follow Dark Room's moves is refused). Dark Room pays 1 for
    every step whose move ends on the goal; Dark Room Hard only for the first such step of
    an episode (``env.pay_once``). Observations, actions and episode ends are unchanged:
    a Dark Room episode lasts ``horizon`` steps wherever the goal is.
    """
    from envs.darkroom import MOVES, DarkRoom  # envs is below ad: a plain dependency

    if not isinstance(env, DarkRoom):
        raise ValueError(f"move_goal: needs a Dark Room-family env, got {env!r}")
    B, T = _shape(stream)
    obs = np.asarray(stream.obs)
    if obs.shape != (B, T, 2):
        raise ValueError(f"move_goal: Dark Room observations are (B, T, 2) cells, got "
                         f"{obs.shape}")
    goal = np.broadcast_to(np.asarray(goal, np.int32), (B, 2))
    if goal.min() < 0 or goal.max() >= env.size:
        raise ValueError(f"move_goal: goal {goal.tolist()} outside the {env.size}x{env.size} "
                         f"room")
    action = np.asarray(stream.action)
    done = np.asarray(stream.done, bool)
    # the env's move rule (envs.darkroom.move, in NumPy: the wall clips the move)
    after = np.clip(obs + MOVES[action], 0, env.size - 1)
    within = ~done[:, :-1]
    if not np.array_equal(after[:, :-1][within], obs[:, 1:][within]):
        b, t = np.argwhere(within & np.any(after[:, :-1] != obs[:, 1:], -1))[0]
        raise ValueError(f"move_goal: row {b} step {t}: obs {obs[b, t].tolist()} + action "
                         f"{action[b, t]} ends on {after[b, t].tolist()}, but the next "
                         f"observation is {obs[b, t + 1].tolist()} (not a Dark Room stream)")
    on_goal = np.all(after == goal[:, None], axis=-1)
    if env.pay_once:  # paid only at the first arrival of each episode
        ep = episode_index(stream)
        first = np.zeros_like(on_goal)
        for b in range(B):
            for e in np.unique(ep[b]):
                hits = np.flatnonzero(on_goal[b] & (ep[b] == e))
                if hits.size:
                    first[b, hits[0]] = True
        on_goal = first
    return _np(stream)._replace(reward=on_goal.astype(np.float32))


# ----------------------------------------------------------------------------------------
# Closed-loop feedback edits (ad_rollout(..., feedback=...))
# ----------------------------------------------------------------------------------------
# Protocol (ad.evaluate.ad_rollout): ``init(n) -> state`` once, then at step ``t`` of the
# rollout ``(state, prev_seen) = feedback(state, prev, t)``, where ``prev`` is the true
# record of step ``t - 1`` (the stream-start record at ``t = 0``) and ``prev_seen`` is what
# the model reads instead. Frozen dataclasses: they are static jit arguments (hashable).
def _fresh(prev: Previous, t) -> jax.Array:
    """(n,) bool: ``prev`` describes a real step (t >= 1), not the stream-start record."""
    return jnp.broadcast_to(jnp.asarray(t) >= 1, jnp.shape(prev.reward))


@dataclasses.dataclass(frozen=True)
class ZeroRewards:
    """The model reads reward 0 for every step (closed-loop ``zero_rewards``)."""

    def init(self, n: int):
        return ()

    def __call__(self, state, prev: Previous, t):
        return state, prev._replace(reward=jnp.zeros_like(prev.reward))


@dataclasses.dataclass(frozen=True)
class FlipRewards:
    """The model reads ``max_reward - r`` for every real step (closed-loop
    ``flip_rewards``; 1 - r for 0/1 rewards). The stream-start record keeps its 0, as
    ``flip_rewards`` + the input builder give: the first step has no previous reward."""

    max_reward: float = 1.0

    def init(self, n: int):
        return ()

    def __call__(self, state, prev: Previous, t):
        flipped = jnp.where(_fresh(prev, t), self.max_reward - prev.reward, prev.reward)
        return state, prev._replace(reward=flipped.astype(prev.reward.dtype))


@dataclasses.dataclass(frozen=True)
class ShuffledRewards:
    """The model reads, for step ``t - 1``, the true reward of a uniformly drawn step ``j``
    of the same stream so far, ``j ~ U{0, ..., t-1}`` (the just-finished step included):
    the rewards it reads are the stream's own, detached from the moves that earned them.
    Closed loop cannot permute rewards not yet received, so this resamples the past (with
    replacement); ``shuffle_rewards`` is the teacher-forced permutation.

    Draws are deterministic: stream ``b`` at step ``t`` uses
    ``fold_in(fold_in(key(seed), b), t)``, independent of the number of streams;
    ``source_steps`` gives the same draws on the host (for teacher-forced twins). The
    state keeps the first ``capacity`` rewards; past that, draws come from those.
    """

    seed: int = 0
    capacity: int = 1024

    def init(self, n: int):
        return jnp.zeros((n, self.capacity), jnp.float32)

    def draw(self, t, n: int) -> jax.Array:
        """(n,) int32: the step each stream's reward is read from at rollout step ``t``
        (meaningful for t >= 1: the record of step ``t - 1``)."""
        base = jax.random.key(self.seed)
        high = jnp.clip(t, 1, self.capacity)
        return jax.vmap(lambda b: jax.random.randint(
            jax.random.fold_in(jax.random.fold_in(base, b), t), (), 0, high))(
                jnp.arange(n)).astype(jnp.int32)

    def source_steps(self, n: int, num_steps: int) -> np.ndarray:
        """(n, num_steps) int: entry ``[b, t]`` = the step whose true reward the model
        reads in place of ``reward[b, t]`` (drawn at rollout step ``t + 1``)."""
        return np.asarray(jax.vmap(lambda t: self.draw(t, n), out_axes=1)(
            jnp.arange(1, num_steps + 1)))

    def __call__(self, state, prev: Previous, t):
        n = state.shape[0]
        # record the true reward of step t-1 (dropped once past capacity or at t = 0)
        slot = jnp.where(t >= 1, t - 1, self.capacity)
        state = state.at[:, slot].set(prev.reward, mode="drop")
        j = self.draw(t, n)
        seen = jnp.take_along_axis(state, j[:, None], axis=1)[:, 0]
        seen = jnp.where(_fresh(prev, t), seen, prev.reward)
        return state, prev._replace(reward=seen.astype(prev.reward.dtype))


class _FrozenState(NamedTuple):
    first: jax.Array  # (n, capacity) float32: the first episode's rewards by step
    episode: jax.Array  # (n,) int32: the episode of the next step to be read
    step: jax.Array  # (n,) int32: its step within that episode


@dataclasses.dataclass(frozen=True)
class FrozenRewards:
    """Every episode after the first reads the first episode's rewards (closed-loop
    ``freeze_rewards``): for step ``s`` of a later episode the model reads the reward of
    step ``s`` of the stream's first episode, 0 beyond that episode's length (or beyond
    ``capacity``, which must cover it for an exact twin). The first episode reads true
    rewards."""

    capacity: int = 1024

    def init(self, n: int):
        return _FrozenState(jnp.zeros((n, self.capacity), jnp.float32),
                            jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32))

    def __call__(self, state: _FrozenState, prev: Previous, t):
        fresh = _fresh(prev, t)
        rows = jnp.arange(state.first.shape[0])
        in_first = fresh & (state.episode == 0)
        # write the first episode's rewards (elsewhere: an out-of-range slot, dropped)
        slot = jnp.where(in_first, state.step, self.capacity)
        first = state.first.at[rows, slot].set(prev.reward, mode="drop")
        frozen = first.at[rows, state.step].get(mode="fill", fill_value=0.0)
        seen = jnp.where(fresh & (state.episode > 0), frozen, prev.reward)
        done = prev.done.astype(bool)
        episode = jnp.where(fresh & done, state.episode + 1, state.episode)
        step = jnp.where(fresh, jnp.where(done, 0, state.step + 1), state.step)
        return (_FrozenState(first, episode.astype(jnp.int32), step.astype(jnp.int32)),
                prev._replace(reward=seen.astype(prev.reward.dtype)))
