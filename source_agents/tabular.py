"""Tabular model-based learners: R-max (optimism) and PSRL (posterior sampling).

Two sources (``rmax``, ``psrl``; ``source_agents.get``) for any env whose observation is
one discrete array (every entry in ``[0, observation_spec().num_values)``: the Dark Room
family, Key-to-Door). Both learn a model of the task from their own experience only and
plan on it by value iteration; neither is given the task, the dynamics or the task
family's structure.

**The agent's state.** ``s = phase * num_obs + obs_index``: ``obs_index`` numbers the
observation (``sum_i obs[i] * n**i``), and ``phase`` is what the agent's own history
implies beyond it: the number of rewarded steps so far in this episode, capped at
``phases - 1``. With ``phases = 1`` the state is the observation. Key-to-Door needs
``phases = 2``: its cell alone is not Markov, but "this episode has already paid once"
is exactly "the key is held", and the agent knows that from its own rewards. Dark Room
Hard also uses 2 (after the first payment nothing pays again in the episode). The
presets (``default_config``) set it per env.

**The model** (``TabularModel``), counts over the agent's own transitions: visits of
each state-action, the summed reward, the next states of steps that continued, and the
steps that terminated (an absorbing end, value 0). A truncated step (time limit) is
recorded as a transition to its final observation, since the time limit is not part of
the MDP; the next episode's first observation is not linked to anything.

**Planning** (``value_iteration``): discounted Q-value iteration ``Q = R + gamma P V``
on the empirical (R-max) or sampled (PSRL) model, ``V = max_a Q``. Histories are
``lax.scan``s over blocks of ``plan_every`` steps: each block starts with
``plan_sweeps`` sweeps warm-started from the last Q (an unconditional step of the outer
scan, so ``vmap`` over histories computes no branch it does not need), then acts for
``plan_every`` steps. Actions are ``argmax_a Q(s, a)`` with ties broken uniformly at
random.

- ``rmax`` (Brafman & Tennenholtz 2002): a state-action visited fewer than
  ``known_count`` times is unknown and worth ``optimistic_value`` (default the textbook
  ``r_max / (1 - gamma)``: as if it led to a state paying ``r_max`` forever); known ones
  use the empirical mean reward and transition frequencies. After every step it also
  runs ``step_sweeps`` sweeps on the updated model, so a new visit changes its plan at
  once. Lower ``optimistic_value`` trades thoroughness for earlier exploitation (with
  ``r_max``: an unknown state-action is worth one best reward, so a known reward close by
  wins over a far unknown).
- ``psrl`` (Osband, Russo & Van Roy 2013): every ``plan_every`` steps it samples an MDP
  from the posterior and acts greedily on it: next states (and termination) of each
  state-action ~ ``Dirichlet(prior + counts)`` over all states plus the end, the prior's
  total mass ``transition_prior`` spread evenly over them (one observation outweighs it);
  mean reward ~ its Normal posterior from the prior ``N(0, r_max^2)`` and Gaussian
  rewards of std ``reward_noise`` (one observation pins it down; a Beta prior's heavy
  tail made each of the hundreds of zero-reward state-actions look worth chasing now and
  then, and the learner slow). On the tasks that pay once or twice per episode (Dark Room
  Hard, Key-to-Door) the preset prior is sparse: ``N(0, 0.05^2)``, noise ``1e-3``,
  transition mass ``1e-2`` (``_PSRL_SPARSE``: why, with figures). The whole MDP is drawn afresh every ``plan_every`` steps
  (on Dark Room the preset ``plan_every = horizon`` is every episode start, as in the
  original algorithm; on Key-to-Door every 50 steps whatever the episode), and after
  every step the entry of the state-action just taken is redrawn from its updated
  posterior and ``step_sweeps`` sweeps follow (``redraw``: the posterior factorises over
  state-actions, so this is still a draw from it). Without that redraw an agent that
  drew a high reward for a self-loop (a wall bump) stayed on it for the whole block.

**Not the explore-and-remember diagnostic** (``source_agents.memory``): that agent is
written for the task family: it knows that one or two cells pay, in which order, and
walks a hard-coded shortest path (``greedy_step_towards``) to the cells it remembers. These
learners know none of that: they learn every transition (walls included) and every
reward from counts, the key-then-door order emerges from planning on the learnt model of
(phase, cell) states, and both run unchanged on any finite MDP with this observation
form.

``make_train(env, config)`` returns ``train(key, params) -> LearningHistory`` as every
source does; ``make_train(env, config, internals=True)`` returns
``train(key, params) -> (LearningHistory, Internals)`` with per-step visit counts,
values and model sizes for probes (``Internals``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.core import Environment
from source_agents.history import LearningHistory


# ---- configs -------------------------------------------------------------------------------
def _check_int(name: str, field: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}.{field} must be an int >= {low}, got {value!r}")


def _check_real(name: str, field: str, value, low: float, high: float = math.inf,
                open_low: bool = False, open_high: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    ok = ok and (value < high if open_high else value <= high)
    if not ok:
        bounds = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{name}.{field} must be a finite number in {bounds}, got {value!r}")


def _check_shared(name: str, c) -> None:
    _check_int(name, "num_steps", c.num_steps, 1)
    _check_int(name, "phases", c.phases, 1)
    _check_real(name, "gamma", c.gamma, 0.0, 1.0, open_high=True)
    _check_int(name, "plan_every", c.plan_every, 1)
    _check_int(name, "plan_sweeps", c.plan_sweeps, 0)
    _check_real(name, "r_max", c.r_max, 0.0, open_low=True)
    _check_int(name, "max_successors", c.max_successors, 1)


@dataclasses.dataclass(frozen=True)
class RMaxConfig:
    """R-max on the learnt tabular model (module docstring)."""

    num_steps: int = 10_000  # history length in env steps
    phases: int = 1  # values of "rewarded steps so far this episode" kept in the state (cap)
    gamma: float = 0.95  # planning discount
    plan_every: int = 20  # steps between the block-start plans (each of plan_sweeps sweeps)
    plan_sweeps: int = 50  # value-iteration sweeps at each block start
    step_sweeps: int = 1  # sweeps after every step, on the model that step updated
    known_count: int = 1  # visits after which a state-action is known (R-max's m)
    r_max: float = 1.0  # the largest reward of one step
    optimistic_value: float | None = None  # Q of an unknown state-action; None: r_max / (1 - gamma)
    max_successors: int = 4  # distinct next states kept per state-action (TabularModel)

    def __post_init__(self):
        _check_shared("RMaxConfig", self)
        _check_int("RMaxConfig", "step_sweeps", self.step_sweeps, 0)
        _check_int("RMaxConfig", "known_count", self.known_count, 1)
        if self.optimistic_value is not None:
            _check_real("RMaxConfig", "optimistic_value", self.optimistic_value, 0.0)

    @property
    def unknown_value(self) -> float:
        if self.optimistic_value is not None:
            return float(self.optimistic_value)
        return self.r_max / (1.0 - self.gamma)


@dataclasses.dataclass(frozen=True)
class PSRLConfig:
    """Posterior sampling on the tabular model (module docstring)."""

    num_steps: int = 10_000  # history length in env steps
    phases: int = 1  # values of "rewarded steps so far this episode" kept in the state (cap)
    gamma: float = 0.95  # planning discount
    plan_every: int = 20  # steps between posterior samples (each followed by plan_sweeps sweeps)
    plan_sweeps: int = 50  # value-iteration sweeps on each sampled MDP
    r_max: float = 1.0  # scale of rewards: a mean reward is N(0, r_max^2) a priori
    transition_prior: float = 0.1  # total Dirichlet prior mass, spread evenly over the S states and the end
    reward_noise: float = 0.1  # assumed std of one reward around its state-action's mean
    step_sweeps: int = 1  # sweeps after every step, once the entry just visited is redrawn
    max_successors: int = 4  # distinct next states kept per state-action (TabularModel)

    def __post_init__(self):
        _check_shared("PSRLConfig", self)
        _check_int("PSRLConfig", "step_sweeps", self.step_sweeps, 0)
        for field in ("transition_prior", "reward_noise"):
            _check_real("PSRLConfig", field, getattr(self, field), 0.0, open_low=True)


# Tuned per env (the preset is the default; overrides win).
_ENV_PRESETS = {
    "darkroom": dict(phases=1, plan_every=20),
    "darkroom-hard": dict(phases=2, plan_every=20),
    "key-to-door": dict(phases=2, plan_every=50, r_max=2.0),
}
# PSRL's prior where a task pays at most once or twice per episode (Dark Room pays every
# step on the goal, so N(0, 1) suits it). Under N(0, r_max^2) every unknown state-action
# may pay about r_max every step, so values inflate to ~r_max / (1 - gamma) and the agent
# explores far past a found key or goal: the N(0, 4) of r_max = 2 left Key-to-Door at
# 1.02 of 2 by episode 70 (64 held-out pairs), Dark Room Hard's N(0, 1) at 0.21 of 1 by
# 195 (16 held-out goals). A sparse prior (most state-actions pay nothing: N(0, 0.05^2)),
# exact rewards (noise 1e-3: one payment pins its mean) and a small transition prior mass
# reach 1.03 / 1.48 / 1.90 by episode 10 / 20 / 30 on Key-to-Door and 0.81 by 195 on Dark
# Room Hard (docs/key_to_door.md, with the commands).
_PSRL_SPARSE = dict(r_max=0.05, reward_noise=1e-3, transition_prior=1e-2)
_SOURCE_PRESETS = {
    PSRLConfig: {"darkroom-hard": _PSRL_SPARSE, "key-to-door": _PSRL_SPARSE},
}


def _default_config(config_cls):
    def default_config(env_name: str, **overrides):
        """The preset for ``env_name`` (phases, plan_every, r_max; PSRL's prior on the
        one-payment tasks) with ``overrides``."""
        own = _SOURCE_PRESETS.get(config_cls, {}).get(env_name, {})
        return config_cls(**{**_ENV_PRESETS.get(env_name, {}), **own, **overrides})
    return default_config


# ---- states ------------------------------------------------------------------------------
class StateSpace(NamedTuple):
    """How observations (plus the phase) number the tabular states."""

    num_obs: int  # distinct observations
    phases: int
    radix: np.ndarray  # (D,) int: obs_index = sum(obs.ravel() * radix)

    @property
    def num_states(self) -> int:
        return self.num_obs * self.phases

    def index(self, obs: jax.Array, phase: jax.Array) -> jax.Array:
        flat = jnp.asarray(obs, jnp.int32).reshape(-1)
        return phase * self.num_obs + jnp.sum(flat * jnp.asarray(self.radix, jnp.int32))


def state_space(env: Environment, phases: int) -> StateSpace:
    """The tabular states of ``env``; ``ValueError`` unless its observation is one discrete array."""
    spec = env.observation_spec()
    if not hasattr(spec, "num_values") or spec.num_values is None:
        raise ValueError(f"tabular sources need a discrete observation (one array with "
                         f"num_values); env {getattr(env, 'name', env)!r} has {spec!r}")
    dims = int(np.prod(spec.shape, dtype=np.int64))
    num_obs = int(spec.num_values) ** dims
    if num_obs * phases > 2**20:
        raise ValueError(f"tabular sources: env {env.name!r} has {num_obs} observations x "
                         f"{phases} phases = {num_obs * phases} states; tables of more than "
                         "2**20 states are not supported")
    return StateSpace(num_obs, phases, spec.num_values ** np.arange(dims))


# ---- the model and planning -----------------------------------------------------------------
class TabularModel(NamedTuple):
    """Counts of the agent's own transitions (S states, A actions, K successor slots).

    The next states of each state-action are kept sparsely, in ``K = max_successors``
    slots (state index and count): exact for MDPs where no state-action leads to more than
    K distinct states (the grid tasks here are deterministic: 1). A further distinct
    successor is counted in the slot with the fewest visits (that slot keeps its state),
    so on MDPs with wider branching the model lumps rare successors together.
    """

    visits: jax.Array  # (S, A) float32, steps taken from s with a
    reward_sum: jax.Array  # (S, A) float32, their summed reward
    successor: jax.Array  # (S, A, K) int32, next states seen after continuing steps, -1 = empty
    successor_count: jax.Array  # (S, A, K) float32, continuing steps into each
    ended: jax.Array  # (S, A) float32, steps that terminated the episode (absorbing, value 0)


def empty_model(num_states: int, num_actions: int, max_successors: int) -> TabularModel:
    z = jnp.zeros((num_states, num_actions), jnp.float32)
    shape = (num_states, num_actions, max_successors)
    return TabularModel(z, z, jnp.full(shape, -1, jnp.int32), jnp.zeros(shape, jnp.float32), z)


def update_model(model: TabularModel, s, a, reward, s_next, terminated) -> TabularModel:
    """The model after one step ``s --a--> s_next`` paying ``reward`` (terminated: no successor)."""
    row, count = model.successor[s, a], model.successor_count[s, a]  # (K,)
    match, empty = row == s_next, row < 0
    slot = jnp.where(match.any(), jnp.argmax(match),
                     jnp.where(empty.any(), jnp.argmax(empty), jnp.argmin(count)))
    claim = ~match.any() & empty.any() & ~terminated  # a new successor takes an empty slot
    cont = jnp.where(terminated, 0.0, 1.0)
    return TabularModel(
        visits=model.visits.at[s, a].add(1.0),
        reward_sum=model.reward_sum.at[s, a].add(jnp.asarray(reward, jnp.float32)),
        successor=model.successor.at[s, a, slot].set(jnp.where(claim, s_next, row[slot])),
        successor_count=model.successor_count.at[s, a, slot].add(cont),
        ended=model.ended.at[s, a].add(1.0 - cont),
    )


class PlanningMDP(NamedTuple):
    """What value iteration plans on (S states, A actions, K successor slots).

    ``E[V(s') | s, a] = (sum_k weight[s, a, k] V(successor[s, a, k])
    + unseen_weight[s, a] mean_s' V(s')) / normaliser[s, a]``; the rest of the
    probability (``1 - sum / normaliser``) ends the episode (value 0). R-max plans on
    raw counts with the visits as the normaliser; PSRL on sampled probabilities.
    """

    reward: jax.Array  # (S, A) expected reward
    successor: jax.Array  # (S, A, K) int32 next states (any valid index where the weight is 0)
    weight: jax.Array  # (S, A, K) unnormalised continuation weights
    unseen_weight: jax.Array  # (S, A) weight of the states never seen next (PSRL), valued at mean V
    normaliser: jax.Array  # (S, A) > 0
    fixed: jax.Array  # (S, A) bool: Q held at fixed_value (R-max's unknown state-actions)
    fixed_value: jax.Array  # () the value held there


def bellman_sweep(mdp: PlanningMDP, q: jax.Array, gamma: float) -> jax.Array:
    """One synchronous sweep ``Q <- R + gamma E[max_a' Q(s', a')]`` (fixed entries held)."""
    v = q.max(axis=1)  # (S,)
    expected = (mdp.weight * v[mdp.successor]).sum(-1) + mdp.unseen_weight * v.mean()
    backed = mdp.reward + gamma * expected / mdp.normaliser
    return jnp.where(mdp.fixed, mdp.fixed_value, backed)


def value_iteration(mdp: PlanningMDP, q: jax.Array, gamma: float, sweeps: int) -> jax.Array:
    """``sweeps`` Bellman sweeps from ``q`` (warm start): ``(S, A)`` action values."""
    if sweeps == 0:
        return q
    return jax.lax.fori_loop(0, sweeps, lambda _, q: bellman_sweep(mdp, q, gamma), q)


def empirical_mdp(model: TabularModel, config: RMaxConfig) -> PlanningMDP:
    """R-max's model: empirical means where known, ``unknown_value`` elsewhere."""
    return PlanningMDP(
        reward=model.reward_sum / jnp.maximum(model.visits, 1.0),
        successor=jnp.maximum(model.successor, 0), weight=model.successor_count,
        unseen_weight=jnp.zeros(model.visits.shape),
        normaliser=jnp.maximum(model.visits, 1.0),
        fixed=model.visits < config.known_count, fixed_value=jnp.float32(config.unknown_value))


def _gamma_rounds(key, d, c, log_v, pending, max_rounds):
    """Marsaglia-Tsang rounds until no element is pending: each round proposes for every
    element from one key, and a pending element keeps its first accepted proposal
    (``log V`` of the accepted ``V = (1 + c x)^3``)."""
    def propose(carry):
        i, log_v, pending = carry
        key_x, key_u = jax.random.split(jax.random.fold_in(key, i))
        x = jax.random.normal(key_x, d.shape)
        log_u = -jax.random.exponential(key_u, d.shape)  # log of a uniform draw
        v = 1.0 + c * x
        log_v3 = 3.0 * jnp.log(jnp.maximum(v, 1e-30))
        accept = (v > 0) & (log_u < 0.5 * x * x + d - d * jnp.exp(log_v3) + d * log_v3)
        return i + 1, jnp.where(pending & accept, log_v3, log_v), pending & ~accept

    def more(carry):
        i, _, pending = carry
        return pending.any() & (i < max_rounds)

    _, log_v, pending = jax.lax.while_loop(more, propose, (jnp.int32(0), log_v, pending))
    return log_v, pending


def log_gamma(key: jax.Array, alpha: jax.Array, max_rounds: int = 64) -> jax.Array:
    """``log Gamma(alpha, 1)`` draws of ``alpha``'s shape, like ``jax.random.loggamma``.

    Why our own: on CPU, JAX's gamma sampler is a sequential ``lax.map`` over the elements,
    each with its own key splits and rejection loop; PSRL draws a Dirichlet for every
    state-action of every history each block, and that loop took ~90% of its run time
    (``benchmarks/source_throughput.py``). This is the same algorithm (Marsaglia & Tsang
    2000, with the ``alpha < 1`` boost ``G(alpha) = G(alpha + 1) U^(1 / alpha)`` taken in
    log space so that tiny shapes do not underflow), vectorised: a round proposes for many
    elements at once and each element keeps its first accepted proposal, an exact
    rejection sampler. Each proposal is accepted with probability > 0.95, so after one
    round over all elements the few still pending (at most an eighth are handled this way;
    any beyond that go on over the whole array) run their further rounds on their own.
    ``max_rounds`` only bounds the loops (an element is still pending after 64 rounds
    with probability below 1e-80).
    """
    shape = jnp.shape(alpha)
    alpha = jnp.asarray(alpha, jnp.float32).reshape(-1)
    n = alpha.size
    boost = alpha < 1.0
    d = jnp.where(boost, alpha + 1.0, alpha) - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    key_first, key_few, key_rest, key_boost = jax.random.split(key, 4)
    # one round over all elements
    log_v, pending = _gamma_rounds(key_first, d, c, jnp.zeros(n), jnp.ones(n, bool), 1)
    # further rounds on (up to m of) the pending elements only: index n marks an empty slot
    m = n if n <= 64 else n // 8
    few = jnp.nonzero(pending, size=m, fill_value=n)[0]
    live = few < n
    log_v_few, _ = _gamma_rounds(key_few, d.at[few].get(mode="fill", fill_value=1.0),
                                 c.at[few].get(mode="fill", fill_value=1.0),
                                 jnp.zeros(m), live, max_rounds)
    log_v = log_v.at[few].set(log_v_few, mode="drop")
    # any pending beyond those m (rare): further rounds over the whole array
    rest = pending & (jnp.cumsum(pending) > m)
    log_v, _ = _gamma_rounds(key_rest, d, c, log_v, rest, max_rounds)
    log_boost = jnp.where(boost, -jax.random.exponential(key_boost, (n,)) / alpha, 0.0)
    return (jnp.log(d) + log_v + log_boost).reshape(shape)


class PosteriorDraw(NamedTuple):
    """One draw of PSRL's posterior for state-actions of any leading shape ``(...)``."""

    reward: jax.Array  # (...) mean reward
    weight: jax.Array  # (..., K) probability of each successor slot
    unseen_weight: jax.Array  # (...) probability of a state never seen next


def posterior_draw(key: jax.Array, visits, reward_sum, successor, successor_count, ended,
                   num_states: int, config: PSRLConfig) -> PosteriorDraw:
    """Draw the mean reward and next-state distribution of state-actions from the posterior.

    Next states: ``Dirichlet(transition_prior / (S + 1))`` over all S states and the end,
    updated with the counts, is sampled exactly in aggregate: one weight per seen
    successor, one for the end and one for the S - (seen) unseen states together. That
    last share is valued at the mean value over all states (``PlanningMDP``), the
    expectation of its split over the unseen states rather than a draw of it: a drawn
    split would make some unknown moves look like jumps onto the best known state.
    Mean reward: Normal posterior from ``N(0, r_max^2)`` with reward noise ``reward_noise``.
    """
    key_p, key_r = jax.random.split(key)
    a0 = config.transition_prior / (num_states + 1)  # per next state (and the end)
    filled = successor >= 0  # (..., K)
    unseen = num_states - filled.sum(-1)  # (...)
    alpha = jnp.concatenate([
        jnp.where(filled, a0 + successor_count, 1.0),
        (a0 + ended)[..., None],
        jnp.maximum(a0 * unseen, 1e-9)[..., None]], axis=-1)  # (..., K + 2)
    valid = jnp.concatenate([filled, jnp.ones(alpha.shape[:-1] + (2,), bool)], axis=-1)
    # log-space gamma draws: small shapes underflow to 0 in linear space
    log_g = jnp.where(valid, log_gamma(key_p, alpha), -jnp.inf)
    p = jax.nn.softmax(log_g, axis=-1)
    # Normal-Normal conjugate update: precisions add up, the prior mean is 0
    precision = config.r_max ** -2 + visits / config.reward_noise ** 2
    mean = reward_sum / config.reward_noise ** 2 / precision
    reward = mean + jax.random.normal(key_r, jnp.shape(mean)) / jnp.sqrt(precision)
    return PosteriorDraw(reward, p[..., :-2], p[..., -1])


def sample_mdp(key: jax.Array, model: TabularModel, config: PSRLConfig) -> PlanningMDP:
    """One MDP drawn from PSRL's posterior (``posterior_draw`` for every state-action)."""
    S = model.visits.shape[0]
    d = posterior_draw(key, *model, num_states=S, config=config)
    return PlanningMDP(
        reward=d.reward, successor=jnp.maximum(model.successor, 0), weight=d.weight,
        unseen_weight=d.unseen_weight, normaliser=jnp.ones(model.visits.shape),
        fixed=jnp.zeros(model.visits.shape, bool), fixed_value=jnp.float32(0.0))


def redraw(key: jax.Array, mdp: PlanningMDP, model: TabularModel, s, a,
           config: PSRLConfig) -> PlanningMDP:
    """``mdp`` with the entry of ``(s, a)`` drawn afresh from its updated posterior. The
    posterior factorises over state-actions, so this is a draw from the whole posterior
    given the model after the step (the other entries keep their earlier draws)."""
    row = jax.tree.map(lambda x: x[s, a], model)
    d = posterior_draw(key, *row, num_states=model.visits.shape[0], config=config)
    return mdp._replace(reward=mdp.reward.at[s, a].set(d.reward),
                        successor=mdp.successor.at[s, a].set(jnp.maximum(row.successor, 0)),
                        weight=mdp.weight.at[s, a].set(d.weight),
                        unseen_weight=mdp.unseen_weight.at[s, a].set(d.unseen_weight))


def greedy_action(key: jax.Array, q_row: jax.Array) -> jax.Array:
    """``argmax`` with ties (within float rounding) broken uniformly at random."""
    tol = 1e-6 * jnp.maximum(1.0, jnp.abs(q_row).max())
    best = q_row >= q_row.max() - tol
    return jnp.argmax(jnp.where(best, jax.random.uniform(key, q_row.shape), -1.0)).astype(jnp.int32)


class Internals(NamedTuple):
    """Per-step internal quantities (``make_train(..., internals=True)``), for probes."""

    state: jax.Array  # (T,) int32 tabular state the agent acted in
    visits: jax.Array  # (T,) float32 visits of (state, action) before this step
    value: jax.Array  # (T,) float32 max_a Q(state, a) it acted on
    q_taken: jax.Array  # (T,) float32 Q(state, action)
    known_fraction: jax.Array  # (T,) float32 share of state-actions visited at least once


# ---- the shared learner loop --------------------------------------------------------------
def _make_tabular_train(env: Environment, config, plan: Callable, after_step: Callable,
                        init_q: float, internals: bool):
    """``train(key, params)``: blocks of ``plan_every`` steps, each after ``plan``."""
    if not isinstance(env, Environment):
        raise ValueError(f"env must be an envs.core.Environment, got {type(env).__name__}")
    space = state_space(env, config.phases)
    S, A = space.num_states, env.num_actions
    block = config.plan_every
    num_blocks = -(-config.num_steps // block)

    def train(key: jax.Array, params):
        key_reset, key_blocks = jax.random.split(key)
        obs, env_state = env.reset(key_reset, params)
        q = jnp.full((S, A), init_q, jnp.float32)

        def run_block(carry, block_key):
            obs, env_state, phase, model, q = carry
            key_plan, key_steps = jax.random.split(block_key)
            mdp, q = plan(key_plan, model, q)

            def step(carry, step_key):
                obs, env_state, phase, model, mdp, q = carry
                key_act, key_env = jax.random.split(step_key)
                s = space.index(obs, phase)
                action = greedy_action(key_act, q[s])
                next_obs, env_state, reward, terminated, truncated, info = env.step(
                    key_env, env_state, action, params)
                reward = jnp.asarray(reward, jnp.float32)
                next_phase = jnp.minimum(phase + (reward > 0), config.phases - 1)
                s_next = space.index(info["final_obs"], next_phase)
                seen = Internals(s, model.visits[s, action], q[s].max(), q[s, action],
                                 (model.visits > 0).mean())
                model = update_model(model, s, action, reward, s_next, terminated)
                mdp, q = after_step(key_act, model, mdp, q, s, action)
                done = jnp.logical_or(terminated, truncated)
                record = LearningHistory(obs, action, reward, terminated, truncated)
                carry = (next_obs, env_state, jnp.where(done, 0, next_phase), model, mdp, q)
                return carry, (record, seen)

            (obs, env_state, phase, model, _, q), out = jax.lax.scan(
                step, (obs, env_state, phase, model, mdp, q), jax.random.split(key_steps, block))
            return (obs, env_state, phase, model, q), out

        carry = (obs, env_state, jnp.int32(0), empty_model(S, A, config.max_successors), q)
        _, (history, seen) = jax.lax.scan(run_block, carry,
                                          jax.random.split(key_blocks, num_blocks))
        # (blocks, block, ...) -> (steps, ...), dropping the last block's overhang
        flat = lambda x: x.reshape(num_blocks * block, *x.shape[2:])[: config.num_steps]  # noqa: E731
        history, seen = jax.tree.map(flat, history), jax.tree.map(flat, seen)
        return (history, seen) if internals else history

    return train


def make_rmax(env: Environment, config: RMaxConfig, internals: bool = False):
    """R-max (module docstring): ``train(key, params) -> LearningHistory``."""
    if not isinstance(config, RMaxConfig):
        raise ValueError(f"rmax needs a source_agents.tabular.RMaxConfig, got {type(config).__name__}")

    def plan(key, model, q):
        mdp = empirical_mdp(model, config)
        return mdp, value_iteration(mdp, q, config.gamma, config.plan_sweeps)

    def after_step(key, model, mdp, q, s, a):
        mdp = empirical_mdp(model, config)
        return mdp, value_iteration(mdp, q, config.gamma, config.step_sweeps)

    return _make_tabular_train(env, config, plan, after_step, config.unknown_value, internals)


def make_psrl(env: Environment, config: PSRLConfig, internals: bool = False):
    """PSRL (module docstring): ``train(key, params) -> LearningHistory``."""
    if not isinstance(config, PSRLConfig):
        raise ValueError(f"psrl needs a source_agents.tabular.PSRLConfig, got {type(config).__name__}")

    def plan(key, model, q):
        mdp = sample_mdp(key, model, config)
        return mdp, value_iteration(mdp, q, config.gamma, config.plan_sweeps)

    def after_step(key, model, mdp, q, s, a):
        mdp = redraw(jax.random.fold_in(key, 1), mdp, model, s, a, config)
        return mdp, value_iteration(mdp, q, config.gamma, config.step_sweeps)

    return _make_tabular_train(env, config, plan, after_step, 0.0, internals)


class TabularSource(NamedTuple):
    """One algorithm in the source interface: ``source_agents.get(name)`` returns it."""

    name: str
    Config: type
    make_train: Callable  # (env, config, internals=False) -> train(key, params)
    default_config: Callable  # (env_name, **overrides) -> Config: the per-env preset


rmax = TabularSource("rmax", RMaxConfig, make_rmax, _default_config(RMaxConfig))
psrl = TabularSource("psrl", PSRLConfig, make_psrl, _default_config(PSRLConfig))

__all__ = ["Internals", "PSRLConfig", "PlanningMDP", "RMaxConfig", "StateSpace", "TabularModel",
           "TabularSource", "bellman_sweep", "empirical_mdp", "empty_model", "greedy_action",
           "make_psrl", "make_rmax", "psrl", "rmax", "sample_mdp", "state_space", "update_model",
           "value_iteration"]
