"""The gymnasium face of every registered environment.

``GymnasiumEnv`` wraps any ``envs.Environment`` as a ``gymnasium.Env`` that passes
``gymnasium.utils.env_checker.check_env``. ``import envs`` registers one id per env in
the project's ``ad/`` namespace (``envs.GYM_IDS``, also exported here)::

    import gymnasium, envs
    env = gymnasium.make("ad/DarkRoom-v0", split="test")      # overrides: size=..., ...
    obs, info = env.reset(seed=0)                              # samples a test goal
    obs, reward, terminated, truncated, info = env.step(1)

Semantics:
- One instance holds one task across its episodes. The task is fixed at construction
  (``task=`` an ``EnvParams`` pytree, e.g. ``DarkRoomParams(goal=...)``), or drawn from
  ``split`` ("train" by default) at the first ``reset`` using that reset's seed, or
  replaced by ``reset(options={"task": params})``. A plain ``reset()`` (with or without
  a seed) keeps the current task.
- Seeding: ``reset(seed=s)`` reseeds ``self.np_random``; every reset draws a fresh JAX
  key from it, and steps split that key, so a seeded run is reproducible.
- Dynamics are the env's own ``reset_env``/``step_env`` (no auto-reset: gymnasium
  callers reset themselves), jitted once per env config (shared by instances).
  Observations come back as NumPy arrays of the observation space's dtype;
  ``terminated``/``truncated`` follow the env (a time limit truncates); ``info``
  carries the env's step info as Python scalars (``has_key`` for Key-to-Door).
- Spaces: an observation ``ArraySpec`` with ``num_values`` becomes
  ``MultiDiscrete(full(shape, num_values))`` (Dark Room family and Key-to-Door:
  ``MultiDiscrete([size, size])``; bandits: ``MultiDiscrete([1])``), one without
  becomes an unbounded ``Box``; a dict of specs becomes a ``Dict`` space. The action
  space is ``Discrete(num_actions)``; any other action raises ``ValueError`` naming the
  action and the valid range.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

import envs
from envs.core import ArraySpec, Environment, check_split

GYM_IDS = envs.GYM_IDS


def spec_to_space(spec: Any) -> spaces.Space:
    """The gymnasium space of an observation spec (an ``ArraySpec`` or a dict of them)."""
    if isinstance(spec, ArraySpec):
        dtype = np.dtype(spec.dtype)
        if spec.num_values is not None:
            return spaces.MultiDiscrete(np.full(spec.shape, spec.num_values), dtype=dtype)
        return spaces.Box(-np.inf, np.inf, spec.shape, dtype)
    if isinstance(spec, dict):
        return spaces.Dict({k: spec_to_space(v) for k, v in spec.items()})
    raise TypeError(f"unsupported observation spec {spec!r}: expected ArraySpec or dict")


def _to_host(tree: Any) -> Any:
    """Device arrays -> NumPy; 0-d arrays -> Python scalars (for info dicts)."""
    tree = jax.device_get(tree)
    return jax.tree.map(lambda x: x.item() if np.ndim(x) == 0 else np.asarray(x), tree)


@functools.lru_cache(maxsize=None)
def _compiled(env: Environment):
    """Jitted reset/step/sample of one env config, shared by all its instances."""

    def step(key, state, action, params):
        key, sub = jax.random.split(key)
        return key, env.step_env(sub, state, action, params)

    return jax.jit(env.reset_env), jax.jit(step), jax.jit(env.sample_params, static_argnums=1)


class GymnasiumEnv(gymnasium.Env):
    """A registered JAX environment holding one task, as a ``gymnasium.Env``."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        env: str | Environment = "darkroom",
        *,
        task: Any = None,
        split: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ):
        """``env``: a registered name (``overrides`` go to ``envs.make``) or an env.

        ``task``: the task to hold (an ``EnvParams`` pytree); ``split``: where to draw
        it from at the first reset when no ``task`` is given (default "train").
        """
        if isinstance(env, Environment):
            if overrides:
                raise ValueError(f"overrides {sorted(overrides)} need an env name, not an instance")
            self.env = env
        else:
            self.env = envs.make(env, **overrides)
        if render_mode is not None:
            raise ValueError(f"render_mode: {self.env.name} has no rendering, got {render_mode!r}")
        if task is not None and split is not None:
            raise ValueError("give either task= or split=, not both")
        self.split = "train" if split is None else split
        check_split(self.split)
        self.render_mode = None
        self.observation_space = spec_to_space(self.env.observation_spec())
        self.action_space = spaces.Discrete(self.env.num_actions)
        # Shape/dtype template of one task, to validate tasks given by the user.
        self._task_template = jax.eval_shape(
            lambda k: self.env.sample_params(k, "train"), jax.random.key(0)
        )
        self._params = None if task is None else self._check_task(task)
        self._state = None
        self._key = None

        self._reset_fn, self._step_fn, self._sample_fn = _compiled(self.env)

    @property
    def task(self) -> Any:
        """The task this instance holds (``None`` until the first reset draws one)."""
        return self._params

    def _check_task(self, task: Any) -> Any:
        task = jax.tree.map(jnp.asarray, task)
        want = jax.tree.structure(self._task_template)
        if jax.tree.structure(task) != want:
            raise ValueError(
                f"task: expected a {self.env.name} params pytree with structure {want}, "
                f"got {jax.tree.structure(task)}"
            )
        for got, ref in zip(jax.tree.leaves(task), jax.tree.leaves(self._task_template)):
            if got.shape != ref.shape:
                raise ValueError(
                    f"task: leaf shape {got.shape} does not match the expected {ref.shape}"
                )
        return jax.tree.map(lambda x, r: x.astype(r.dtype), task, self._task_template)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - {"task"})
        if unknown:
            raise ValueError(f"reset options: unknown key(s) {unknown}; valid: ['task']")
        if "task" in options:
            self._params = self._check_task(options["task"])
        key = jax.random.key(int(self.np_random.integers(0, 2**63 - 1)))
        key_task, key_reset, self._key = jax.random.split(key, 3)
        if self._params is None:
            self._params = self._sample_fn(key_task, self.split)
        obs, self._state = self._reset_fn(key_reset, self._params)
        return self._obs(obs), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if not (
            isinstance(action, (int, np.integer))
            or (isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu")
        ) or isinstance(action, bool) or not 0 <= int(action) < self.env.num_actions:
            raise ValueError(
                f"invalid action {action!r}: {self.env.name} takes an integer in "
                f"[0, {self.env.num_actions - 1}]"
            )
        self._key, out = self._step_fn(self._key, self._state, jnp.int32(action), self._params)
        obs, self._state, reward, terminated, truncated, info = out
        reward, terminated, truncated, info = _to_host((reward, terminated, truncated, info))
        return self._obs(obs), float(reward), bool(terminated), bool(truncated), dict(info)

    def _obs(self, obs: Any) -> Any:
        space = self.observation_space
        if isinstance(space, spaces.Dict):
            return {k: np.asarray(obs[k], space[k].dtype) for k in space}
        return np.asarray(obs, space.dtype)
