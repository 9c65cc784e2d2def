"""PPO source agent (PureJaxRL style): one agent, one task, one env stream per history.

    env = envs.make("darkroom")
    config = ppo.default_config("darkroom")
    train = jax.jit(jax.vmap(ppo.make_train(env, config)))
    history = train(keys, env.tasks("train"))  # LearningHistory, leaves (n, num_steps, ...)

``make_train`` does the static set-up; ``train(key, params)`` is pure and is one
``lax.scan`` over updates. Each update rolls the agent out for ``rollout_len`` steps
(a scan over env steps, recorded into the history), computes GAE advantages and runs
``num_epochs`` × ``num_minibatches`` clipped-objective Adam steps (nested scans). The
history is exactly the stream the agent lived: consecutive steps across episodes, with
the env's auto-reset between them.

Bootstrapping: every step's target uses the value of the *true* next state,
``info["final_obs"]`` with ``env.source_features(info["final_state"])``: at a truncated
step (time limit) that value is bootstrapped, at a terminated step it is zeroed, and
the GAE recursion never crosses an episode boundary (see ``gae``).

Observations are encoded by ``networks.make_encoder`` together with the env's
``source_features`` (Key-to-Door's has-key bit), so a feed-forward policy suffices.

What the agent was, step by step, for probes and for comparing a model with its source at
the same stage of learning: ``make_train(env, config, internals=True)`` also returns
``Internals`` (per step: the acting policy's log-probabilities and critic value at the
step's observation, and which update's parameters acted; storable with ``collect
--internals``); ``make_train(env, config, snapshots=True)`` also returns the network
parameters each update's rollout acted with (leading axis ``num_updates``), and
``make_apply(env, config)`` evaluates such parameters on any observation.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from envs.core import Environment
from source_agents.history import LearningHistory
from source_agents.networks import (
    ACTIVATIONS,
    ENCODINGS,
    ActorCritic,
    abstract_state,
    make_encoder,
    one_hot,
)


@dataclasses.dataclass(frozen=True)
class Config:
    num_steps: int = 16_384  # history length in env steps (a multiple of rollout_len)
    rollout_len: int = 128  # env steps collected between two rounds of updates
    num_epochs: int = 4  # passes over each rollout
    num_minibatches: int = 4  # minibatches per epoch (must divide rollout_len)
    lr: float = 2.5e-3  # Adam learning rate (start value when anneal_lr)
    anneal_lr: bool = False  # decay the learning rate linearly to 0 over the history
    adam_eps: float = 1e-5  # Adam epsilon
    max_grad_norm: float = 0.5  # global gradient-norm clip
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # PPO ratio clip
    ent_coef: float = 0.01  # entropy bonus weight (at the first update)
    ent_coef_end: float | None = None  # if set, entropy weight decays linearly to this
    vf_coef: float = 0.5  # value-loss weight
    normalize_advantages: bool = True  # standardise advantages per minibatch
    adv_std_floor: float = 0.0  # divide by max(std, floor): no blow-up of pure value noise
    hidden_sizes: tuple[int, ...] = (32, 32)  # MLP torso widths; () is a linear model
    activation: str = "tanh"  # "tanh" or "relu"
    shared_torso: bool = True  # one torso for actor and critic (half the hidden FLOPs)
    encoding: str = "onehot"  # observation encoding, see source_agents.networks
    rollout_unroll: int = 1  # lax.scan unroll of the env-step loop (speed only)

    def __post_init__(self):
        for name in ("num_steps", "rollout_len", "num_epochs", "num_minibatches", "rollout_unroll"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ppo.Config.{name} must be an int >= 1, got {value!r}")
        if self.num_steps % self.rollout_len:
            raise ValueError(
                f"ppo.Config.num_steps={self.num_steps} must be a multiple of "
                f"rollout_len={self.rollout_len}"
            )
        if self.rollout_len % self.num_minibatches:
            raise ValueError(
                f"ppo.Config.num_minibatches={self.num_minibatches} must divide "
                f"rollout_len={self.rollout_len}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"ppo.Config.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"ppo.Config.encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        for name in ("lr", "gamma", "gae_lambda", "clip_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ppo.Config.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def num_updates(self) -> int:
        return self.num_steps // self.rollout_len


# Per-env presets that meet the quality targets with histories as short as we found.
# Both are tabular softmax actor-critics: the joint one-hot of the cell (times
# [1, has_key] on Key-to-Door) feeds linear policy and value heads, i.e. an MLP with no
# hidden layer. That learns faster and more reliably on these small grids than a
# 2x32 tanh MLP on per-coordinate one-hots (see the PPO section of the README for the
# measurements). Entropy 0.05 -> 0 explores until the sparse reward is found, then
# sharpens the policy; the advantage-std floor stops normalisation from amplifying
# value noise into policy drift before the first reward (which stalled far goals).
_TABULAR = {
    "encoding": "joint", "hidden_sizes": (), "lr": 0.03, "ent_coef": 0.05,
    "ent_coef_end": 0.0, "adv_std_floor": 1.0,
}
PRESETS: dict[str, Config] = {
    # 409 episodes. Two full-batch epochs per 128-step rollout at lr 0.1 learn as well
    # as 4 epochs x 4 minibatches at lr 0.03 (65 goals x 3 seeds: 97.9% vs 98.5% of
    # histories >= 90% of the optimum over their last 10% of episodes) at twice the
    # env steps/s, since tiny per-history updates are op-overhead bound on CPU.
    "darkroom": Config(
        num_steps=8_192, **{**_TABULAR, "lr": 0.1}, num_epochs=2, num_minibatches=1,
        rollout_unroll=4,
    ),
    # ~330 episodes (50 steps or fewer); 128 train tasks: mean return 1.87 of 2 over the
    # last 10% of episodes (1.95 with 32_768 steps).
    "key-to-door": Config(num_steps=16_384, **_TABULAR),
    # 819 episodes; sparse (+1 once per episode) on 17x17, so learning is slow: on the
    # 231 train goals mean return 0.43 by episode 200, 0.66 by 800 (0.35 / 0.65 with the
    # Key-to-Door settings at lr 0.03, 0.45 / 0.55 with Config() defaults).
    "darkroom-hard": Config(
        num_steps=16_384, **{**_TABULAR, "lr": 0.1}, num_epochs=2, num_minibatches=1,
        rollout_unroll=4,
    ),
}


def default_config(env_name: str, **overrides) -> Config:
    """The tuned preset for ``env_name`` (``Config()`` when none), with overrides."""
    return dataclasses.replace(PRESETS.get(env_name, Config()), **overrides)


class GAEOutput(NamedTuple):
    advantages: jax.Array  # (T,) GAE(lambda) advantages
    returns: jax.Array  # (T,) value targets: advantages + values


def gae(
    reward: jax.Array,
    value: jax.Array,
    next_value: jax.Array,
    terminated: jax.Array,
    done: jax.Array,
    gamma: float,
    lam: float,
    unroll: int = 16,
) -> GAEOutput:
    """Generalised advantage estimation over one stream of ``T`` steps (leading axis).

    ``value[t]`` is V(s_t); ``next_value[t]`` is V of the *true* successor of step t
    (the final observation when the episode ended there). ``terminated[t]`` zeroes the
    bootstrap (absorbing state); ``done[t] = terminated | truncated`` stops the
    recursion at an episode boundary, so a truncated step bootstraps from
    ``next_value[t]`` alone. The last step bootstraps from ``next_value[T-1]``
    (``unroll`` only trades compile time for fewer loop iterations):

        delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - value_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   A_T = 0
    """
    not_term = 1.0 - terminated.astype(jnp.float32)
    not_done = 1.0 - done.astype(jnp.float32)
    delta = reward + gamma * not_term * next_value - value

    def backward(next_adv, xs):
        delta_t, not_done_t = xs
        adv = delta_t + gamma * lam * not_done_t * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(delta[0]), (delta, not_done), reverse=True, unroll=unroll
    )
    return GAEOutput(advantages, advantages + value)


class Transition(NamedTuple):
    """One env step of a rollout (leaves gain a leading (rollout_len,) axis)."""

    obs: object  # pytree: what the agent saw (recorded in the history)
    x: jax.Array  # (in_dim,) encoded obs + source features, reused by the update
    action: jax.Array  # () int32
    log_prob: jax.Array  # () log pi(action | obs) under the acting policy
    value: jax.Array  # () V(obs) under the acting critic
    reward: jax.Array  # () float32
    terminated: jax.Array  # () bool
    truncated: jax.Array  # () bool
    final_x: jax.Array  # (in_dim,) encoding of the true next state (for bootstrapping)


class Internals(NamedTuple):
    """Per-step quantities of the acting agent (``make_train(..., internals=True)``)."""

    log_probs: jax.Array  # (T, A) float32: its policy at the step's observation
    value: jax.Array  # (T,) float32: its critic's value there
    update: jax.Array  # (T,) int32: the update whose parameters acted (its stage of learning)


class Batch(NamedTuple):
    x: jax.Array  # (B, in_dim)
    action: jax.Array  # (B,)
    log_prob: jax.Array  # (B,)
    advantages: jax.Array  # (B,)
    returns: jax.Array  # (B,)


def make_apply(env: Environment, config: Config):
    """``apply(net_params, obs) -> (log_probs (A,), value ())``: the policy and critic of
    one set of parameters (e.g. a ``snapshots=True`` entry) at an observation. Only for
    envs without source features (the recorded obs must be the agent's whole input)."""
    encoder = make_encoder(env, config.encoding)
    network = ActorCritic(
        env.num_actions, tuple(config.hidden_sizes), config.activation, config.shared_torso
    )
    if jax.eval_shape(env.source_features, abstract_state(env)).shape != (0,):
        raise ValueError(f"make_apply: {type(env).__name__} gives PPO source features that "
                         f"a recorded observation does not hold")

    def apply(net_params, obs):
        logits, value = network.apply(net_params, encoder.encode(obs, jnp.zeros((0,))))
        return jax.nn.log_softmax(logits), value

    return apply


def make_train(env: Environment, config: Config, internals: bool = False,
               snapshots: bool = False):
    """Static set-up; returns the pure ``train(key, params) -> LearningHistory``, or
    ``(history, Internals)`` with ``internals``, or ``(history, net_params per update)``
    with ``snapshots`` (module docstring). The history is the same in all three."""
    if internals and snapshots:
        raise ValueError("make_train: ask for internals or snapshots, not both")
    encoder = make_encoder(env, config.encoding)
    network = ActorCritic(
        env.num_actions, tuple(config.hidden_sizes), config.activation, config.shared_torso
    )
    num_actions = env.num_actions
    T = config.rollout_len
    mb_size = T // config.num_minibatches
    grad_steps = config.num_updates * config.num_epochs * config.num_minibatches
    lr = (
        optax.linear_schedule(config.lr, 0.0, grad_steps) if config.anneal_lr else config.lr
    )
    tx = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=config.adam_eps)
    )

    def ent_weight(update_index):
        # Strong early exploration until a sparse reward is found, a sharp policy late.
        if config.ent_coef_end is None:
            return jnp.float32(config.ent_coef)
        frac = update_index / max(config.num_updates - 1, 1)
        return config.ent_coef + frac * (config.ent_coef_end - config.ent_coef)

    def loss_fn(net_params, batch: Batch, ent_coef):
        logits, value = network.apply(net_params, batch.x)  # (B, A), (B,)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.sum(log_probs * one_hot(batch.action, num_actions), -1)
        adv = batch.advantages
        if config.normalize_advantages:
            # Before the first sparse reward the advantages are value-fit noise; a floor
            # on the std keeps normalisation from turning that noise into policy drift.
            adv = (adv - adv.mean()) / jnp.maximum(adv.std(), config.adv_std_floor + 1e-8)
        ratio = jnp.exp(log_prob - batch.log_prob)
        clipped = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
        policy_loss = -jnp.mean(jnp.minimum(ratio * adv, clipped * adv))
        value_loss = 0.5 * jnp.mean(jnp.square(value - batch.returns))
        entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, -1))
        return policy_loss + config.vf_coef * value_loss - ent_coef * entropy

    def sgd_step(carry, batch: Batch, ent_coef):
        net_params, opt_state = carry
        grads = jax.grad(loss_fn)(net_params, batch, ent_coef)
        updates, opt_state = tx.update(grads, opt_state, net_params)
        return (optax.apply_updates(net_params, updates), opt_state), None

    def train(key: jax.Array, params) -> LearningHistory:
        key_init, key_reset, key_loop = jax.random.split(key, 3)
        net_params = network.init(key_init, jnp.zeros((encoder.dim,), jnp.float32))
        opt_state = tx.init(net_params)
        obs, env_state = env.reset(key_reset, params)

        def update(carry, xs):
            net_params, opt_state, obs, env_state = carry
            update_index, key_update = xs
            ent_coef = ent_weight(update_index)
            key_env, key_act, key_perm = jax.random.split(key_update, 3)
            # All randomness of the rollout drawn at once: bulk generation beats one
            # small PRNG call per step. Sampling = argmax(logits + Gumbel noise).
            env_keys = jax.random.split(key_env, T)
            gumbel = jax.random.gumbel(key_act, (T, num_actions))

            def env_step(c, xs):
                obs, env_state = c
                key_step, noise = xs
                x = encoder.encode(obs, env.source_features(env_state))
                logits, value = network.apply(net_params, x)
                log_probs = jax.nn.log_softmax(logits) if internals else None
                action = jnp.argmax(logits + noise).astype(jnp.int32)
                log_prob = jnp.sum(jax.nn.log_softmax(logits) * one_hot(action, num_actions))
                next_obs, next_state, reward, terminated, truncated, info = env.step(
                    key_step, env_state, action, params
                )
                final_x = encoder.encode(
                    info["final_obs"], env.source_features(info["final_state"])
                )
                tr = Transition(
                    obs, x, action, log_prob, value, reward.astype(jnp.float32),
                    terminated, truncated, final_x,
                )
                return (next_obs, next_state), (tr, log_probs)

            (obs, env_state), (traj, log_probs) = jax.lax.scan(
                env_step, (obs, env_state), (env_keys, gumbel),
                unroll=config.rollout_unroll,
            )
            # One batched critic pass over the true successors of all T steps.
            _, next_value = network.apply(net_params, traj.final_x)
            adv = gae(
                traj.reward, traj.value, next_value, traj.terminated,
                jnp.logical_or(traj.terminated, traj.truncated), config.gamma, config.gae_lambda,
            )
            data = Batch(traj.x, traj.action, traj.log_prob, adv.advantages, adv.returns)

            def epoch(c, key_epoch):
                perm = jax.random.permutation(key_epoch, T)
                shuffled = jax.tree.map(
                    lambda a: a[perm].reshape((config.num_minibatches, mb_size) + a.shape[1:]),
                    data,
                )
                return jax.lax.scan(lambda c_, b: sgd_step(c_, b, ent_coef), c, shuffled)[0], None

            acted = net_params  # the parameters this update's rollout acted with
            (new_params, opt_state), _ = jax.lax.scan(
                epoch, (net_params, opt_state), jax.random.split(key_perm, config.num_epochs)
            )
            record = LearningHistory(
                traj.obs, traj.action, traj.reward, traj.terminated, traj.truncated
            )
            if internals:
                record = (record, Internals(log_probs, traj.value,
                                            jnp.full((T,), update_index, jnp.int32)))
            elif snapshots:
                record = (record, acted)
            return (new_params, opt_state, obs, env_state), record

        _, records = jax.lax.scan(
            update,
            (net_params, opt_state, obs, env_state),
            (jnp.arange(config.num_updates), jax.random.split(key_loop, config.num_updates)),
        )
        # (num_updates, T, ...) -> (num_steps, ...): the updates' rollouts are consecutive.
        flat = lambda tree: jax.tree.map(  # noqa: E731
            lambda a: a.reshape((config.num_steps,) + a.shape[2:]), tree)
        if internals:
            return flat(records[0]), flat(records[1])
        if snapshots:
            return flat(records[0]), records[1]
        return flat(records)

    return train
