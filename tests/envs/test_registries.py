"""Extensible registries: an env and a source defined *outside* the packages, end to end.

``Corridor`` below is a toy env written the way a user would write one (a frozen
dataclass subclass of ``envs.Environment``), registered with ``envs.register`` and run
through gymnasium's ``check_env``. A toy source is written to a module file on
``sys.path`` and named by its module path, as ``Setting.source`` / ``--source`` allow,
and ``experiments.run.run`` chains collect -> distill -> evaluate on the pair.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
import warnings
from typing import ClassVar

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnasium.utils.env_checker import check_env

import envs
import source_agents
from envs.core import ArraySpec, Environment, check_split


# ---------------------------------------------------------------------------------------
# A toy env defined here, outside the envs package
# ---------------------------------------------------------------------------------------
@struct.dataclass
class CorridorParams:
    goal: jax.Array  # () int32, the goal cell


@struct.dataclass
class CorridorState:
    x: jax.Array  # () int32, the agent's cell
    t: jax.Array  # () int32, steps taken in this episode


@dataclasses.dataclass(frozen=True)
class Corridor(Environment):
    """A 1×``length`` corridor: start at cell 0, +1 for every step that ends on the
    invisible goal (a cell 1..length-1). Actions 0 = stay, 1 = right, 2 = left. The
    observation is the cell as an int32 pair (x, 0), like Dark Room's (x, y). Every
    episode lasts ``horizon`` steps. Test goals: ``goal % 3 == 2``."""

    name: ClassVar[str] = "toy-corridor"
    step_uses_key: ClassVar[bool] = False
    reset_uses_key: ClassVar[bool] = False

    length: int = 6  # static
    horizon: int = 6  # static

    def __post_init__(self):
        self._positive(length=self.length, horizon=self.horizon)
        if self.length < 4:
            raise ValueError(f"{self.name}: length must be >= 4, got {self.length}")

    @property
    def num_actions(self) -> int:
        return 3

    def observation_spec(self):
        return ArraySpec((2,), jnp.int32, self.length)

    def _goals(self, split: str) -> np.ndarray:
        check_split(split)
        goals = np.arange(1, self.length, dtype=np.int32)
        test = goals % 3 == 2
        return goals[test if split == "test" else ~test]

    def tasks(self, split: str) -> CorridorParams:
        return CorridorParams(goal=jnp.asarray(self._goals(split)))

    def sample_params(self, key, split: str = "train") -> CorridorParams:
        goals = jnp.asarray(self._goals(split))
        return CorridorParams(goal=goals[jax.random.randint(key, (), 0, goals.shape[0])])

    def optimal_return(self, params: CorridorParams) -> jax.Array:
        return jnp.maximum(self.horizon + 1.0 - params.goal, 0.0)  # arrive after goal steps, stay

    def optimal_action(self, key, state: CorridorState, params: CorridorParams) -> jax.Array:
        right, left = state.x < params.goal, state.x > params.goal
        return jnp.where(right, 1, jnp.where(left, 2, 0)).astype(jnp.int32)

    def _obs(self, x):
        return jnp.stack([x, jnp.int32(0)]).astype(jnp.int32)

    def reset_env(self, key, params):
        state = CorridorState(x=jnp.int32(0), t=jnp.int32(0))
        return self._obs(state.x), state

    def step_env(self, key, state: CorridorState, action, params: CorridorParams):
        dx = jnp.asarray([0, 1, -1], jnp.int32)[action]
        x = jnp.clip(state.x + dx, 0, self.length - 1)
        t = state.t + 1
        reward = (x == params.goal).astype(jnp.float32)
        truncated = t >= self.horizon
        return self._obs(x), CorridorState(x=x, t=t), reward, jnp.bool_(False), truncated, {}


GYM_ID = "ad/ToyCorridor-v0"


@pytest.fixture(scope="module")
def corridor():
    """``toy-corridor`` registered for this module's tests, removed afterwards (other test
    modules check that every registered env is a built-in with a gymnasium id)."""
    envs.register(Corridor.name, Corridor, gym_id=GYM_ID)
    yield Corridor.name
    envs.unregister(Corridor.name)


# ---------------------------------------------------------------------------------------
# A toy source, written to a module file as a user's own package would be
# ---------------------------------------------------------------------------------------
TOY_SOURCE = '''
"""Sweep right until rewarded, then walk back to the remembered goal (ε-noisy, ε -> 0)."""
import dataclasses
import types

import jax
import jax.numpy as jnp

from source_agents.history import LearningHistory


@dataclasses.dataclass(frozen=True)
class Config:
    num_steps: int = 48  # history length in env steps
    epsilon: float = 0.5  # random-action probability at step 0, falling linearly to 0


def make_train(env, config):
    def train(key, params):
        obs, state = env.reset(key, params)

        def step(carry, k):
            obs, state, known, t = carry
            k_eps, k_rand, k_env = jax.random.split(k, 3)
            eps = config.epsilon * (1.0 - t / config.num_steps)
            x = obs[0]
            toward = jnp.where(x < known, 1, jnp.where(x > known, 2, 0))
            planned = jnp.where(known < 0, 1, toward)  # unknown goal: keep sweeping right
            noisy = jax.random.uniform(k_eps) < eps
            action = jnp.where(noisy, jax.random.randint(k_rand, (), 0, env.num_actions),
                               planned).astype(jnp.int32)
            nobs, nstate, r, term, trunc, info = env.step(k_env, state, action, params)
            known = jnp.where(r > 0, info["final_obs"][0], known)
            return (nobs, nstate, known, t + 1), (obs, action, r, term, trunc)

        init = (obs, state, jnp.int32(-1), jnp.int32(0))
        keys = jax.random.split(key, config.num_steps)
        _, (o, a, r, te, tr) = jax.lax.scan(step, init, keys)
        return LearningHistory(obs=o, action=a, reward=r, terminated=te, truncated=tr)

    return train


# the "pkg.mod:attr" form names an object like this one
source = types.SimpleNamespace(Config=Config, make_train=make_train)
'''


@pytest.fixture
def source_dir(tmp_path, monkeypatch):
    """A directory on ``sys.path`` holding the package ``toy_pkg`` with the toy source
    (``toy_pkg.sweep``) and a module lacking ``make_train`` (``toy_pkg.half``)."""
    pkg = tmp_path / "src" / "toy_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sweep.py").write_text(textwrap.dedent(TOY_SOURCE))
    (pkg / "half.py").write_text("import dataclasses\n\n@dataclasses.dataclass(frozen=True)\n"
                                 "class Config:\n    num_steps: int = 8\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield tmp_path
    for name in [m for m in sys.modules if m == "toy_pkg" or m.startswith("toy_pkg.")]:
        del sys.modules[name]


# ---------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------
def test_registered_env_is_made_and_listed(corridor):
    assert corridor in envs.registered()
    assert envs.GYM_IDS[corridor] == GYM_ID
    env = envs.make(corridor, length=7)
    assert isinstance(env, Corridor) and env.length == 7
    tasks = env.tasks("test")
    np.testing.assert_array_equal(tasks.goal, [2, 5])
    np.testing.assert_array_equal(env.tasks("train").goal, [1, 3, 4, 6])
    np.testing.assert_allclose(jax.vmap(env.optimal_return)(tasks), [5.0, 2.0])
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['size'\]"):
        envs.make(corridor, size=3)


def test_registered_env_passes_gymnasium_check_env(corridor):
    env = gymnasium.make(GYM_ID, split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures
        check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0, 0]
    assert env.observation_space == gymnasium.spaces.MultiDiscrete([6, 6], dtype=np.int32)
    goal = int(env.unwrapped.task.goal)
    rewards = [env.step(1 if t < goal else 0)[1] for t in range(6)]
    assert sum(rewards) == 7 - goal  # the optimal return


def test_make_unknown_name_lists_registered(corridor):
    with pytest.raises(ValueError,
                       match=r"unknown environment 'nope'; registered: .*darkroom.*toy-corridor"):
        envs.make("nope")


def test_register_errors(corridor):
    with pytest.raises(ValueError, match="non-empty string"):
        envs.register("", Corridor)
    with pytest.raises(ValueError, match="'darkroom' is already registered"):
        envs.register("darkroom", envs.DarkRoom)
    with pytest.raises(ValueError, match="'toy-corridor' is already registered"):
        envs.register(corridor, Corridor)
    with pytest.raises(TypeError, match="dict is not a subclass of envs.core.Environment"):
        envs.register("thing", dict)
    with pytest.raises(TypeError, match="not a subclass of envs.core.Environment"):
        envs.register("thing", Corridor())  # an instance, not the class
    with pytest.raises(ValueError, match=r"Corridor.name is 'toy-corridor'"):
        envs.register("other-corridor", Corridor)

    @dataclasses.dataclass(frozen=True)
    class Other(Corridor):
        name: ClassVar[str] = "other-corridor"

    with pytest.raises(ValueError, match="project's ad/ namespace"):
        envs.register("other-corridor", Other, gym_id="OtherCorridor-v0")
    with pytest.raises(ValueError, match="already belongs to environment 'darkroom'"):
        envs.register("other-corridor", Other, gym_id="ad/DarkRoom-v0")
    with pytest.raises(ValueError, match="bad gym_id"):
        envs.register("other-corridor", Other, gym_id="ad/not an id!")
    assert "other-corridor" not in envs.registered()  # nothing half-registered


def test_register_overwrite_and_unregister(corridor):
    @dataclasses.dataclass(frozen=True)
    class Longer(Corridor):
        length: int = 9

    envs.register(corridor, Longer, gym_id=GYM_ID, overwrite=True)
    try:
        assert envs.make(corridor).length == 9
        assert gymnasium.make(GYM_ID).observation_space.nvec.tolist() == [9, 9]
    finally:
        envs.register(corridor, Corridor, gym_id=GYM_ID, overwrite=True)
    assert envs.make(corridor).length == 6

    @dataclasses.dataclass(frozen=True)
    class Temp(Corridor):
        name: ClassVar[str] = "temp-corridor"

    envs.register("temp-corridor", Temp, gym_id="ad/TempCorridor-v0")
    assert "ad/TempCorridor-v0" in gymnasium.registry
    envs.unregister("temp-corridor")
    assert "temp-corridor" not in envs.registered() and "temp-corridor" not in envs.GYM_IDS
    assert "ad/TempCorridor-v0" not in gymnasium.registry
    with pytest.raises(ValueError, match="unknown environment 'temp-corridor'"):
        envs.unregister("temp-corridor")


def test_builtins_use_the_same_registry(corridor):
    builtins = {"darkroom", "key-to-door", "bernoulli-bandit", "minigrid-fourrooms"}
    assert builtins <= set(envs.registered())
    assert sorted(envs.GYM_IDS) == envs.registered()  # built-ins and the toy alike
    assert envs.GYM_IDS["darkroom"] == "ad/DarkRoom-v0"
    assert envs.make("darkroom").name == "darkroom"


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------
def test_source_by_module_path(source_dir, corridor):
    src = source_agents.get("toy_pkg.sweep")
    assert src.__name__ == "toy_pkg.sweep"
    assert source_agents.get("toy_pkg.sweep:source").Config is src.Config  # "pkg.mod:attr"
    env = envs.make(corridor)
    tasks = env.tasks("test")
    train = jax.jit(jax.vmap(src.make_train(env, src.Config(num_steps=24, epsilon=0.0))))
    hist = train(jax.random.split(jax.random.key(0), 2), tasks)
    assert hist.action.shape == (2, 24) and hist.obs.shape == (2, 24, 2)
    returns = np.asarray(hist.reward).reshape(2, 4, 6).sum(-1)
    # noiseless: sweep right onto the goal, then stay there (and walk back in later episodes)
    optimum = np.asarray(jax.vmap(env.optimal_return)(tasks))
    np.testing.assert_allclose(returns, np.broadcast_to(optimum[:, None], (2, 4)))


def test_source_register_and_get(source_dir):
    source_agents.register("toy-sweep", "toy_pkg.sweep")
    try:
        assert "toy-sweep" in source_agents.registered()
        assert source_agents.get("toy-sweep").__name__ == "toy_pkg.sweep"
        with pytest.raises(ValueError, match="'toy-sweep' is already registered"):
            source_agents.register("toy-sweep", "toy_pkg.other")
        noise = source_agents.get("noise")
        source_agents.register("toy-sweep", noise, overwrite=True)  # an object works too
        assert source_agents.get("toy-sweep") is noise
    finally:
        source_agents.unregister("toy-sweep")
    assert "toy-sweep" not in source_agents.registered()


def test_source_errors(source_dir):
    with pytest.raises(ValueError,
                       match=r"unknown source 'nope'; registered: .*noise, ppo.*module path"):
        source_agents.get("nope")
    with pytest.raises(ValueError, match=r"'toy_pkg.half' has no make_train"):
        source_agents.get("toy_pkg.half")
    with pytest.raises(ValueError, match="cannot import module 'toy_pkg.absent'"):
        source_agents.get("toy_pkg.absent")
    with pytest.raises(ValueError, match="has no attribute 'nothing'"):
        source_agents.get("toy_pkg.sweep:nothing")
    with pytest.raises(ValueError, match="already registered"):
        source_agents.register("ppo", "toy_pkg.sweep")
    with pytest.raises(ValueError, match="non-empty string"):
        source_agents.register("", "toy_pkg.sweep")
    with pytest.raises(ValueError, match="lacks make_train"):
        source_agents.register("half", type("Half", (), {"Config": int})())
    with pytest.raises(ValueError, match="not a module path"):
        source_agents.register("bad", "not a path")


# ---------------------------------------------------------------------------------------
# End to end: collect -> distill -> evaluate on the toy env with the toy source
# ---------------------------------------------------------------------------------------
def test_run_end_to_end_on_user_env_and_source(tmp_path, source_dir, corridor):
    from ad.dataset import load_dataset
    from experiments.run import run
    from experiments.settings import Setting

    setting = Setting(
        name="toy-corridor-sweep", env=corridor, source="toy_pkg.sweep", histories=6,
        source_overrides=dict(num_steps=48),
        distill=dict(context=12, window=24, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                     dropout=0.0, batch_size=8, num_steps=8, lr=1e-3, warmup_steps=2),
        eval_episodes=4, eval_tasks=2, eval_rollouts_per_task=2, report_episodes=(1, 4))
    record = run(setting, data_root=tmp_path / "data", runs_root=tmp_path / "runs",
                 out_root=tmp_path / "results", quiet=True)

    ds = load_dataset(tmp_path / "data" / setting.name)
    assert ds.spec.env == corridor and ds.spec.source == "toy_pkg.sweep"
    assert ds.spec.source_config == {"num_steps": 48, "epsilon": 0.5}

    saved = json.loads((tmp_path / "results" / setting.name / "eval.json").read_text())
    assert saved["setting"]["source"] == "toy_pkg.sweep"
    held_out = saved["results"]["test"]
    assert held_out["optimal_mean_return"] == pytest.approx(3.5)  # goals 2 and 5: 5 and 2
    assert set(held_out["curves"]) == {"AD", "source", "random"}
    assert held_out["curves"]["AD"]["rows"] == 4  # 1 model x 2 held-out goals x 2 rollouts
    for label, curve in held_out["curves"].items():
        assert len(curve["mean"]) == setting.eval_episodes, label
        assert np.all(np.isfinite(curve["mean"])), label
        assert all(0.0 <= m <= 5.0 for m in curve["mean"]), label
    assert record["summary"]["test"]["AD"]["by_episode_4"] is not None
