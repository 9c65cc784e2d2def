"""experiments.navigation: the closer-move mask, the per-step stream counts and the
bucketed tally, by hand."""

from __future__ import annotations

import numpy as np

from experiments.navigation import closer_mask, stream_counts, tally


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
    import json

    from experiments import navigation
    from experiments import run as run_mod
    from experiments.settings import Setting

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
    import jax
    import numpy as np

    from ad import evaluate as ev
    from ad.train import load_model
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
