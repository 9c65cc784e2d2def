"""The analysis commands (experiments.analysis) by hand and end to end on tiny runs:
navigation (closer moves, stream counts, tallies), prompting, exploration, imitation and
retention."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import run as run_mod
from experiments.analysis.navigation import (closer_mask, running_episode_return,
                                             stream_counts, tally)
from experiments.settings import Setting


# ---- navigation ---------------------------------------------------------------------------
def test_running_episode_return_by_hand():
    reward = np.array([[1, 0, 2, 1, 1, 0, 5], [0, 1, 1, 1, 0, 0, 1]], np.float32)
    start = np.array([[1, 0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0]], bool)
    got = running_episode_return(reward, start)
    # row 1's stream starts mid-episode: its reward so far counts from the stream's start
    np.testing.assert_array_equal(got, [[0, 1, 1, 0, 1, 2, 0], [0, 0, 0, 1, 2, 2, 2]])


def test_closer_mask_by_hand():
    # actions: 0 no-op, 1 right (+x), 2 left, 3 down (+y), 4 up
    obs = np.array([[2, 2], [0, 0], [3, 3]])
    target = np.array([[4, 0], [0, 5], [3, 3]])
    want = np.array([[0, 1, 0, 0, 1],  # right or up
                     [0, 0, 0, 1, 0],  # down only (left/up hit the wall: no closer)
                     [0, 0, 0, 0, 0]], bool)  # on the target: nothing is closer
    np.testing.assert_array_equal(closer_mask(obs, target, 9), want)


def test_stream_counts_by_hand():
    # one stream of three episodes: key then door (success, 3 steps), a time-out with the
    # key (4 steps), then key + door again (2 steps)
    reward = np.array([[0, 1, 1, 0, 1, 0, 0, 1, 1]], np.float32)
    done = np.array([[0, 0, 1, 0, 0, 0, 1, 0, 1]], bool)
    successes, has_key, phase_start = stream_counts(reward, done)
    np.testing.assert_array_equal(successes[0], [0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(has_key[0], [0, 0, 1, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(phase_start[0], [1, 0, 1, 1, 0, 1, 0, 1, 1])


def test_tally_buckets_and_phases():
    mass = np.array([0.2, 0.4, 1.0, 0.6, 0.8])
    successes = np.array([0, 0, 1, 4, 9])
    has_key = np.array([False, True, False, False, True])
    scored = np.array([True, True, True, True, False])
    out = tally(mass, successes, has_key, scored)
    assert out["key"]["0"] == {"mass": 0.2, "steps": 1}
    assert out["key"]["1"] == {"mass": 1.0, "steps": 1}
    assert out["key"]["3-5"] == {"mass": 0.6, "steps": 1}
    assert out["door"]["0"] == {"mass": 0.4, "steps": 1}
    assert out["door"]["6+"] == {"mass": None, "steps": 0}  # not scored


def test_navigation_cli_on_a_tiny_key_to_door_run(tmp_path):
    """End to end on a tiny memory-source run: JSON written, masses are probabilities,
    and the closed loop scores every step where some move is closer (20 episodes x 4
    tasks, 50 steps each: at most 4,000 steps)."""
    import jax

    from ad import evaluate as ev
    from ad.checkpoints import load_model
    from experiments.analysis import navigation

    setting = Setting(
        name="tiny-k2d", env="key-to-door", source="memory", histories=8,
        source_overrides=dict(num_steps=400), eval_tasks=4, eval_rollouts_per_task=1,
        distill=dict(context=20, window=40, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                     dropout=0.0, obs_encoder="xy", episode_start_token=True, batch_size=8,
                     num_steps=3, log_every=3, warmup_steps=1),
        eval_episodes=1, report_episodes=(1,))
    run_mod.run(setting, seeds=(0,), data_root=tmp_path / "d", runs_root=tmp_path / "r",
                out_root=tmp_path / "o", quiet=True)
    run_dir = tmp_path / "r" / "tiny-k2d" / "ad-seed0"
    # record_policy changes nothing the rollout does: same actions, rewards and ends under
    # the same key, and the recorded policies are distributions
    model = load_model(run_dir)
    tasks = ev.eval_tasks(model.env, "test", 3, jax.random.PRNGKey(0))
    plain = ev.ad_rollout(model.params, model.config, model.env, tasks, jax.random.PRNGKey(1), 120)
    rec = ev.ad_rollout(model.params, model.config, model.env, tasks, jax.random.PRNGKey(1), 120,
                        record_policy=True)
    assert plain.obs is None and plain.policy is None
    for name in ("action", "reward", "done"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(rec, name))
    assert rec.obs.shape == (3, 120, 2) and rec.policy.shape == (3, 120, 5)
    np.testing.assert_allclose(np.asarray(rec.policy).sum(-1), 1.0, atol=1e-5)
    # temperature 0.5 samples from softmax(2 * logits), i.e. p**2 renormalised; the first
    # step's inputs do not depend on earlier actions, so its policies compare directly
    sharp = ev.ad_rollout(model.params, model.config, model.env, tasks, jax.random.PRNGKey(1),
                          120, record_policy=True, temperature=0.5)
    p1 = np.asarray(rec.policy[:, 0], np.float64)
    np.testing.assert_allclose(sharp.policy[:, 0], p1**2 / (p1**2).sum(-1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    out = tmp_path / "nav.json"
    navigation.main([str(run_dir), "--tasks", "4", "--episodes", "20", "--windows", "16",
                     "--out", str(out)])
    result = json.loads(out.read_text())
    for mode in ("teacher_forced", "closed_loop"):
        for scope in ("all_steps", "phase_start"):
            for phase in ("key", "door"):
                for row in result[mode][scope][phase].values():
                    assert row["mass"] is None or 0.0 <= row["mass"] <= 1.0 + 1e-6
    loop = result["closed_loop"]
    total = sum(r["steps"] for p in ("key", "door") for r in loop["all_steps"][p].values())
    starts = sum(r["steps"] for p in ("key", "door") for r in loop["phase_start"][p].values())
    assert 0 < starts < total <= 4 * 20 * 50
    # the key phase of every one of the 80 episodes starts once (unless it starts on the key)
    assert sum(r["steps"] for r in loop["phase_start"]["key"].values()) <= 80


# ---- prompting and exploration -------------------------------------------------------------
def test_trained_episode_and_improvement_by_hand():
    from experiments.analysis.prompting import improvement, output_stem, per_task, trained_episode

    curve = np.tile(np.arange(30, dtype=float), (3, 1))  # returns 0, 1, ..., 29
    # smoothed over 4 episodes: (i + i+1 + i+2 + i+3)/4 = i + 1.5 >= 10 first at i = 9 -> 9 + 2
    assert trained_episode(curve, optimum=20.0, smooth=4) == 11
    # level 0.9: i + 1.5 >= 18 first at i = 17 -> 17 + 2
    assert trained_episode(curve, optimum=20.0, level=0.9, smooth=4) == 19
    with pytest.raises(ValueError, match="never reaches 0.5 of the optimum"):
        trained_episode(curve, optimum=100.0)
    with pytest.raises(ValueError, match="level must be in"):
        trained_episode(curve, optimum=20.0, level=1.5)
    assert output_stem(0.5) == "prompting" and output_stem(0.9) == "prompting-level0.9"
    rows = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 3, 2]], float)
    out = improvement(rows, first=(0, 2), last=(-2, None))
    assert out["first"] == 0.25 and out["last"] == 2.25 and out["gain"] == 2.0
    assert out["se"] == pytest.approx(np.std([2.0, 2.0], ddof=1) / np.sqrt(2)) and out["z"] is None
    # 2 models x (2 tasks x 2 rollouts): task 0 rows 0, 1, 4, 5; task 1 rows 2, 3, 6, 7
    curve = np.arange(8, dtype=float)[:, None]
    np.testing.assert_array_equal(per_task(curve, 4, 2), [[(0 + 1 + 4 + 5) / 4], [(2 + 3 + 6 + 7) / 4]])


def test_prompt_windows_with_varying_episode_lengths_by_hand():
    from experiments.analysis.prompting import episode_starts, steps_before
    from source_agents.history import LearningHistory

    done = np.zeros((2, 10), bool)
    done[0, [1, 4, 8]] = True  # row 0: episodes of 2, 3, 4 steps
    done[1, [2, 3, 6]] = True  # row 1: 3, 1, 3 steps
    np.testing.assert_array_equal(episode_starts(done, 4), [[0, 2, 5, 9], [0, 3, 4, 7]])
    with pytest.raises(ValueError, match="row 0 has only 3"):
        episode_starts(done, 5)
    step = np.tile(np.arange(10), (2, 1))
    h = LearningHistory(obs=np.stack([step, step], -1), action=step, reward=step * 0.5,
                        terminated=done, truncated=np.zeros_like(done))
    out = steps_before(h, np.array([5, 7]), 3)  # the 3 steps before episode 2 of each row
    np.testing.assert_array_equal(out.action, [[2, 3, 4], [4, 5, 6]])
    np.testing.assert_array_equal(out.obs[1, :, 0], [4, 5, 6])
    np.testing.assert_array_equal(out.terminated, [[False, False, True], [False, False, True]])
    with pytest.raises(ValueError, match="fewer than 6"):
        steps_before(h, np.array([5, 7]), 6)


def test_tiny_prompting_check_writes_results(tmp_path):
    from experiments.analysis.prompting import run_prompting

    setting = Setting(
        name="tiny-dark", env="darkroom", source="noise", histories=64,
        env_overrides=dict(horizon=10), source_overrides=dict(num_steps=400, anneal_fraction=0.5),
        distill=dict(context=20, window=40, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                     dropout=0.0, batch_size=16, num_steps=5, log_every=5, warmup_steps=1),
        eval_episodes=5, eval_rollouts_per_task=1, report_episodes=(5,))
    run_mod.run(setting, seeds=(0,), with_ed=True, data_root=tmp_path / "d",
                runs_root=tmp_path / "r", out_root=tmp_path / "o", quiet=True)
    record = run_prompting(setting, seeds=(0,), runs_root=tmp_path / "r", out_root=tmp_path / "o",
                           episodes=12)
    s = record["summary"]
    assert s["prompt_episodes"] == 2 and s["rows"] == s["tasks"] == 16  # ceil(1 * 20 / 10); 16 goals
    assert set(record["curves"]) == {"AD (prompted)", "AD (no prompt)", "ED (prompted)",
                                     "ED (no prompt)", "source (continues)"}
    assert all(len(c["mean"]) == 12 for c in record["curves"].values())
    assert (tmp_path / "o" / "tiny-dark" / "prompting.png").stat().st_size > 1000


def test_exploration_found_within_by_hand_and_cli(tmp_path):
    from experiments.analysis import exploration

    curve = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.9, 0.0, 0.7]])
    assert exploration.found_within(curve, [1, 2, 3]) == {1: 1 / 3, 2: 2 / 3, 3: 2 / 3}
    out = tmp_path / "exploration.json"
    exploration.main(["--num-layouts", "128", "--layouts", "6", "--episodes", "3",
                      "--turn-probs", "0.2", "--out", str(out)])
    rows = json.loads(out.read_text())["found_within"]
    assert set(rows) == {"uniform, 7 actions", "uniform, 3 moves", "explore, turn_prob 0.2"}
    for fractions in rows.values():
        values = [fractions[k] for k in ("1", "3")]
        assert 0.0 <= values[0] <= values[1] <= 1.0


# ---- imitation and retention ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dark_run(tmp_path_factory):
    """A tiny noise-distilled Dark Room run (10-step episodes, 60-step histories)."""
    tmp_path = tmp_path_factory.mktemp("tiny-dark")
    setting = Setting(
        name="tiny-dark", env="darkroom", source="noise", histories=16,
        env_overrides=dict(horizon=10), source_overrides=dict(num_steps=60, anneal_fraction=0.5),
        distill=dict(context=20, window=40, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                     dropout=0.0, episode_start_token=True, batch_size=8, num_steps=5,
                     log_every=5, warmup_steps=1),
        eval_episodes=2, eval_rollouts_per_task=1, report_episodes=(1,))
    run_mod.run(setting, seeds=(0,), data_root=tmp_path / "d", runs_root=tmp_path / "r",
                out_root=tmp_path / "o", quiet=True)
    return tmp_path


def test_imitation_matches_training_inputs_and_returns_by_hand(tiny_dark_run, tmp_path):
    """Teacher-forced NLL from whole streams = the training sampler's windows from step 0;
    per-bin source returns = the dataset's episode returns, by hand."""
    import jax

    from ad.checkpoints import load_model
    from ad.dataset import load_dataset, returns_table
    from ad.windows import WindowSampler
    from experiments.analysis import imitation

    run_dir = tiny_dark_run / "r" / "tiny-dark" / "ad-seed0"
    model, ds = load_model(run_dir), load_dataset(tiny_dark_run / "d" / "tiny-dark")
    T = ds.num_steps

    sampler = WindowSampler(ds, model.config, T, 4, seed=0)
    sampler.indices = lambda step: (np.arange(4), np.zeros(4, np.int64))
    batch = sampler.batch(0)
    logp = jax.nn.log_softmax(model.apply(batch.inputs), -1)
    want = -np.take_along_axis(np.asarray(logp), batch.target_action[..., None], -1)[..., 0]
    rows = ds.read_windows(np.arange(4), np.zeros(4, np.int64), T)
    got = imitation.per_step_imitation(model, rows.obs, rows.action, rows.reward,
                                       rows.terminated | rows.truncated)
    np.testing.assert_allclose(got["nll"], want, rtol=1e-5, atol=1e-5)

    out = tmp_path / "imitation.json"
    for bad in (["--bins", "0"], ["--bins", str(T + 1)], ["--histories", "0"]):
        with pytest.raises(SystemExit):
            imitation.main([str(run_dir), "--quiet", "--out", str(out), *bad])
    assert not out.exists()
    assert imitation.main([str(run_dir), "--histories", "6", "--bins", "2", "--out", str(out),
                           "--batch-size", "4", "--quiet"]) == 0
    table = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    # 10-step episodes, 60 steps: bin 0 holds the episodes ending at steps 9, 19, 29
    rows = ds.read_windows(np.arange(6), np.zeros(6, np.int64), T)
    returns, _ = returns_table(rows.reward, rows.terminated | rows.truncated)
    for i, b in enumerate(table["bins"]):
        assert b["steps"] == [30 * i, 30 * (i + 1)] and b["episodes"] == 18
        np.testing.assert_allclose(b["source_return"], returns[:, 3 * i:3 * i + 3].mean(), rtol=1e-6)
        assert 0.0 <= b["accuracy"] <= 1.0 and b["nll"] > 0
    whole = imitation.per_step_imitation(model, rows.obs, rows.action, rows.reward,
                                         rows.terminated | rows.truncated)
    np.testing.assert_allclose(table["bins"][0]["nll"], whole["nll"][:, :30].mean(), rtol=1e-5)


def test_retention_table_by_hand():
    """Streaks and P(success | streak) on hand-made sequences; padding ends a streak."""
    from experiments.analysis.retention import retention_table, streaks

    s = np.array([[0, 1, 1, 0, 1, 1, 1],
                  [1, 1, 0, 0, 1, 0, 1]], bool)
    np.testing.assert_array_equal(streaks(s), [[0, 0, 1, 2, 0, 1, 2],
                                               [0, 1, 2, 0, 0, 1, 0]])
    rows = retention_table(s, max_streak=2)
    # streak 0: (0,0) (0,1) (0,4) (1,0) (1,3) (1,4) (1,6) -> 0, 1, 1, 1, 0, 1, 1 -> 5/7
    # streak 1: (0,2) (0,5) (1,1) (1,5) -> 1, 1, 1, 0 -> 3/4; 2+: (0,3) (0,6) (1,2) -> 0, 1, 0
    assert [r["episodes"] for r in rows] == [7, 4, 3]
    np.testing.assert_allclose([r["p_success"] for r in rows], [5 / 7, 3 / 4, 1 / 3])
    assert [r["at_least"] for r in rows] == [False, False, True]
    # a history with 3 real episodes: the padded ones count nowhere
    valid = np.array([[1, 1, 1, 0, 0, 0, 0]], bool)
    rows = retention_table(np.ones((1, 7), bool), valid, max_streak=5)
    assert [r["episodes"] for r in rows] == [1, 1, 1, 0, 0, 0]
    assert rows[3]["p_success"] is None


def test_first_success_split_by_hand():
    """Discovery (no success yet), recovery (after a slip, one success earlier), by hand."""
    from experiments.analysis.retention import first_success_split

    s = np.array([[0, 1, 1, 0, 1, 1, 1],
                  [1, 1, 0, 0, 1, 0, 1],
                  [0, 0, 0, 0, 0, 0, 0]], bool)
    split = first_success_split(s)
    # none yet: row 0 eps 0-1 (0, 1), row 1 ep 0 (1), row 2 all 7 (0) -> 2/10
    assert split["discovery"] == {"p": 2 / 10, "episodes": 10}
    # the last failed, the one before succeeded: row 0 ep 4 (1); row 1 eps 3, 6 (0, 1)
    assert split["recovery"] == {"p": 2 / 3, "episodes": 3}
    # the last failed, any earlier success: row 0 ep 4 (1); row 1 eps 3, 4, 6 (0, 1, 1)
    assert split["recovery_any"] == {"p": 3 / 4, "episodes": 4}
    assert split["ever"] == {"p": 2 / 3, "streams": 3}
    # after the first success: row 0 eps 2-6 (1, 0, 1, 1, 1), row 1 eps 1-6 (1,0,0,1,0,1)
    assert split["after_first"] == {"p": 7 / 11, "episodes": 11}
    # right after the first success: row 0 ep 2 (1), row 1 ep 1 (1); row 2 never succeeds
    assert split["follow_up"] == {"p": 1.0, "episodes": 2}
    s[0, 2] = False  # row 0 now fails right after its first success
    assert first_success_split(s)["follow_up"] == {"p": 1 / 2, "episodes": 2}
    # padded episodes count nowhere
    split = first_success_split(np.ones((1, 4), bool), np.array([[1, 1, 0, 0]], bool))
    assert split["after_first"] == {"p": 1.0, "episodes": 1}
    assert split["recovery"] == {"p": None, "episodes": 0}


def test_retention_cli_counts_every_episode(tiny_dark_run, tmp_path):
    """The CLI's three tables count every episode of its rollouts and stored histories once,
    and the stored histories' table is the hand-made one of their returns."""
    import jax

    from ad.dataset import load_dataset, returns_table
    from experiments.analysis import retention

    run_dir = tiny_dark_run / "r" / "tiny-dark" / "ad-seed0"
    out = tmp_path / "ret.json"
    for bad in (["--frac", "0"], ["--tasks", "0"], ["--max-streak", "0"]):
        with pytest.raises(SystemExit):
            retention.main([str(run_dir), "--out", str(out), *bad])
    assert not out.exists()
    assert retention.main([str(run_dir), "--tasks", "4", "--episodes", "3", "--histories", "5",
                           "--max-streak", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    ad, stored, scratch = result["curves"].values()
    assert sum(r["episodes"] for r in ad["table"]) == ad["rows"] * 3
    ds = load_dataset(tiny_dark_run / "d" / "tiny-dark")
    rows = ds.read_windows(np.arange(5), np.zeros(5, np.int64), ds.num_steps)
    returns, counts = returns_table(rows.reward, rows.terminated | rows.truncated)
    assert sum(r["episodes"] for r in stored["table"]) == counts.sum() == 5 * 6
    opt = np.asarray(jax.vmap(ds.env.optimal_return)(ds.task_params(np.arange(5))))
    want = retention.retention_table(returns >= 0.9 * opt[:, None], max_streak=2)
    assert stored["table"] == want
    assert sum(r["episodes"] for r in scratch["table"]) == scratch["rows"] * scratch["episodes"]
    assert all(0 <= r["p_success"] <= 1 for c in (ad, stored, scratch) for r in c["table"]
               if r["p_success"] is not None)
    want_split = retention.first_success_split(returns >= 0.9 * opt[:, None],
                                               np.arange(returns.shape[1]) < counts[:, None])
    assert stored["split"] == want_split


@pytest.mark.slow
def test_interp_tutorial_cli_on_a_tiny_run(tiny_dark_run, tmp_path):
    """The tutorial command end to end: JSON with exact DLA sums, a logit lens that ends
    at the policy, figures, and one ablation cell per head plus the unablated one."""
    from experiments.analysis import interp_tutorial

    run_dir = tiny_dark_run / "r" / "tiny-dark" / "ad-seed0"
    interp_tutorial.main(["--darkroom", str(run_dir), "--out", str(tmp_path), "--tasks", "4",
                          "--rollouts", "2", "--episodes", "8", "--pairs", "8",
                          "--candidates", "256", "--mean-windows", "8"])
    r = json.loads((tmp_path / "tutorial.json").read_text())["results"]["darkroom"]
    assert r["dla_sum_error"] < 1e-4 and r["held_out_tasks"] == 4
    assert r["lens_kl_late"][-1] == pytest.approx(0.0, abs=1e-5)
    assert (tmp_path / "figures" / "darkroom_ablation.png").stat().st_size > 1000
    assert set(r["ablation"]["summary"]) == {"none", "L0H0", "L0H1"}
