"""In-context evaluation: does a distilled model improve, episode after episode, on new tasks?

The model acts in a JAX env for ``num_episodes`` consecutive episodes of one task, with
its own growing context: at every step it sees ``obs[t]`` and the previous step's record
(``ad.inputs``: the one input builder, as in training), *samples* ``action[t]`` from its
policy, and the env steps (auto-resetting into the next
episode of the same task). Everything is one jitted ``lax.scan`` over steps, vmapped
over tasks, with the rolling KV cache of ``ad.model.decode_step`` (exact: equal to a full
forward over the whole stream with the same banded mask), so evaluation costs
O(L·c·d) per step however long the stream gets.

Baselines on the same tasks: the source algorithm's own learning curve (it learns from
scratch on each held-out task), a uniformly random policy, and the optimum
(``env.optimal_return``). Expert Distillation is evaluated with the same function.

Prompting (the paper's check): ``prompt=`` a batch of histories (e.g. a half-trained
source's episodes on the same tasks) is fed through the cache first, then the model
continues acting from a fresh episode.

The same policy in any ``gymnasium`` env (e.g. the real ``minigrid`` package):
``gym_rollout``, a Python loop over a jitted one-step decode that draws its sampling keys
as ``ad_rollout`` does, so on the same task and key the two take the same actions.

"By episode k" (the issue's metric) = the mean over episodes k−4 … k+5 (1-based), over
tasks and rollouts: ``by_episode(curve, k)``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad.config import ModelConfig
from ad.hooks import Intervention
from ad.inputs import Previous, after_step, one_step_inputs, stream_start
from ad.model import decode_step, init_cache
from source_agents.history import LearningHistory, episode_returns_jax

PyTree = Any


class Rollout(NamedTuple):
    """Per-step record of an in-context rollout, leaves (N, S)."""

    action: jax.Array  # (N, S) int32
    reward: jax.Array  # (N, S) float32
    done: jax.Array  # (N, S) bool: the step ended an episode
    obs: PyTree = None  # (N, S, ...) the observation each action was taken at (record_policy)
    policy: jax.Array | None = None  # (N, S, A) float32: the sampled-from policy (record_policy)
    activations: dict | None = None  # {hook name: (N, S, ...)} (record=): decode-step values


class Resample(NamedTuple):
    """Resample ablation in closed loop: a donor stream runs beside the rollout, in context
    on its own tasks (its own actions, no intervention), and at each step the selected
    entries of the named hooks take the donor's values of that step."""

    tasks: PyTree  # leaves (N, ...): the donor task of each rollout
    where: dict  # {hook name: bool mask broadcastable to the decode-step activation}


def check_temperature(temperature: float) -> None:
    """Refuse a sampling temperature that is not > 0 (it would divide the logits by zero
    or flip their order). Static under jit, so inside a rollout it runs at trace time."""
    if not temperature > 0:
        raise ValueError(f"sampling temperature must be > 0, got {temperature!r}")


@partial(jax.jit, static_argnames=("config", "env", "num_steps", "temperature",
                                   "record_policy", "feedback", "record"))
def ad_rollout(params: PyTree, config: ModelConfig, env, tasks: PyTree, key: jax.Array,
               num_steps: int, temperature: float = 1.0,
               prompt: LearningHistory | None = None, record_policy: bool = False, *,
               hooks: dict | None = None, resample: Resample | None = None,
               feedback=None, record: tuple[str, ...] = ()) -> Rollout:
    """Run the model in context on ``N`` tasks (``tasks`` leaves (N, ...)) for ``num_steps``.

    ``temperature`` scales the logits before sampling (1.0 = the policy itself; argmax
    policies are known to freeze on one action in Dark Room, so we sample).
    ``record_policy`` also returns each step's observation and sampling distribution.

    Looking inside while it learns (``ad.hooks``):
    - ``hooks``: ``{hook name: Intervention}`` applied at every decode step (an
      intervention whose fields span ``num_steps`` steps' positions applies each step's
      slice), e.g. ``ablate("blocks.1.attn.hook_z", config, heads=2)``.
    - ``resample``: a ``Resample`` (donor tasks and masks) — resample ablation.
    - ``feedback``: an input edit in closed loop, ``feedback.init(N) -> state`` and
      ``feedback(state, prev, t) -> (state, prev_seen)``: what the model reads of the
      previous step (``Previous``) is replaced by ``prev_seen`` before the one input
      builder; the env and the returned record are untouched (e.g. rewards zeroed or
      flipped as they are fed back: ``ad.interp.streams``). ``t`` counts the rollout's
      steps; a ``prompt`` is fed unedited, and the first rollout step then reads the
      prompt's last step.
    - ``record``: hook names whose decode-step values are returned per step in
      ``Rollout.activations``.
    With none of these the rollout is the plain one, bit for bit.
    """
    check_temperature(temperature)
    n = jax.tree.leaves(tasks)[0].shape[0]
    cache = init_cache(config, n)
    reset_key, key = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, n), tasks)
    prev = stream_start((n,), obs, config.num_actions)  # what each stream's first step reads
    hooks = dict(hooks or {})

    def decode(cache, obs, prev, step_hooks):
        out = decode_step(params, config, cache, one_step_inputs(obs, prev, config),
                          hooks=step_hooks, capture=record or None)
        return out if record else (*out, None)

    if prompt is not None:  # teacher-force a given context into the cache first
        def feed(carry, xs):
            cache, prev = carry
            obs, action, reward, done = xs
            _, cache = decode_step(params, config, cache, one_step_inputs(obs, prev, config))
            return (cache, after_step(action, reward, done, obs)), None

        xs = (jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), prompt.obs),
              prompt.action.T, prompt.reward.T,
              jnp.logical_or(prompt.terminated, prompt.truncated).T)
        (cache, prev), _ = jax.lax.scan(feed, (cache, prev), xs)

    def env_step(env_key, state, action, tasks):
        next_obs, state, reward, terminated, truncated, _ = jax.vmap(env.step)(
            jax.random.split(env_key, n), state, action, tasks)
        return next_obs, state, reward, jnp.logical_or(terminated, truncated)

    donor = None
    if resample is not None:  # the donor stream: its own reset, actions and env steps
        d_key = jax.random.fold_in(reset_key, 1)
        d_obs, d_state = jax.vmap(env.reset)(jax.random.split(d_key, n), resample.tasks)
        donor = (init_cache(config, n), d_obs, d_state,
                 stream_start((n,), d_obs, config.num_actions))

    def body(carry, xs):
        cache, obs, state, prev, fb_state, donor = carry
        step_key, t = xs
        act_key, env_key = jax.random.split(step_key)
        step_hooks = dict(hooks)
        if donor is not None:
            d_cache, d_obs, d_state, d_prev = donor
            d_act_key, d_env_key = jax.random.split(jax.random.fold_in(step_key, 1))
            d_logits, d_cache, d_acts = decode_step(
                params, config, d_cache, one_step_inputs(d_obs, d_prev, config),
                capture=tuple(resample.where))
            d_action = jax.random.categorical(d_act_key, d_logits / temperature)
            d_action = d_action.astype(jnp.int32)
            d_next, d_state, d_reward, d_done = env_step(d_env_key, d_state, d_action,
                                                         resample.tasks)
            donor = (d_cache, d_next, d_state, after_step(d_action, d_reward, d_done, d_obs))
            for name, mask in resample.where.items():
                step_hooks[name] = Intervention(where=jnp.asarray(mask),
                                                scale=jnp.zeros((), jnp.float32),
                                                value=d_acts[name])
        seen = prev
        if feedback is not None:
            fb_state, seen = feedback(fb_state, prev, t)
        logits, cache, acts = decode(cache, obs, seen, step_hooks)
        action = jax.random.categorical(act_key, logits / temperature).astype(jnp.int32)
        next_obs, state, reward, done = env_step(env_key, state, action, tasks)
        carry = (cache, next_obs, state, after_step(action, reward, done, obs), fb_state, donor)
        out = Rollout(action, reward, done, activations=acts)
        if record_policy:
            out = out._replace(obs=obs, policy=jax.nn.softmax(logits / temperature, axis=-1))
        return carry, out

    fb_state = feedback.init(n) if feedback is not None else None
    carry = (cache, obs, state, prev, fb_state, donor)
    _, out = jax.lax.scan(body, carry, (jax.random.split(key, num_steps),
                                        jnp.arange(num_steps, dtype=jnp.int32)))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)


@partial(jax.jit, static_argnames=("env", "num_steps", "policy"))
def policy_rollout(env, tasks: PyTree, key: jax.Array, num_steps: int, policy) -> Rollout:
    """A memoryless policy on ``N`` tasks: ``policy(key, obs) -> (N,) actions`` sees the
    batched observations (leaves (N, ...)); one jitted scan, like ``ad_rollout``."""
    n = jax.tree.leaves(tasks)[0].shape[0]
    reset_key, key = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, n), tasks)

    def body(carry, step_key):
        obs, state = carry
        act_key, env_key = jax.random.split(step_key)
        action = jnp.asarray(policy(act_key, obs), jnp.int32)
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step)(
            jax.random.split(env_key, n), state, action, tasks)
        return (obs, state), Rollout(action, reward, jnp.logical_or(terminated, truncated))

    _, out = jax.lax.scan(body, (obs, state), jax.random.split(key, num_steps))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)


def source_learning(source, config, env, tasks: PyTree, key: jax.Array,
                    num_episodes: int | None = None) -> tuple[LearningHistory, np.ndarray]:
    """The source algorithm learning every task of ``tasks`` from scratch (one history
    each, ``jit(vmap)``-ed), and its ``(N, E)`` per-episode returns, ``E`` = the fewest
    episodes any history completed (at most ``num_episodes`` when given)."""
    n = jax.tree.leaves(tasks)[0].shape[0]
    train = jax.jit(jax.vmap(source.make_train(env, config)))
    history = train(jax.random.split(key, n), tasks)
    done = jnp.logical_or(history.terminated, history.truncated)
    available = int(np.asarray(done).sum(-1).min())
    return history, episode_curve(history, min(num_episodes or available, available))


@dataclasses.dataclass(frozen=True)
class UniformPolicy:
    """Uniform actions for a batch of ``n`` streams (hashable: a static jit argument)."""
    n: int
    num_actions: int

    def __call__(self, key, obs):
        return jax.random.randint(key, (self.n,), 0, self.num_actions)


def random_rollout(env, tasks: PyTree, key: jax.Array, num_steps: int) -> Rollout:
    """A uniformly random policy on the same tasks (the floor of every curve)."""
    n = jax.tree.leaves(tasks)[0].shape[0]
    return policy_rollout(env, tasks, key, num_steps, UniformPolicy(n, env.num_actions))


def episode_curve(rollout_or_history, num_episodes: int) -> np.ndarray:
    """(N, num_episodes) returns of the first ``num_episodes`` completed episodes."""
    r = rollout_or_history
    done = r.done if hasattr(r, "done") else jnp.logical_or(r.terminated, r.truncated)
    reward = jnp.asarray(r.reward, jnp.float32)
    curve = jax.vmap(lambda rew, d: episode_returns_jax(rew, d, num_episodes + 1))(reward, done)
    completed = jnp.asarray(done).sum(-1)
    if int(completed.min()) < num_episodes:
        raise ValueError(f"episode_curve: only {int(completed.min())} episodes completed, "
                         f"asked for {num_episodes}")
    return np.asarray(curve[:, :num_episodes])


def by_episode_rows(curve: np.ndarray, k: int) -> np.ndarray:
    """The issue's "by episode k" of each row: mean over episodes k−4 … k+5 (1-based)."""
    lo, hi = max(k - 5, 0), min(k + 5, curve.shape[-1])
    return np.mean(np.asarray(curve)[..., lo:hi], axis=-1)


def by_episode(curve: np.ndarray, k: int) -> float:
    """The issue's "by episode k": mean over episodes k−4 … k+5 (1-based), all rows."""
    return float(np.mean(by_episode_rows(curve, k)))


def episodes_to(curve: np.ndarray, level: float) -> int | None:
    """First episode k (1-based) whose "by episode k" value (``by_episode``, all rows)
    reaches ``level``; None if none within the curve. "Is AD faster than its source":
    ``episodes_to(curve, 0.5 * optimum)`` for each, on the same held-out tasks."""
    E = curve.shape[-1]
    for k in range(1, E + 1):
        if by_episode(curve, k) >= level:
            return k
    return None


def mean_and_ci(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over rows and the 95% normal confidence half-width (1.96 standard errors)."""
    curves = np.asarray(curves, np.float64)
    n = curves.shape[0]
    se = curves.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(curves.shape[1:])
    return curves.mean(axis=0), 1.96 * se


def repeat_tasks(tasks: PyTree, times: int) -> PyTree:
    """Each task ``times`` times in a row (several rollouts per task)."""
    return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), times, axis=0), tasks)


def eval_tasks(env, split: str, num_tasks: int, key: jax.Array) -> PyTree:
    """Every task of ``split`` for finite task sets (a fixed random subset of ``num_tasks``
    when there are more, e.g. Key-to-Door's 1,313 held-out pairs), else ``num_tasks``
    sampled ones."""
    if env.finite_tasks:
        tasks = env.tasks(split)
        n = jax.tree.leaves(tasks)[0].shape[0]
        if n <= num_tasks:
            return tasks
        keep = jnp.sort(jax.random.choice(key, n, (num_tasks,), replace=False))
        return jax.tree.map(lambda x: x[keep], tasks)
    return jax.vmap(lambda k: env.sample_params(k, split))(jax.random.split(key, num_tasks))


# ----------------------------------------------------------------------------------------
# The same policy in any gymnasium env, by a plain Python loop
# ----------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("config", "temperature"))
def _policy_step(params: PyTree, config: ModelConfig, cache, obs, prev: Previous, step_key,
                 temperature: float = 1.0):
    """One step of ``ad_rollout``'s loop body for a batch of one: sample, update the cache."""
    act_key, _ = jax.random.split(step_key)  # the second half is ad_rollout's env key
    logits, cache = decode_step(params, config, cache, one_step_inputs(obs, prev, config))
    action = jax.random.categorical(act_key, logits / temperature).astype(jnp.int32)
    return action, cache


def _model_obs(config: ModelConfig, obs):
    """A gymnasium observation as the model's observation pytree (batch of one)."""
    if config.obs_encoder == "minigrid":  # minigrid's obs also carries "mission" (a string)
        obs = {"image": obs["image"], "direction": obs["direction"]}
    return jax.tree.map(lambda x: np.asarray(x)[None], obs)


def gym_rollout(params: PyTree, config: ModelConfig, gym_env, reset_seed: int | None,
                key: jax.Array, num_episodes: int, *, temperature: float = 1.0,
                num_steps: int | None = None) -> Rollout:
    """Run the model in context in a ``gymnasium`` env for ``num_episodes`` episodes.

    The policy is ``ad_rollout``'s, stepped by a Python loop with a jitted single-step
    decode (rolling KV cache): at every step the model sees ``(obs, action[t-1],
    reward[t-1])`` across episode boundaries, as in ``ad_rollout``. ``gym_env`` is any
    ``gymnasium.Env`` whose observations match ``config`` (for the "minigrid" encoder:
    a dict with ``"image"`` and ``"direction"``; other keys are ignored) and whose actions
    are ``Discrete(config.num_actions)``; it is reset with ``reset(seed=reset_seed)`` at
    the start of every episode (for ``minigrid``: the layout of that seed, every time).

    Randomness is drawn exactly as ``ad_rollout`` draws it for a batch of one task:
    ``_, key = split(key)``, step ``t`` uses ``split(key, num_steps)[t]``, split again into
    the sampling key and the (here unused) env key. So on the same task, with the same
    ``key``, the actions equal ``ad_rollout``'s step by step while the observations and
    rewards do. Row ``t`` of a threefry split does not depend on its length (JAX's
    default ``jax_threefry_partitionable``), so ``num_steps`` is only needed without it.

    Returns a ``Rollout`` of NumPy arrays of shape ``(S,)``: one entry per step taken.
    """
    if num_episodes < 1:
        raise ValueError(f"gym_rollout: num_episodes must be >= 1, got {num_episodes}")
    check_temperature(temperature)
    partitionable = jax.config.jax_threefry_partitionable
    if num_steps is None and not partitionable:
        raise ValueError("gym_rollout: without jax_threefry_partitionable the step keys depend "
                         "on num_steps; pass the num_steps of the ad_rollout to match")
    _, key = jax.random.split(key)  # ad_rollout's reset key is unused: gym_env resets itself
    bound = num_steps or 1024
    step_keys = jax.random.split(key, bound)
    cache = init_cache(config, 1)
    prev = None  # the stream-start record, made at the first step (it needs obs's shape)
    actions, rewards, dones = [], [], []
    t = 0
    for _ in range(num_episodes):
        obs, _ = gym_env.reset(seed=reset_seed)
        done = False
        while not done:
            if t >= bound:
                if num_steps is not None:
                    raise ValueError(f"gym_rollout: {num_episodes} episodes need more than "
                                     f"num_steps={num_steps} steps")
                bound *= 2
                step_keys = jax.random.split(key, bound)
            model_obs = _model_obs(config, obs)
            if prev is None:
                prev = stream_start((1,), model_obs, config.num_actions, np)
            action, cache = _policy_step(params, config, cache, model_obs, prev,
                                         step_keys[t], temperature)
            a = int(action[0])
            obs, reward, terminated, truncated, _ = gym_env.step(a)
            done = bool(terminated or truncated)
            prev = after_step(np.asarray(action), np.asarray([reward]), np.asarray([done]),
                              model_obs)
            actions.append(a)
            rewards.append(float(reward))
            dones.append(done)
            t += 1
    return Rollout(np.asarray(actions, np.int32), np.asarray(rewards, np.float32),
                   np.asarray(dones, bool))
