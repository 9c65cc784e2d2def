"""The study's shared measures: improvement equal to experiments.run's, per-episode means
by hand, the seed interval, policy quality by hand."""

import numpy as np
import pytest

from experiments.run import improvement
from experiments.study import common as C


def test_task_improvement_mean_is_experiments_run_improvement():
    rng = np.random.default_rng(0)
    curve = rng.random((6 * 4, 200))  # 6 tasks x 4 rollouts each, adjacent
    per_task = C.task_improvement(curve, 4)
    want = improvement(curve, 24, 4)
    assert per_task.shape == (6,)
    np.testing.assert_allclose(per_task.mean(), want["mean"], rtol=1e-12)
    np.testing.assert_allclose(per_task.std(ddof=1) / np.sqrt(6), want["se"], rtol=1e-12)
    # by hand for one task
    t0 = curve[:4]
    np.testing.assert_allclose(per_task[0], t0[:, -10:].mean() - t0[:, :5].mean())


def test_per_episode_by_hand():
    values = np.array([[1., 2., 3., 4., 5., 6.]])
    done = np.array([[False, True, False, False, True, True]])
    np.testing.assert_allclose(C.per_episode(values, done, 3), [[1.5, 4.0, 6.0]])
    with pytest.raises(ValueError, match="fewer than 4 episodes"):
        C.per_episode(values, done, 4)


def test_over_seeds_t_interval():
    s = C.over_seeds([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["all_positive"] and not s["all_negative"]
    np.testing.assert_allclose(s["ci95"], 4.302652729911275 * 1.0 / np.sqrt(3), rtol=1e-9)


def test_bandit_quality_is_expected_reward():
    class Tasks:
        means = np.array([[0.1, 0.9]])

    subject = C.Subject(None, [], type("E", (), {"max_episode_steps": 1})(), Tasks, 1)
    pi = np.array([[[0.5, 0.5], [0.0, 1.0]]])
    np.testing.assert_allclose(C.quality(subject, None, pi), [[0.5, 0.9]])


def test_config_refuses_an_unknown_subject_and_a_missing_model(tmp_path):
    with pytest.raises(ValueError, match="subject must be one of"):
        C.StudyConfig(subject="key-to-door")
    with pytest.raises(FileNotFoundError, match="no finished model"):
        C.StudyConfig(subject="bandit", runs=str(tmp_path)).run_dirs()


def test_take_episodes_reorders_whole_episodes():
    from ad.interp.streams import Stream

    obs = np.arange(0, 12, 2).reshape(1, 6, 1) * np.ones((1, 6, 2), int)
    s = Stream(obs=obs, action=np.arange(6)[None], reward=np.arange(6.)[None] / 10,
               done=np.array([[False, True] * 3]))
    r = C.take_episodes(s, np.array([[2, 0]]))
    np.testing.assert_array_equal(r.action, [[4, 5, 0, 1]])
    np.testing.assert_array_equal(r.obs[0, :, 0], [8, 10, 0, 2])
    np.testing.assert_array_equal(r.done, [[False, True, False, True]])
    with pytest.raises(ValueError, match="one length"):
        C.episode_length(s._replace(done=np.array([[True, True, False, True, False, True]])))


def test_memo_computes_once_and_returns_the_same(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"a": np.arange(3.0)}

    config = C.StudyConfig(subject="bandit", cache=str(tmp_path))
    first = C.memo(config, "x", "owner", (np.ones(2),), fn)
    again = C.memo(config, "x", "owner", (np.ones(2),), fn)
    other = C.memo(config, "x", "owner", (np.zeros(2),), fn)  # other inputs: computed
    assert len(calls) == 2
    np.testing.assert_array_equal(first["a"], again["a"])
    np.testing.assert_array_equal(other["a"], np.arange(3.0))
    no_cache = C.StudyConfig(subject="bandit")
    C.memo(no_cache, "x", "owner", (np.ones(2),), fn)
    assert len(calls) == 3  # without a cache folder nothing is kept
