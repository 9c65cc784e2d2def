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
                                  "goal_switch", "fingerprint", "probes", "reward_path",
                                  "reward_patching", "over_training"])
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


def test_fingerprint_darkroom_scores_ppo_at_the_matched_stage(tmp_path, monkeypatch):
    """A tiny untrained Dark Room model, a short PPO source (12-episode streams): the PPO
    agent at the matched stage gets a row, tempered and as its own policy, with finite
    scores and a fitted temperature."""
    import dataclasses

    import envs
    import jax
    from ad.checkpoints import save_model
    from ad.config import ArchConfig, ModelConfig
    from ad.model import init_params
    from experiments.settings import get_setting

    cfg = ModelConfig.for_env(envs.make("darkroom"), ArchConfig(
        context=20, d_model=8, num_layers=1, num_heads=2, mlp_dim=0, dropout=0.0))
    rng = np.random.default_rng(0)  # random weights without compiling an init
    params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype),
                          jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    save_model(tmp_path / "runs" / "darkroom" / "ad-seed0", cfg, params, env="darkroom",
               env_overrides={})
    small = dataclasses.replace(get_setting("darkroom"), eval_episodes=12,
                                source_overrides={"num_steps": 256, "rollout_len": 64})
    monkeypatch.setattr(C, "get_setting", lambda name: small)
    config = C.StudyConfig(subject="darkroom", runs=str(tmp_path / "runs"), seeds=(0,),
                           out=str(tmp_path / "out"), tasks=2, rollouts_per_task=2)
    # (2 goals x 2 rollouts held out, 2 training goals x 2: one shape, one compile each)
    r = fingerprint.compute(config)
    for label in ("PPO (matched stage)", "PPO (matched stage) (own policy, T=1)"):
        for w in ("early", "late"):
            assert np.isfinite(r["loglik"][w][label]["mean"])
            assert -np.log(5) - 5 < r["loglik"][w][label]["mean"] < 0
    assert r["temperatures"]["PPO (matched stage)"]["per_seed"][0] > 0


def test_zoo_and_thompson_subjects():
    """bandit2 loads the zoo's shipped 2-armed models (UCB1 its source, the exact Bayes agent
    among the references); bandit-thompson labels Thompson as its source."""
    import envs

    config = C.StudyConfig(subject="bandit2", seeds=(0, 1, 2, 3, 4), tasks=4)
    subject = C.load_subject(config)
    assert len(subject.models) == 5 and subject.env.num_actions == 2 and subject.bandit
    assert subject.episodes == 100 and subject.n == 4
    assert list(fingerprint.agents_for(subject)) == [
        "UCB1 (source)", "Thompson", "greedy", "Gittins (0.9)", "Bayes (exact)"]
    with pytest.raises(ValueError, match="ships seeds"):
        C.StudyConfig(subject="bandit2", seeds=(7,)).run_dirs()
    thompson = C.Subject(C.StudyConfig(subject="bandit-thompson"), [],
                         envs.make("bernoulli-bandit"), None, 1)
    assert list(fingerprint.agents_for(thompson)) == [
        "UCB1", "Thompson (source)", "greedy", "Gittins (0.9)"]


# ----------------------------------------------------------------------------------------
# Experiment 5: probes
# ----------------------------------------------------------------------------------------
def _tiny_runs(root, subjects=("bandit", "darkroom")):
    """Untrained tiny models saved as each subject's ad-seed0 (the study's layout)."""
    import envs
    import jax
    from ad.checkpoints import save_model
    from ad.config import ArchConfig, ModelConfig
    from ad.model import init_params
    from experiments.settings import get_setting

    for s in subjects:
        setting = get_setting(s)
        env = envs.make(setting.env)
        config = ModelConfig.for_env(env, ArchConfig(context=8, d_model=16, num_layers=1,
                                                     num_heads=2, mlp_dim=32, dropout=0.0))
        params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
        save_model(root / s / "ad-seed0", config, params,
                   env=setting.env, env_overrides={})
    return root


def test_probes_recover_a_planted_label_and_not_a_shuffled_one():
    from experiments.study import probes

    rng = np.random.default_rng(0)
    B, T, d = 20, 50, 8
    x = rng.normal(size=(B, T, d)).astype(np.float32)
    rows, cols = probes.sample(np.ones((B, T), bool), 0, limit=600)
    assert len(rows) == 600 and (np.diff(rows * T + cols) > 0).all()
    planted = x[rows, cols] @ rng.normal(size=d)  # a linear label of the activations
    labels = {"planted": probes.Label(planted.astype(np.float32), "ridge", "source", rows, cols),
              "noise": probes.Label(rng.normal(size=600).astype(np.float32), "ridge",
                                    "nuisance", rows, cols)}
    scores, results = probes.probe_all({"h": x}, labels, np.arange(B), seed=0)
    assert scores["planted"]["h"]["score"] > 0.99
    assert abs(scores["planted"]["h"]["shuffled"]) < 0.05
    assert scores["noise"]["h"]["score"] < 0.05
    # a residual on a label it is a function of is zero
    np.testing.assert_allclose(probes.residual(planted[:, None], x[rows, cols]), 0, atol=1e-3)


def test_steering_moves_the_probe_by_one_sd_and_zero_steering_changes_nothing(tiny_config):
    import jax
    from ad.interp.streams import Stream
    from ad.model import init_params
    from experiments.study import probes

    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 16))
    sd = np.array([0.5, 1.0, 2.0])
    # the activation pattern of a label the activations move with exactly: x = y a + c
    a, y = rng.normal(size=(3, 16)), rng.normal(size=(500, 3)) * sd
    pat = np.concatenate([probes.pattern(y[:, [k]] @ a[[k]] + 5.0, y[:, [k]]) for k in range(3)])
    np.testing.assert_allclose(pat, y.std(0)[:, None] * a, rtol=1e-6)  # +1 SD of y: SD(y) a
    v = probes.steering_vectors(w, sd, np.array([0, 1, 2, 0]), jax.random.PRNGKey(0), pat)
    assert v.shape == (len(probes.CONDITIONS), 4, 16) and not v[0].any()
    np.testing.assert_allclose((v[1] * w[[0, 1, 2, 0]]).sum(-1), sd[[0, 1, 2, 0]], rtol=1e-5)
    np.testing.assert_array_equal(v[2], -v[1])
    np.testing.assert_allclose(np.linalg.norm(v[3], axis=-1), np.linalg.norm(v[1], axis=-1),
                               rtol=1e-5)
    np.testing.assert_allclose(v[5], pat[[0, 1, 2, 0]], rtol=1e-5)
    np.testing.assert_array_equal(v[6], -v[5])
    np.testing.assert_allclose(np.linalg.norm(v[7], axis=-1), np.linalg.norm(v[5], axis=-1),
                               rtol=1e-5)
    config = tiny_config(d_model=16, num_layers=1)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))  # eager: slow
    model = type("M", (), {"params": params, "config": config})
    stream = Stream(obs=rng.integers(0, 9, (2, 12, 2)).astype(np.int32),
                    action=rng.integers(0, 5, (2, 12)).astype(np.int32),
                    reward=rng.integers(0, 2, (2, 12)).astype(np.float32),
                    done=np.zeros((2, 12), bool))
    vectors = np.stack([v[0, :2]] * 5)
    vectors[1] = v[1, :2]
    pi = probes.steered_policy(model, stream, "blocks.0.hook_resid_mid", vectors)
    for c in (2, 3, 4):  # scale-0 steering in the same graph: bit for bit "none"
        np.testing.assert_array_equal(pi[c], pi[0])
    assert not np.array_equal(pi[1], pi[0])
    np.testing.assert_allclose(pi[0].sum(-1), 1, rtol=1e-5)


def test_darkroom_labels_by_hand():
    from ad.interp.streams import Stream
    from experiments.study import probes

    # goal (6, 4): from (4, 4) right to (5, 4) unpaid, right onto the goal (paid), stay
    s = Stream(obs=np.array([[[4, 4], [5, 4], [6, 4]]], np.int32),
               action=np.array([[1, 1, 0]], np.int32), reward=np.array([[0., 1., 1.]], np.float32),
               done=np.array([[False, False, True]]))
    labels = probes.darkroom_labels(s, 9, np.array([[0.1, 0.2, 0.3]]), seed=0)
    np.testing.assert_array_equal(labels["goal_found"].values, [False, False, True])
    np.testing.assert_allclose(labels["cells_ruled_out"].values, [0, 1 / 81, 1 / 81])
    np.testing.assert_allclose(labels["ppo_value"].values, [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(labels["distance_once_found"].cols, [2])
    np.testing.assert_array_equal(labels["distance_once_found"].values, [0])
    np.testing.assert_array_equal(labels["step_in_episode"].values, [0, 1, 2])
    assert [lab.group for lab in labels.values()] == sorted(
        (lab.group for lab in labels.values()), key=["source", "bayes", "nuisance"].index)


@pytest.mark.parametrize("subject", ["bandit", pytest.param("darkroom", marks=pytest.mark.slow)])
def test_probes_compute_on_tiny_models(subject, tmp_path, monkeypatch):
    import dataclasses

    from experiments.settings import get_setting
    from experiments.study import probes

    runs = _tiny_runs(tmp_path / "runs", (subject,))
    setting = get_setting(subject)
    if subject == "darkroom":  # a short PPO run and rollout keep it to seconds
        setting = dataclasses.replace(setting, eval_episodes=4, source_overrides={
            "num_steps": 1024, "rollout_len": 128})
    else:
        setting = dataclasses.replace(setting, eval_episodes=12)
    monkeypatch.setattr(C.StudyConfig, "setting", property(lambda self: setting))
    config = C.StudyConfig(subject=subject, runs=str(runs), seeds=(0,), out=str(tmp_path / "o"),
                           tasks=10, rollouts_per_task=1)
    record = C.run(probes, config)
    r = record["results"]
    want = set(probes.KEY_LABEL.values()) & set(r["labels"])
    assert want and set(r["summary"]) == set(r["labels"])
    for e in r["summary"].values():
        assert len(e["best"]["per_seed"]) == 1 and set(e["by_hook"]) == set(r["hooks"])
    s = r["steering"]
    for cond in probes.CONDITIONS[1:]:
        assert np.isfinite(s[cond]["teacher_forced"]["over_seeds"]["mean"])
        assert np.isfinite(s[cond]["closed_loop"]["over_seeds"]["mean"])
    assert (tmp_path / "o" / f"probes-{subject}.png").exists()
    probes.print_summary(record)


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


# ~26 s with its fixture (a tiny training run with snapshots): under -m slow to keep make test
# near 10 minutes; the snapshot rule and the measures' helpers are tested above and below
@pytest.mark.slow
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
