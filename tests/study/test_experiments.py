"""The study's experiment-specific measures, by hand, and every command's --help."""

import importlib

import numpy as np
import pytest

from experiments.study import common as C
from experiments.study import exploration, fingerprint, goal_switch, information


def test_coverage_and_steps_to_goals_by_hand():
    # from the centre (4, 4): right, right, left, no-op  -> cells (5,4), (6,4), (5,4), (5,4)
    obs = np.array([[[4, 4], [5, 4], [6, 4], [5, 4]]])
    action = np.array([[1, 1, 2, 0]])
    np.testing.assert_array_equal(exploration.coverage(obs, action, 9), [[2, 3, 3, 3]])
    goals = np.array([[6, 4], [5, 4], [0, 0]])
    np.testing.assert_array_equal(exploration.steps_to_goals(obs, action, goals, 9), [[2, 1, 5]])


def test_ending_with_first_reach():
    returns = np.array([[0, 0, 0, 0, 0, 0, 3, 5], [0, 2, 0, 0, 0, 0, 0, 0], [0] * 8])
    idx, found = information.ending_with_first_reach(returns, k=5)
    np.testing.assert_array_equal(idx[0], [2, 3, 4, 5, 6])  # ends with episode 6
    np.testing.assert_array_equal(idx[1], [0, 1, 2, 3, 4])  # first reach before the 5th
    np.testing.assert_array_equal(found, [True, True, False])


def test_recovery_is_the_first_episode_at_half_the_optimum():
    curve = np.array([[0, 5, 9, 12, 2], [0, 0, 0, 0, 0]], float)
    np.testing.assert_array_equal(goal_switch.recovery(curve, np.array([20.0, 20.0])), [4, 6])


def test_fit_temperature_recovers_the_temperature_that_made_the_policy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 40, 5))
    T = fingerprint.TEMPERATURES[37]
    pi = np.exp(fingerprint.log_softmax(values, T))
    assert fingerprint.fit_temperature(values, pi) == pytest.approx(T)


@pytest.mark.parametrize("name", ["rewards", "position", "information", "exploration",
                                  "goal_switch", "fingerprint", "reward_path",
                                  "reward_patching"])
def test_every_command_explains_itself(name, capsys):
    module = importlib.import_module(f"experiments.study.{name}")
    with pytest.raises(SystemExit) as exit_:
        C.main(module, ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m experiments.study.{name}" in out and "--runs" in out


def test_the_goal_switch_refuses_a_bandit():
    with pytest.raises(ValueError, match="Dark Room only"):
        goal_switch.compute(C.StudyConfig(subject="bandit"))


def test_parked_walker_stays_on_the_goal_after_its_first_arrival():
    from ad.interp.streams import Stream

    # one episode of 5 steps on goal (5, 4): right (arrives, paid), left, right, no-op, up
    obs = np.array([[[4, 4], [5, 4], [4, 4], [5, 4], [5, 4]]])
    s = Stream(obs=obs, action=np.array([[1, 2, 1, 0, 4]]),
               reward=np.array([[1., 0., 1., 1., 0.]]), done=np.array([[0, 0, 0, 0, 1]], bool))
    p = information.parked(s, np.array([[5, 4]]), 5)
    np.testing.assert_array_equal(p.obs[0], [[4, 4], [5, 4], [5, 4], [5, 4], [5, 4]])
    np.testing.assert_array_equal(p.action[0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(p.reward[0], [1, 1, 1, 1, 1])
    # the env's own rule pays exactly these rewards for the parked moves
    from ad.interp.streams import move_goal
    import envs
    np.testing.assert_array_equal(move_goal(p, [5, 4], envs.make("darkroom")).reward, p.reward)


def test_head_masks_select_one_head_per_cell():
    from types import SimpleNamespace

    from experiments.study import reward_path

    config = SimpleNamespace(num_layers=2, num_heads=3)
    names, where, labels = reward_path.head_masks(config)
    assert names == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert labels == ["none", "L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert not where[0].any()  # cell 0: no ablation
    for c in range(1, 7):
        l, h = divmod(c - 1, 3)
        assert where[c].sum() == 1 and where[c, l, 0, 0, h, 0]
    # sets of heads ablated together (the patching half's named and random heads)
    sets = reward_path.set_masks(config, [[(0, 1), (1, 2)], []])
    assert sets.shape == (3, 2, 1, 1, 3, 1) and not sets[0].any() and not sets[2].any()
    np.testing.assert_array_equal(np.argwhere(sets[1])[:, [0, 3]], [[0, 1], [1, 2]])
