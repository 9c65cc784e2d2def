"""Tests of the gymnasium face (envs.gym): check_env, task holding, seeding, parity."""

from __future__ import annotations

import warnings

import gymnasium
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.bandits import BanditParams
from envs.darkroom import DarkRoomParams
from envs.gym import GYM_IDS, GymnasiumEnv
from envs.key_to_door import KeyToDoorParams


def test_every_registered_env_has_an_id_in_our_namespace():
    assert sorted(GYM_IDS) == envs.registered()
    assert GYM_IDS["darkroom"] == "ad/DarkRoom-v0"
    assert GYM_IDS["key-to-door"] == "ad/KeyToDoor-v0"
    for gym_id in GYM_IDS.values():
        assert gym_id.startswith("ad/") and gym_id in gymnasium.registry


# MiniGrid ids: check_env on a few below (each costs a compile).
@pytest.mark.parametrize("gym_id", sorted(v for k, v in GYM_IDS.items()
                                          if not k.startswith("minigrid-")))
def test_check_env(gym_id):
    env = gymnasium.make(gym_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", ["minigrid-fourrooms-dark", "minigrid-doorkey-5x5"])
def test_minigrid_gym_ids_pass_check_env(name):
    gym_id = GYM_IDS[name]
    assert gym_id.startswith("ad/MiniGrid-") and gym_id in gymnasium.registry
    env = gymnasium.make(gym_id, split="test")
    assert isinstance(env.observation_space, gymnasium.spaces.Dict)
    assert env.observation_space["image"].shape == (7, 7, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


def test_spaces():
    dr = gymnasium.make("ad/DarkRoom-v0", size=7)
    assert dr.observation_space == gymnasium.spaces.MultiDiscrete([7, 7], dtype=np.int32)
    assert dr.action_space == gymnasium.spaces.Discrete(5)
    bandit = gymnasium.make("ad/BernoulliBandit-v0", num_arms=3)
    assert bandit.observation_space == gymnasium.spaces.MultiDiscrete([1], dtype=np.int32)
    assert bandit.action_space == gymnasium.spaces.Discrete(3)


def test_darkroom_task_held_across_episodes_and_replaced_by_options():
    env = GymnasiumEnv("darkroom", task=DarkRoomParams(goal=jnp.asarray([5, 4])))
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [4, 4] and obs.dtype == np.int32
    rewards = []
    for t in range(20):
        obs, r, terminated, truncated, _ = env.step(1 if t == 0 else 0)
        rewards.append(r)
        assert not terminated and truncated == (t == 19)
    assert rewards == [1.0] * 20  # arrive, then the no-op keeps paying
    env.reset()  # a plain reset keeps the goal
    assert env.step(1)[1] == 1.0
    env.reset(options={"task": DarkRoomParams(goal=jnp.asarray([3, 4]))})
    assert env.step(1)[1] == 0.0
    env.reset(seed=5)  # reseeding keeps the task too
    assert env.step(2)[1] == 1.0


def test_split_sampling_is_seeded_and_held():
    test_goals = {tuple(g) for g in np.asarray(envs.make("darkroom").tasks("test").goal).tolist()}
    goals = []
    for seed in range(6):
        env = gymnasium.make("ad/DarkRoom-v0", split="test")
        env.reset(seed=seed)
        goal = tuple(np.asarray(env.unwrapped.task.goal).tolist())
        assert goal in test_goals
        env.reset()
        assert tuple(np.asarray(env.unwrapped.task.goal).tolist()) == goal
        goals.append(goal)
    again = gymnasium.make("ad/DarkRoom-v0", split="test")
    again.reset(seed=3)
    assert tuple(np.asarray(again.unwrapped.task.goal).tolist()) == goals[3]
    assert len(set(goals)) > 1


def test_key_to_door_seeded_starts_info_and_rewards():
    params = KeyToDoorParams(key_cell=jnp.asarray([2, 2]), door_cell=jnp.asarray([4, 2]))
    env = GymnasiumEnv("key-to-door", task=params)
    starts = [tuple(env.reset(seed=s)[0].tolist()) for s in range(10)]
    assert starts == [tuple(env.reset(seed=s)[0].tolist()) for s in range(10)]
    assert len(set(starts)) > 3
    # Walk to the key then the door from wherever we start: +1, +1, terminated.
    obs, _ = env.reset(seed=0)
    total, info, terminated = 0.0, {}, False
    for target in ([2, 2], [4, 2]):
        while not terminated:
            dx, dy = target[0] - obs[0], target[1] - obs[1]
            action = 1 if dx > 0 else 2 if dx < 0 else 3 if dy > 0 else 4 if dy < 0 else 0
            obs, r, terminated, truncated, info = env.step(action)
            total += r
            assert not truncated
            if r:
                break
        if target == [2, 2]:
            assert info["has_key"] is True
    assert total == 2.0 and terminated and obs.tolist() == [4, 2]


def test_bandit_pulls_terminate_and_pay_by_mean():
    env = GymnasiumEnv(
        "bernoulli-bandit", num_arms=2, task=BanditParams(means=jnp.asarray([0.0, 1.0]))
    )
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0]
    for arm, want in [(0, 0.0), (1, 1.0), (1, 1.0), (0, 0.0)]:
        obs, r, terminated, truncated, _ = env.step(arm)
        assert (r, terminated, truncated) == (want, True, False)
        env.reset()
    adv = gymnasium.make("ad/AdversarialBandit-v0", split="test")
    adv.reset(seed=1)
    assert adv.unwrapped.task.means.shape == (10,)


@pytest.mark.parametrize("action", [5, -1, 1.5, "left", True, np.array([1])])
def test_invalid_action_raises(action):
    env = GymnasiumEnv("darkroom")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid action .* integer in \[0, 4\]"):
        env.step(action)


def test_numpy_integer_actions_accepted():
    env = GymnasiumEnv("darkroom", task=DarkRoomParams(goal=jnp.asarray([5, 4])))
    env.reset(seed=0)
    assert env.step(np.int64(1))[1] == 1.0
    assert env.step(np.array(0, dtype=np.int32))[1] == 1.0


def test_bad_construction_and_options():
    with pytest.raises(ValueError, match="registered"):
        GymnasiumEnv("nope")
    with pytest.raises(ValueError, match="size"):
        gymnasium.make("ad/DarkRoom-v0", size=0)
    with pytest.raises(ValueError, match="either task= or split="):
        GymnasiumEnv("darkroom", task=DarkRoomParams(goal=jnp.asarray([1, 1])), split="test")
    with pytest.raises(ValueError, match="split"):
        GymnasiumEnv("darkroom", split="validation")
    env = GymnasiumEnv("darkroom")
    with pytest.raises(ValueError, match="task: leaf shape"):
        env.reset(options={"task": DarkRoomParams(goal=jnp.asarray([1, 1, 1]))})
    with pytest.raises(ValueError, match="unknown key"):
        env.reset(options={"goal": [1, 1]})
    with pytest.raises(RuntimeError, match="reset"):
        GymnasiumEnv("darkroom").step(0)
