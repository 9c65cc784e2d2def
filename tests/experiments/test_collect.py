"""``experiments.collect``: CLI end to end, determinism, resume, subsampling, multi-device.

A tiny fake source defined here (``tests.experiments.test_collect:fake``: ε-greedy around
the env's optimal action) keeps compilation fast and the expected data easy to predict.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad.dataset import DatasetError, DatasetSpec, DatasetWriter, load_dataset
from experiments import collect as collect_mod
from experiments.collect import CollectConfig, collect, coerce_overrides, main, parse_override
from source_agents.history import LearningHistory

REPO = Path(__file__).resolve().parents[2]
FAKE = f"{__name__}:fake"  # tests.experiments.test_collect:fake
N, STEPS = 6, 40  # histories, env steps per history (darkroom horizon 10 below: 4 episodes)
ENV_ARGS = ["--env", "darkroom", "--env-override", "horizon=10"]  # every goal reachable


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    num_steps: int = STEPS  # history length in env steps
    epsilon: float = 1.0  # probability of a uniform random action instead of the optimal one


def fake_make_train(env, config: FakeConfig):
    def train(key, params):
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)

        def step(carry, k):
            obs, state = carry
            k_explore, k_random, k_opt, k_env = jax.random.split(k, 4)
            greedy = env.optimal_action(k_opt, state, params)
            uniform = jax.random.randint(k_random, (), 0, env.num_actions)
            explore = jax.random.uniform(k_explore) < config.epsilon
            action = jnp.where(explore, uniform, greedy).astype(jnp.int32)
            next_obs, next_state, reward, terminated, truncated, _ = env.step(k_env, state, action, params)
            return (next_obs, next_state), LearningHistory(obs, action, reward, terminated, truncated)

        _, history = jax.lax.scan(step, (obs, state), jax.random.split(key_steps, config.num_steps))
        return history

    return train


fake = SimpleNamespace(Config=FakeConfig, make_train=fake_make_train)


def run_cli(out, *extra) -> int:
    return main([*ENV_ARGS, "--source", FAKE, "--histories", str(N), "--out", str(out), "--quiet", *extra])


def arrays(ds):
    """Every stored array of a dataset, keyed by name, for exact comparisons."""
    out = {}
    for i in range(ds.num_histories):
        for name, leaf in zip(["obs", *LearningHistory._fields[1:]], ds.history(i)):
            out.setdefault(name, []).append(np.asarray(leaf))
    out = {k: np.stack(v) for k, v in out.items()}
    out["goal"] = np.asarray(ds.task_params().goal)
    out["episode_returns"] = np.asarray(ds.episode_returns)
    return out


def assert_equal_datasets(a, b):
    xa, xb = arrays(a), arrays(b)
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


# ---------------------------------------------------------------------------------------
def test_parse_and_coerce_overrides():
    # values stay strings until their field's type parses them (one typed pass)
    assert parse_override("horizon=30") == ("horizon", "30")
    assert parse_override("lr = 3e-4") == ("lr", "3e-4")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_override("horizon")
    assert coerce_overrides(FakeConfig, {"epsilon": "3e-4", "num_steps": "7"}, "fake") == {
        "epsilon": 3e-4, "num_steps": 7}
    assert coerce_overrides(FakeConfig, {"epsilon": 1}, "fake") == {"epsilon": 1.0}
    assert isinstance(coerce_overrides(FakeConfig, {"epsilon": 1}, "fake")["epsilon"], float)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['eps'\]; valid fields: \['epsilon', 'num_steps'\]"):
        coerce_overrides(FakeConfig, {"eps": 0.1}, "fake")
    with pytest.raises(ValueError, match=r"fake.num_steps: expected an int, got 2.5"):
        coerce_overrides(FakeConfig, {"num_steps": 2.5}, "fake")
    with pytest.raises(ValueError, match=r"fake.epsilon: expected a number, got 'abc'"):
        coerce_overrides(FakeConfig, {"epsilon": "abc"}, "fake")


def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ["--env", "--env-override", "--source", "--source-override", "--histories", "--split",
                 "--seed", "--shard-size", "--subsample-every", "--out", "--overwrite", "examples:"]:
        assert flag in text


def test_cli_end_to_end_optimal_source(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([*ENV_ARGS, "--source", FAKE, "--source-override", "epsilon=0", "--histories", str(N),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # an always-optimal source earns the optimum in every episode
    assert "100.0% of optimal return (mean over 6 histories); 100.0% of histories >= 90%" in printed
    ds = load_dataset(out, verify=True)
    assert (ds.num_histories, ds.num_steps) == (N, STEPS)
    assert ds.spec.source_config == {"num_steps": STEPS, "epsilon": 0.0}
    assert ds.spec.env_config == {"size": 9, "horizon": 10} and ds.spec.extra == {"subsample_every": 1, "chunk_size": 64}
    env = envs.make("darkroom", horizon=10)
    goals = np.asarray(env.tasks("train").goal)
    for i in range(N):  # task i % n_tasks, and the stored returns are the optimum per episode
        np.testing.assert_array_equal(ds.task_params(i).goal, goals[i % len(goals)])
        np.testing.assert_allclose(ds.source_returns(i), np.full(STEPS // 10, float(env.optimal_return(ds.task_params(i)))))


def test_stored_steps_replay_in_the_env(tmp_path):
    """obs[t], action[t] -> reward[t], truncated[t], obs[t+1], checked by a Python-loop replay."""
    collect(CollectConfig(out=tmp_path / "ds", env="darkroom", env_overrides={"horizon": 10}, source=FAKE,
                          num_histories=N, verbose=False))
    ds = load_dataset(tmp_path / "ds")
    env = envs.make("darkroom", horizon=10)
    step = jax.jit(env.step)
    key = jax.random.key(0)  # darkroom dynamics ignore the key
    for i in range(3):
        h, params = ds.history(i), ds.task_params(i)
        obs, state = env.reset(key, params)
        for t in range(STEPS):
            np.testing.assert_array_equal(h.obs[t], obs)
            obs, state, reward, terminated, truncated, _ = step(key, state, jnp.int32(h.action[t]), params)
            assert (h.reward[t], h.terminated[t], h.truncated[t]) == (reward, terminated, truncated)
    assert len(np.unique(ds.history(0).action)) > 1  # ε = 1: the actions really are random


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, monkeypatch, capsys):
    reference_path = tmp_path / "reference"
    assert run_cli(reference_path) == 0  # one shard of 6
    reference = load_dataset(reference_path)

    out = tmp_path / "ds"
    real_write = DatasetWriter.write_shard
    calls = []

    def interrupted(self, start, *args, **kwargs):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second shard
        return real_write(self, start, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "write_shard", interrupted)
    assert run_cli(out, "--shard-size", "2") == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="incomplete"):
        load_dataset(out)
    finished = (out / "shard-00000000-00000002" / "obs.npy").stat()

    calls.clear()
    monkeypatch.setattr(DatasetWriter, "write_shard", lambda self, start, *a, **k: calls.append(start) or real_write(self, start, *a, **k))
    assert run_cli(out, "--shard-size", "3") == 0  # a different shard size resumes too
    assert calls == [2, 5]  # only the missing histories [2, 5) and [5, 6) were collected
    assert (out / "shard-00000000-00000002" / "obs.npy").stat().st_mtime_ns == finished.st_mtime_ns
    assert_equal_datasets(load_dataset(out, verify=True), reference)

    calls.clear()
    assert run_cli(out) == 0 and calls == []  # complete: nothing to do


def test_mismatch_is_an_error_and_overwrite_replaces(tmp_path, capsys):
    out = tmp_path / "ds"
    assert run_cli(out) == 0
    assert run_cli(out, "--seed", "1") == 2
    assert "different 'seed' (on disk: 0, requested: 1)" in capsys.readouterr().err
    assert run_cli(out, "--seed", "1", "--overwrite") == 0
    assert load_dataset(out).spec.seed == 1


def test_bad_flags_are_explained(tmp_path, capsys):
    assert run_cli(tmp_path / "a", "--source-override", "epsilonn=1") == 2
    assert "unknown field(s) ['epsilonn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(tmp_path / "b", "--subsample-every", "0")
    assert "subsample_every must be an int >= 1" in capsys.readouterr().err


def test_subsampling_keeps_every_kth_episode(tmp_path):
    full = collect(CollectConfig(out=tmp_path / "full", env="darkroom", env_overrides={"horizon": 10},
                                 source=FAKE, num_histories=N, verbose=False))
    sub = collect(CollectConfig(out=tmp_path / "sub", env="darkroom", env_overrides={"horizon": 10},
                                source=FAKE, num_histories=N, subsample_every=2, verbose=False))
    full, sub = load_dataset(full), load_dataset(sub)
    assert sub.num_steps == 20 and sub.spec.extra["subsample_every"] == 2  # episodes 0, 2 of 4
    kept = np.concatenate([np.arange(0, 10), np.arange(20, 30)])
    for i in range(3):
        for a, b in zip(jax.tree.leaves(sub.history(i)), jax.tree.leaves(full.history(i))):
            np.testing.assert_array_equal(a, np.asarray(b)[kept])
    np.testing.assert_array_equal(sub.episode_returns, full.episode_returns)  # the full source curve


def test_subsampling_rejects_variable_length_episodes():
    done = np.zeros((1, 8), bool)
    done[0, [1, 4, 7]] = True  # episodes of 2, 3, 3 steps
    history = LearningHistory(np.zeros((1, 8, 2), np.int32), np.zeros((1, 8), np.int32),
                              np.zeros((1, 8), np.float32), done, np.zeros((1, 8), bool))
    with pytest.raises(ValueError, match="fixed-length episodes"):
        collect_mod.subsample_episodes(history, 2)


def test_subsampling_crops_variable_length_episodes_to_fixed_steps():
    done = np.zeros((2, 12), bool)
    done[0, [1, 4, 7, 11]] = True  # episodes 0..3 of 2, 3, 3, 4 steps
    done[1, [2, 3, 6, 11]] = True  # episodes of 3, 1, 3, 5 steps
    step = np.broadcast_to(np.arange(12), (2, 12))
    history = LearningHistory(step[..., None], step.astype(np.int32), step.astype(np.float32),
                              done, np.zeros((2, 12), bool))
    sub = collect_mod.subsample_episodes(history, 2, keep_steps=5)
    # row 0 keeps episodes 0 and 2 (steps 0-1, 5-7): 5 steps; row 1 episodes 0 and 2
    # (steps 0-2, 4-6) cropped to the first 5 kept steps
    np.testing.assert_array_equal(sub.action, [[0, 1, 5, 6, 7], [0, 1, 2, 4, 5]])
    np.testing.assert_array_equal(sub.terminated, [[False, True, False, False, True],
                                                   [False, False, True, False, False]])
    with pytest.raises(ValueError, match="history 0 keeps only 5 steps"):
        collect_mod.subsample_episodes(history, 2, keep_steps=6)


def test_continuous_task_distribution_uses_per_history_keys(tmp_path):
    collect(CollectConfig(out=tmp_path / "ds", env="bernoulli-bandit", source=FAKE,
                          source_overrides={"num_steps": 8}, num_histories=5, shard_size=2, seed=3, verbose=False))
    ds = load_dataset(tmp_path / "ds")
    env = envs.make("bernoulli-bandit")
    for i in range(5):
        task_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(3), i))
        expected = env.sample_params(task_key, "train")
        for a, b in zip(jax.tree.leaves(ds.task_params(i)), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.tree.leaves(ds.task_params(0))[0], jax.tree.leaves(ds.task_params(1))[0])


def test_source_performance_hand_computed(tmp_path):
    """Last 10% of episodes (at least one) over the exact optimum, averaged over histories."""
    env = envs.make("darkroom")  # horizon 20: goal (8, 8) is 8 moves away -> optimum 13
    spec = DatasetSpec(env="darkroom", env_overrides={}, env_config={"size": 9, "horizon": 20}, split="train",
                       source="hand", source_config={}, num_histories=2, seed=0)
    history = LearningHistory(np.zeros((2, 20, 2), np.int32), np.zeros((2, 20), np.int32),
                              np.zeros((2, 20), np.float32), np.zeros((2, 20), bool), np.zeros((2, 20), bool))
    returns = np.full((2, 20), np.nan, np.float32)
    returns[0, :10] = np.r_[np.zeros(9), 13.0]  # 10 episodes: last 1 -> 13/13 = 1.0
    returns[1, :] = np.r_[np.zeros(18), 6.5, 3.25]  # 20 episodes: last 2 -> 4.875/13 = 0.375
    params = type(env.tasks("train"))(goal=np.array([[8, 8], [8, 8]], np.int32))
    with DatasetWriter(tmp_path / "ds", spec) as writer:
        writer.write_shard(0, history, params, returns)
        ds = writer.finalize()
    perf = collect_mod.source_performance(ds)
    assert perf.num_scored == 2
    assert perf.final_fraction == pytest.approx((1.0 + 0.375) / 2)
    assert perf.fraction_near_optimal == 0.5


def test_four_devices_equal_one_device(tmp_path):
    """Histories sharded over 4 (forced host) devices are the same data as on 1 device."""
    assert run_cli(tmp_path / "one", "--shard-size", "3") == 0
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    code = (
        "import sys, jax; assert jax.device_count() == 4, jax.devices();"
        "from experiments.collect import main;"
        f"sys.exit(main({[*ENV_ARGS, '--source', FAKE, '--histories', str(N), '--shard-size', '3', '--out', str(tmp_path / 'four'), '--quiet']!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    four = load_dataset(tmp_path / "four", verify=True)
    # the shard size is a file layout only: it is not rounded to the device count
    assert [(s["start"], s["stop"]) for s in four.metadata["shards"]] == [(0, 3), (3, 6)]
    assert_equal_datasets(four, load_dataset(tmp_path / "one"))


def test_noise_source_smoke(tmp_path):
    """The real noise-distillation source runs through the CLI on Dark Room."""
    out = tmp_path / "noise"
    assert main([*ENV_ARGS, "--source", "noise", "--source-override", "num_steps=40", "--histories", "2",
                 "--out", str(out), "--quiet"]) == 0
    ds = load_dataset(out, verify=True)
    assert (ds.num_histories, ds.num_steps) == (2, 40) and ds.history(1).obs.shape == (40, 2)
    np.testing.assert_array_equal(ds.num_episodes, [4, 4])


def test_internals_are_stored_aligned_with_the_kept_steps(tmp_path):
    """--internals: R-max's per-step quantities are stored beside its history, through the
    same episode subsampling, equal to running the source directly; training windows never
    read them; a source without internals is refused."""
    overrides = {"size": 5, "horizon": 10}
    src = {"num_steps": 60, "plan_every": 10, "plan_sweeps": 10}
    path = collect(CollectConfig(out=tmp_path / "ds", env="darkroom", env_overrides=overrides,
                                 source="rmax", source_overrides=src, num_histories=3,
                                 shard_size=2, subsample_every=2, internals=True, verbose=False))
    ds = load_dataset(path)
    assert set(ds.internal_fields) == {"state", "visits", "value", "q_taken", "known_fraction"}
    env = envs.make("darkroom", **overrides)
    rmax = collect_mod.resolve_source("rmax")
    train = rmax.make_train(env, collect_mod.source_agents.make_config(rmax, "darkroom", **src),
                            internals=True)
    keys, params = collect_mod.make_history_inputs(env, "train", 0)(jnp.arange(3))
    history, seen = jax.vmap(train)(keys, params)
    keep = (np.arange(60) // 10) % 2 == 0  # 10-step episodes 0, 2, 4 kept
    for i in range(3):
        np.testing.assert_array_equal(ds.history(i).action, np.asarray(history.action)[i, keep])
        for name in ds.internal_fields:
            np.testing.assert_array_equal(ds.internals(i)[name],
                                          np.asarray(getattr(seen, name))[i, keep])
    windows = ds.read_windows(np.array([0, 2]), np.array([0, 5]), 10)
    assert windows.action.shape == (2, 10)  # internals are not training inputs
    with pytest.raises(collect_mod.ConfigError, match="does not emit internal"):
        collect(CollectConfig(out=tmp_path / "ucb", env="bernoulli-bandit", source="ucb",
                              internals=True, verbose=False))
