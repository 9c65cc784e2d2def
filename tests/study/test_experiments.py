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
                                  "over_training"])
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

    names, where, labels = reward_path.head_masks(SimpleNamespace(num_layers=2, num_heads=3))
    assert names == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert labels == ["none", "L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert not where[0].any()  # cell 0: no ablation
    for c in range(1, 7):
        l, h = divmod(c - 1, 3)
        assert where[c].sum() == 1 and where[c, l, 0, 0, h, 0]


def test_over_training_chooses_step_zero_the_last_and_log_spaced_powers_of_two():
    from ad.checkpoints import checkpoint_steps
    from experiments.study.over_training import choose_steps

    # the study's runs: every power of two from 32 fits in 8 (bandit 1500, Dark Room 2000 steps)
    assert choose_steps(checkpoint_steps(1500)) == [0, 32, 64, 128, 256, 512, 1024, 1500]
    assert choose_steps(checkpoint_steps(2000)) == [0, 32, 64, 128, 256, 512, 1024, 2000]
    # thinned at evenly spaced indices (= evenly in log-step): 6 powers -> indices 0, 2, 5
    # (linspace 0, 2.5, 5 rounded half to even)
    assert choose_steps(checkpoint_steps(1500), max_checkpoints=5) == [0, 32, 128, 1024, 1500]
    assert choose_steps(checkpoint_steps(6)) == [0, 6]  # nothing past the warm-up floor
    assert choose_steps(checkpoint_steps(6), min_step=2) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="step 0"):
        choose_steps([4, 8])


def test_over_training_dark_room_probe_label_is_a_reward_read_before_the_step():
    from types import SimpleNamespace

    from ad.interp.streams import Stream
    from experiments.study.over_training import probe_labels

    reward = np.array([[0., 0., 1., 0., 1.], [0., 0., 0., 0., 0.]])
    s = Stream(obs=np.zeros((2, 5, 2), int), action=np.zeros((2, 5), int), reward=reward,
               done=np.zeros((2, 5), bool))
    labels, positions, kind = probe_labels(SimpleNamespace(bandit=False), s)
    # the token of step t reads reward t-1: the paid step 2 is known from step 3 on
    np.testing.assert_array_equal(labels, [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    assert kind == "logistic" and positions.all()


@pytest.fixture(scope="module")
def bandit_runs(tmp_path_factory):
    """<runs>/bandit/ad-seed0: a tiny model distilled for 4 steps from 8 UCB1 histories,
    with snapshots (steps 0, 1, 2, 4)."""
    from ad.config import ArchConfig
    from ad.train import DistillConfig, distill
    from experiments.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("runs")
    data = root / "data"
    collect(CollectConfig(out=data, env="bernoulli-bandit", source="ucb",
                          source_overrides={"num_steps": 100}, num_histories=8, verbose=False))
    arch = ArchConfig(context=8, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.0)
    distill(DistillConfig(dataset=str(data), out=str(root / "bandit" / "ad-seed0"), model=arch,
                          window=16, batch_size=4, num_steps=4, warmup_steps=2, lr=3e-3,
                          snapshots=True, progress=False))
    return root


def test_over_training_smoke_on_a_tiny_run_with_snapshots(bandit_runs, tmp_path, monkeypatch):
    from ad.interp import agents as A
    from experiments.study import over_training as O

    # two agents keep it fast (the Gittins table takes seconds to build)
    monkeypatch.setattr(O.F, "agents_for", lambda s: {"UCB1 (source)": A.UCB1(5),
                                                      "greedy": A.Greedy(5)})

    config = C.StudyConfig(subject="bandit", runs=str(bandit_runs), seeds=(0,), tasks=6,
                           out=str(tmp_path))
    record = C.run(O, config)
    s = record["results"]["summary"]["0"]
    assert s["steps"] == [0, 4]  # snapshots 0, 1, 2, 4: the middle ones are below MIN_STEP
    rows = record["results"]["runs"][0]["snapshots"]
    for row in rows:
        assert set(row["improvement"]) == {"true", "zero", "flip"}
        assert row["improvement"]["true"]["tasks"] == 6
        assert row["fingerprint"]["late"]["best"] in row["fingerprint"]["late"]["scores"]
        p = row["probe"]
        assert p["best_hook"].startswith("blocks.0.hook_resid_") and np.isfinite(p["score"])
    # the peak's paired difference with itself is exactly 0 when the last is the peak
    if s["peak_step"] == 4:
        assert s["last_minus_peak_true_improvement"]["mean"] == 0.0
    O.print_summary(record)
    assert (tmp_path / "over_training-bandit.png").exists()


def test_over_training_peak_and_last_minus_peak_are_paired_over_tasks():
    from experiments.study.over_training import CONDITIONS, summarise

    def row(per_task):
        per_task = np.asarray(per_task, float)
        return {"improvement": {c: C.over_tasks(per_task) for c in CONDITIONS},
                "improvement_per_task": {c: per_task.tolist() for c in CONDITIONS},
                "fingerprint": {w: {"best": "UCB1"} for w in ("early", "late")},
                "probe": {"score": 0.5, "embed": 0.1}}

    s = summarise([0, 32, 64], [row([0, 0, 0]), row([3, 2, 4]), row([1, 2, 0])])
    assert s["peak_step"] == 32 and s["improvement_true"] == [0.0, 3.0, 1.0]
    d = s["last_minus_peak_true_improvement"]  # per task: -2, 0, -4
    assert d["mean"] == -2.0
    np.testing.assert_allclose(d["ci95"], 1.96 * 2.0 / np.sqrt(3))
