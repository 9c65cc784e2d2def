"""Reference agents: what a known algorithm would do on a stream, step by step.

Each agent is a frozen dataclass (hashable: a static jit argument) with one interface:

* ``init(n) -> state`` for ``n`` streams;
* ``values(state, obs) -> (n, A)``: the agent's action values at this step (its own
  quantities: UCB1's indices, a greedy agent's empirical means, the goal-posterior
  agent's negative distances; ``-inf`` never appears: untried arms are large and finite);
* ``update(state, obs, action, reward, done) -> state``: what the agent learns from a step
  (the step's observation, action, reward and episode end).

Two uses, by the same code: ``along_stream(agent, stream)`` scans a recorded stream (a
model's, a source's) and returns the agent's values at every step — the agent "run on the
same stream", for fingerprints — (``states_along``: its state before every step, the
labels of probes) and ``agent_rollout`` lets the agent act in
an env (argmax of its values, ties broken uniformly at random), one jitted scan vmapped
over tasks like ``ad.evaluate.policy_rollout``.

Bandits (the rewards are in [0, 1]; the state is ``source_agents.bandits.ArmStats``):
``UCB1`` (``source_agents.bandits.ucb_index``: the source's own arithmetic), ``Thompson``
(Beta(1, 1) posteriors; its values are log action probabilities), ``Gittins`` (the
Bayes-optimal index for a stated discount, ``gittins_table``), ``BayesBandit2`` (the exact
finite-horizon Bayes policy of a 2-armed bandit, ``bayes2_table``), ``Greedy`` (empirical
means, untried arms first) and ``Uniform`` (the floor). Dark Room:
``GoalPosterior``, the exact Bayes agent for a goal that is uniform over the cells not yet
ruled out: a step that ends on a cell and pays 0 rules that cell out, a step that pays
reveals the goal; it walks a shortest path to the goal once it is known, otherwise to the
nearest cell not ruled out (a systematic explorer that never revisits by choice).

``darkroom_optimal_actions`` is the set of shortest-path actions towards a known goal,
which is also the goal-posterior agent's choice once the goal is found.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from source_agents.bandits import ArmStats, ucb_index

PyTree = Any

# An untried arm's value for agents whose own value would be +inf (UCB1, greedy): large
# and finite so that softmax(values / T) stays defined, and above any mean in [0, 1] plus
# UCB1's bonus over any realistic stream (sqrt(2 ln n) < 10 for n < 5e21).
UNTRIED = 1e3


# ----------------------------------------------------------------------------------------
# Bandits
# ----------------------------------------------------------------------------------------
def _update_stats(stats: ArmStats, obs, action, reward, done) -> ArmStats:
    onehot = jax.nn.one_hot(action, stats.counts.shape[-1], dtype=jnp.float32)
    return ArmStats(stats.counts + onehot,
                    stats.sums + onehot * jnp.asarray(reward, jnp.float32)[..., None])


@dataclasses.dataclass(frozen=True)
class UCB1:
    """UCB1 with exploration scale ``c`` (the bandit source's index, ``ucb_index``)."""

    num_arms: int
    c: float = 1.0

    def init(self, n: int) -> ArmStats:
        return ArmStats(jnp.zeros((n, self.num_arms)), jnp.zeros((n, self.num_arms)))

    def values(self, state: ArmStats, obs) -> jax.Array:
        index = jax.vmap(lambda c, s: ucb_index(ArmStats(c, s), self.c))(state.counts,
                                                                         state.sums)
        return jnp.where(jnp.isinf(index), UNTRIED, index)

    update = staticmethod(_update_stats)


@dataclasses.dataclass(frozen=True)
class Greedy:
    """Pure exploitation: the empirical mean of each arm, untried arms first."""

    num_arms: int

    def init(self, n: int) -> ArmStats:
        return ArmStats(jnp.zeros((n, self.num_arms)), jnp.zeros((n, self.num_arms)))

    def values(self, state: ArmStats, obs) -> jax.Array:
        mean = state.sums / jnp.maximum(state.counts, 1.0)
        return jnp.where(state.counts == 0, UNTRIED, mean)

    update = staticmethod(_update_stats)


@dataclasses.dataclass(frozen=True)
class Thompson:
    """Thompson sampling with independent Beta(1, 1) priors (the ``thompson`` source). It is
    a stochastic policy: its values are the log-probabilities of each arm being the
    largest posterior draw, estimated from ``samples`` draws (a fixed key per step, so the
    values are deterministic given the stream); ``softmax(values)`` is its policy."""

    num_arms: int
    samples: int = 1024

    def init(self, n: int) -> ArmStats:
        return ArmStats(jnp.zeros((n, self.num_arms)), jnp.zeros((n, self.num_arms)))

    def values(self, state: ArmStats, obs) -> jax.Array:
        alpha, beta = 1.0 + state.sums, 1.0 + state.counts - state.sums  # (n, K)
        key = jax.random.fold_in(jax.random.key(0), state.counts.sum().astype(jnp.int32))
        draws = jax.random.beta(key, alpha, beta, (self.samples,) + alpha.shape)  # (S, n, K)
        freq = jax.nn.one_hot(draws.argmax(-1), self.num_arms).mean(0)  # (n, K)
        return jnp.log(freq + 0.5 / self.samples)  # never -inf: half a draw's mass

    update = staticmethod(_update_stats)


@functools.lru_cache(maxsize=8)
def gittins_table(discount: float, max_pulls: int = 128, depth: int = 256,
                  grid: int = 4001) -> np.ndarray:
    """Gittins indices of a Bernoulli arm with a Beta(a, b) posterior, ``table[a, b]`` for
    ``a, b >= 1``, ``a + b - 2 <= max_pulls`` (NaN elsewhere), by calibration: the index is
    the smallest retirement reward ``lam`` per step (on a grid of ``grid`` values in
    [0, 1]) at which retiring forever, ``lam / (1 - discount)``, is worth as much as
    pulling once more and continuing optimally. The dynamic program runs backwards from
    ``depth`` pulls, where the continuation is taken as retiring at the better of ``lam``
    and the posterior mean (error below ``discount ** depth``)."""
    if not 0 < discount < 1:
        raise ValueError(f"gittins_table: discount must be in (0, 1), got {discount}")
    lam = np.linspace(0.0, 1.0, grid)[:, None]  # (G, 1)
    retire = lam / (1 - discount)
    table = np.full((max_pulls + 2, max_pulls + 2), np.nan)
    # states at n pulls: a = 1 .. n + 1 successes + 1, b = n + 2 - a
    a = np.arange(1, depth + 2)
    p = a / (depth + 2)
    value = np.maximum(retire, np.maximum(lam, p[None]) / (1 - discount))  # (G, depth + 1)
    for n in range(depth - 1, -1, -1):
        a = np.arange(1, n + 2)
        p = (a / (n + 2))[None]
        cont = p * (1 + discount * value[:, 1:n + 2]) + (1 - p) * discount * value[:, :n + 1]
        if n <= max_pulls:
            stop = retire >= cont  # (G, n + 1): retiring is optimal at this lam
            index = lam[stop.argmax(0), 0]
            table[a, n + 2 - a] = index
        value = np.maximum(retire, cont)
    return table


@dataclasses.dataclass(frozen=True)
class Gittins:
    """The Bayes-optimal index policy for discounted Bernoulli bandits (Beta(1, 1) priors):
    each arm's Gittins index at the stated ``discount`` (``gittins_table``)."""

    num_arms: int
    discount: float = 0.9

    def init(self, n: int) -> ArmStats:
        return ArmStats(jnp.zeros((n, self.num_arms)), jnp.zeros((n, self.num_arms)))

    def values(self, state: ArmStats, obs) -> jax.Array:
        table = jnp.asarray(gittins_table(self.discount), jnp.float32)
        a = (1 + state.sums).astype(jnp.int32)
        b = (1 + state.counts - state.sums).astype(jnp.int32)
        return table[a, b]

    update = staticmethod(_update_stats)


def _level_offsets(horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the states of ``bayes2_table`` lie in its flat table: level ``n`` (pulls made)
    starts at ``start[n]``; in it, arm 1's ``m1`` pulls start at ``start[n] + within[n, m1]``
    and the state ``(s1, s2)`` (successes) follows at ``s1 * (n - m1 + 1) + s2``."""
    within = np.zeros((horizon + 1, horizon + 2), np.int64)
    for n in range(horizon + 1):
        m1 = np.arange(n + 1)
        within[n, 1:n + 2] = np.cumsum((m1 + 1) * (n - m1 + 1))
    size = within[np.arange(horizon + 1), np.arange(horizon + 1) + 1]  # C(n + 3, 3)
    start = np.concatenate([[0], np.cumsum(size)])
    return start, within


@functools.lru_cache(maxsize=4)
def bayes2_table(horizon: int) -> np.ndarray:
    """(states, 2) float32: the Bayes-optimal Q-value of each arm of a 2-armed Bernoulli
    bandit with independent Beta(1, 1) priors and ``horizon`` pulls in all, in every state
    ``(s1, f1, s2, f2)`` with ``n = s1 + f1 + s2 + f2 < horizon`` pulls made: the expected
    total reward of the remaining ``horizon - n`` pulls when this arm is pulled now and the
    best arm after. The exact finite-horizon dynamic program, backwards one level ``n`` at a
    time; a level is a dense cube over ``(m1, s1, s2)`` (arm 1's pulls and each arm's
    successes; ``m2 = n - m1``) so successors are slices of the next level's cube. Layout:
    ``_level_offsets`` (``C(horizon + 3, 4)`` states: 4.4 million for 100 pulls, 35 MB)."""
    if horizon < 1:
        raise ValueError(f"bayes2_table: horizon must be >= 1, got {horizon}")
    start, _ = _level_offsets(horizon)
    table = np.empty((start[horizon], 2), np.float32)
    value = np.zeros((horizon + 1,) * 3)  # level horizon: nothing left to earn
    for n in range(horizon - 1, -1, -1):
        m1, s1, s2 = np.ogrid[:n + 1, :n + 1, :n + 1]
        p1, p2 = (1 + s1) / (2 + m1), (1 + s2) / (2 + n - m1)  # posterior means
        # next level (n + 1), indexed [m1', s1', s2']: arm 1 moves m1 (and s1 on a success),
        # arm 2 moves only s2 (its m2 = n + 1 - m1 grows with the level)
        q1 = p1 * (1 + value[1:n + 2, 1:n + 2, :n + 1]) + (1 - p1) * value[1:n + 2, :n + 1, :n + 1]
        q2 = p2 * (1 + value[:n + 1, :n + 1, 1:n + 2]) + (1 - p2) * value[:n + 1, :n + 1, :n + 1]
        valid = (s1 <= m1) & (s2 <= n - m1)  # lexicographic (m1, s1, s2): the flat layout
        table[start[n]:start[n + 1]] = np.stack([q1[valid], q2[valid]], -1)
        value = np.maximum(q1, q2)
    return table


@dataclasses.dataclass(frozen=True)
class BayesBandit2:
    """The exact Bayes-optimal policy of a 2-armed Bernoulli bandit with Beta(1, 1) priors
    and ``horizon`` pulls (undiscounted): its values are each arm's Q-value, the expected
    total reward still to come (``bayes2_table``). Past the horizon only the next pull
    counts: the posterior means."""

    num_arms: int = 2
    horizon: int = 100

    def __post_init__(self):
        if self.num_arms != 2:
            raise ValueError(f"BayesBandit2: 2 arms only (the dynamic program's state), got "
                             f"{self.num_arms}")

    def init(self, n: int) -> ArmStats:
        return ArmStats(jnp.zeros((n, 2)), jnp.zeros((n, 2)))

    def values(self, state: ArmStats, obs) -> jax.Array:
        start, within = (jnp.asarray(x) for x in _level_offsets(self.horizon))
        m = state.counts.astype(jnp.int32)
        s = state.sums.astype(jnp.int32)  # Bernoulli rewards: the successes
        n = m.sum(-1)
        inside = n < self.horizon
        nc = jnp.minimum(n, self.horizon - 1)
        m1 = jnp.minimum(m[:, 0], nc)
        idx = start[nc] + within[nc, m1] + s[:, 0] * (nc - m1 + 1) + jnp.minimum(s[:, 1], nc - m1)
        q = jnp.asarray(bayes2_table(self.horizon))[jnp.where(inside, idx, 0)]
        mean = (1 + state.sums) / (2 + state.counts)
        return jnp.where(inside[:, None], q, mean)

    update = staticmethod(_update_stats)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Every action equally good (its argmax with random ties is the uniform policy)."""

    num_actions: int

    def init(self, n: int):
        return jnp.zeros((n,), jnp.int32)  # no knowledge; a leaf so the state has a batch

    def values(self, state, obs) -> jax.Array:
        return jnp.zeros((state.shape[0], self.num_actions), jnp.float32)

    def update(self, state, obs, action, reward, done):
        return state


# ----------------------------------------------------------------------------------------
# Dark Room
# ----------------------------------------------------------------------------------------
_MOVES = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], np.int32)  # envs.darkroom.MOVES


def _after_moves(pos: jax.Array, size: int) -> jax.Array:
    """(..., 5, 2): the cell each action from ``pos`` (..., 2) ends on (the wall clips)."""
    return jnp.clip(pos[..., None, :] + jnp.asarray(_MOVES), 0, size - 1)


def darkroom_optimal_actions(pos, goal, size: int) -> jax.Array:
    """(..., 5) bool: the actions on a shortest path from ``pos`` to ``goal`` (both (..., 2)
    cells): a move that brings the Manhattan distance down by one, or the no-op on the
    goal. Several are optimal when both coordinates differ."""
    pos, goal = jnp.asarray(pos), jnp.asarray(goal)
    d_next = jnp.abs(_after_moves(pos, size) - goal[..., None, :]).sum(-1)  # (..., 5)
    return d_next == d_next.min(-1, keepdims=True)


class GoalBelief(NamedTuple):
    """The goal posterior of Dark Room: uniform over the cells not ruled out, or known."""

    ruled_out: jax.Array  # (n, size * size) bool: a step ended there and paid 0
    goal: jax.Array  # (n, 2) int32: the goal, once a step paid (else (0, 0), unread)
    known: jax.Array  # (n,) bool


@dataclasses.dataclass(frozen=True)
class GoalPosterior:
    """The exact goal-posterior agent of Dark Room (module docstring). Its values are
    ``-distance`` after each move: to the goal once known, else to the nearest cell not
    ruled out (so its argmax is a shortest path there)."""

    size: int = 9

    def init(self, n: int) -> GoalBelief:
        cells = self.size * self.size
        return GoalBelief(jnp.zeros((n, cells), bool), jnp.zeros((n, 2), jnp.int32),
                          jnp.zeros((n,), bool))

    def values(self, state: GoalBelief, obs) -> jax.Array:
        after = _after_moves(jnp.asarray(obs, jnp.int32), self.size)  # (n, 5, 2)
        to_goal = jnp.abs(after - state.goal[:, None]).sum(-1)  # (n, 5)
        xs, ys = jnp.meshgrid(jnp.arange(self.size), jnp.arange(self.size), indexing="xy")
        cells = jnp.stack([xs.ravel(), ys.ravel()], -1)  # (C, 2), cell index = y * size + x
        d = jnp.abs(after[:, :, None] - cells[None, None]).sum(-1)  # (n, 5, C)
        d = jnp.where(state.ruled_out[:, None], 4 * self.size, d)
        to_open = d.min(-1)
        return -jnp.where(state.known[:, None], to_goal, to_open).astype(jnp.float32)

    def update(self, state: GoalBelief, obs, action, reward, done) -> GoalBelief:
        # the cell the move ended on, by the env's rule (not the next obs: after the last
        # step of an episode the env has reset to the start)
        end = jnp.take_along_axis(_after_moves(jnp.asarray(obs, jnp.int32), self.size),
                                  jnp.asarray(action)[:, None, None], axis=1)[:, 0]
        paid = jnp.asarray(reward) > 0
        idx = end[:, 1] * self.size + end[:, 0]
        hit = jax.nn.one_hot(idx, self.size * self.size, dtype=bool) & ~paid[:, None]
        return GoalBelief(state.ruled_out | hit,
                          jnp.where(paid[:, None], end, state.goal).astype(jnp.int32),
                          state.known | paid)


# ----------------------------------------------------------------------------------------
# Running an agent
# ----------------------------------------------------------------------------------------
def _scan_along(agent, obs: PyTree, action, reward, done, read) -> PyTree:
    """``read(state, obs)`` at every step of recorded streams (leaves (B, T, ...)), the
    state being the agent's after the steps before it: the one scan behind
    ``along_stream`` and ``states_along``."""
    n = action.shape[0]
    swap = lambda x: jnp.swapaxes(jnp.asarray(x), 0, 1)  # noqa: E731

    def body(state, xs):
        o, a, r, d = xs
        return agent.update(state, o, a, r, d), read(state, o)

    _, out = jax.lax.scan(body, agent.init(n), (jax.tree.map(swap, obs), swap(action),
                                                swap(reward), swap(done)))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)


@partial(jax.jit, static_argnames=("agent",))
def along_stream(agent, obs: PyTree, action: jax.Array, reward: jax.Array,
                 done: jax.Array) -> jax.Array:
    """(B, T, A): the agent's values at every step of recorded streams (leaves (B, T, ...)),
    each computed from the steps before it — the agent run on the same stream."""
    return _scan_along(agent, obs, action, reward, done, agent.values)


@partial(jax.jit, static_argnames=("agent",))
def states_along(agent, obs: PyTree, action: jax.Array, reward: jax.Array,
                 done: jax.Array) -> PyTree:
    """The agent's state *before* every step of recorded streams, leaves (B, T, ...) (e.g.
    ``ArmStats`` counts and sums, a ``GoalBelief``): what it knows when it acts at step
    ``t``, from steps ``0 .. t-1`` — the labels for probes, from the one reference
    implementation that ``along_stream`` runs."""
    return _scan_along(agent, obs, action, reward, done, lambda state, o: state)


def policy_along(agent, obs: PyTree, action: jax.Array, reward: jax.Array, done: jax.Array,
                 ties: str = "share") -> np.ndarray:
    """(B, T, A): the agent's policy at every step of recorded streams — the argmax of its
    ``along_stream`` values. ``ties="share"``: tied actions share the probability;
    ``"first"``: all of it on the lowest index (the bandit sources' ``jnp.argmax``, so UCB1
    is then its source exactly)."""
    if ties not in ("share", "first"):
        raise ValueError(f"policy_along: ties must be 'share' or 'first', got {ties!r}")
    v = np.asarray(along_stream(agent, obs, action, reward, done))
    if ties == "first":
        return np.eye(v.shape[-1], dtype=np.float32)[v.argmax(-1)]
    best = v >= v.max(-1, keepdims=True)
    return (best / best.sum(-1, keepdims=True)).astype(np.float32)


def argmax_ties(key: jax.Array, values: jax.Array) -> jax.Array:
    """(n,) int32: the argmax of each row of ``values`` (n, A), ties uniformly at random."""
    best = values >= values.max(-1, keepdims=True)
    return jax.random.categorical(key, jnp.where(best, 0.0, -jnp.inf)).astype(jnp.int32)


class AgentRollout(NamedTuple):
    """What an agent lived, leaves (N, S): the fields of ``ad.interp.streams.Stream``."""

    obs: PyTree
    action: jax.Array
    reward: jax.Array
    done: jax.Array


@partial(jax.jit, static_argnames=("agent", "env", "num_steps"))
def agent_rollout(agent, env, tasks: PyTree, key: jax.Array, num_steps: int) -> AgentRollout:
    """The agent acting on ``N`` tasks for ``num_steps`` steps (argmax of its values, ties at
    random), with the envs' auto-reset: one jitted scan, like ``ad.evaluate.policy_rollout``
    but for agents with memory."""
    n = jax.tree.leaves(tasks)[0].shape[0]
    reset_key, key = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, n), tasks)

    def body(carry, step_key):
        obs, env_state, belief = carry
        act_key, env_key = jax.random.split(step_key)
        action = argmax_ties(act_key, agent.values(belief, obs))
        nxt, env_state, reward, term, trunc, _ = jax.vmap(env.step)(
            jax.random.split(env_key, n), env_state, action, tasks)
        done = jnp.logical_or(term, trunc)
        reward = jnp.asarray(reward, jnp.float32)
        belief = agent.update(belief, obs, action, reward, done)
        return (nxt, env_state, belief), AgentRollout(obs, action, reward, done)

    _, out = jax.lax.scan(body, (obs, state, agent.init(n)), jax.random.split(key, num_steps))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)
