"""experiments.run: every registered setting's configs, the command line's overrides, the
pipeline end to end on a tiny setting (files, provenance, baselines) and the summary's
improvement statistic."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import run as run_mod
from experiments.settings import SETTINGS, Setting, get_setting


def test_every_setting_builds_valid_configs():
    import envs
    import source_agents
    from ad.config import ModelConfig
    from ad.train import DistillConfig

    for s in SETTINGS.values():
        env = envs.make(s.env, **s.env_overrides)
        source_agents.make_config(source_agents.get(s.source), s.env, **s.source_overrides)
        config = DistillConfig.from_dict({**s.distill, "dataset": "x", "out": "y"})
        ModelConfig.for_env(env, config.model)  # the architecture fits the env's spaces
        assert 1 <= min(s.report_episodes) and max(s.report_episodes) <= s.eval_episodes, s.name
    with pytest.raises(ValueError, match="available"):
        get_setting("dark-room")


def test_distill_overrides_parse_ints_floats_bools_and_strings():
    parsed = run_mod._parse_kv(["num_steps=500", "lr=3e-4", "prev_obs_token=true",
                                "episode_start_token=False", "obs_encoder=xy"])
    assert parsed == dict(num_steps=500, lr=3e-4, prev_obs_token=True,
                          episode_start_token=False, obs_encoder="xy")
    assert type(parsed["num_steps"]) is int and type(parsed["prev_obs_token"]) is bool
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        run_mod._parse_kv(["num_steps"])


def test_tiny_bandit_pipeline_writes_results(tmp_path):
    setting = Setting(
        name="tiny-bandit", env="bernoulli-bandit", source="thompson", histories=64,
        source_overrides=dict(num_steps=20),
        distill=dict(context=20, window=20, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                     dropout=0.0, batch_size=16, num_steps=5, log_every=5, warmup_steps=1),
        eval_episodes=20, eval_tasks=32, report_episodes=(5, 15))
    record = run_mod.run(setting, seeds=(0,), with_ed=True, data_root=tmp_path / "d",
                         runs_root=tmp_path / "r", out_root=tmp_path / "o", quiet=True)
    out = tmp_path / "o" / "tiny-bandit"
    assert (out / "curves.png").stat().st_size > 1000 and (out / "regret.png").exists()
    saved = json.loads((out / "eval.json").read_text())
    assert saved["git_commit"] is None or len(saved["git_commit"]) >= 40
    assert saved["versions"]["jax"] and saved["setting"]["name"] == "tiny-bandit"
    for split in ("test", "train"):
        curves = saved["results"][split]["curves"]
        assert set(curves) == {"AD", "ED", "source", "random"}
        assert all(len(c["mean"]) == 20 for c in curves.values())
        # optimum bounds every mean reward per pull up to noise; random is about 0.5
        assert abs(np.mean(curves["random"]["mean"]) - 0.5) < 0.1
        s = record["summary"][split]
        assert s["source"]["cumulative_regret"] < s["random"]["cumulative_regret"]
    assert saved["temperature"] == 1.0
    # rerunning reuses the dataset and the models (nothing is retrained); a new sampling
    # temperature only re-evaluates, and the record says which one was used
    before = (tmp_path / "r" / "tiny-bandit" / "ad-seed0" / "model" / "params.msgpack").stat().st_mtime
    run_mod.run(dataclasses.replace(setting), seeds=(0,), data_root=tmp_path / "d",
                runs_root=tmp_path / "r", out_root=tmp_path / "o2", quiet=True, temperature=0.5)
    after = (tmp_path / "r" / "tiny-bandit" / "ad-seed0" / "model" / "params.msgpack").stat().st_mtime
    assert before == after
    sharp = json.loads((tmp_path / "o2" / "tiny-bandit" / "eval.json").read_text())
    assert sharp["temperature"] == 0.5
    assert sharp["results"]["test"]["curves"]["AD"] != saved["results"]["test"]["curves"]["AD"]
    with pytest.raises(ValueError, match="temperature"):
        run_mod.run(setting, data_root=tmp_path / "d", runs_root=tmp_path / "r",
                    out_root=tmp_path / "o3", quiet=True, temperature=0.0)
    with pytest.raises(SystemExit):
        run_mod.main(["bandit", "--temperature", "0"])  # refused before anything runs


def test_improvement_averages_each_tasks_rollouts_before_the_se():
    from experiments.run import improvement

    E, tasks, R, models = 20, 3, 2, 2
    gain = np.array([1.0, 2.0, 3.0])  # per task: late episodes pay this much more
    rows = np.zeros((models, tasks, R, E))
    rows[..., E - 10:] += gain[None, :, None, None]
    rows[..., 0, :] += 0.5  # rollout noise that averages out within each task
    rows[..., 1, :] -= 0.5
    out = improvement(rows.reshape(-1, E), num_rollouts=tasks * R, rollouts_per_task=R)
    assert out["tasks"] == 3 and out["early_episodes"] == [1, 5] and out["late_episodes"] == [11, 20]
    assert out["mean"] == pytest.approx(2.0)
    assert out["se"] == pytest.approx(gain.std(ddof=1) / np.sqrt(3))
    assert out["z"] == pytest.approx(2.0 / out["se"])
    assert improvement(rows.reshape(-1, E)[:, :12], tasks * R, R) is None  # too short
