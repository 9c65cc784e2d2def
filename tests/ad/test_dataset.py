"""The on-disk dataset: round trip, windows, validation errors, atomicity and resume.

Histories here are synthetic NumPy arrays (pytree obs, fixed-length episodes) written
straight through ``DatasetWriter``; ``tests/experiments/test_collect.py`` covers real
collection.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ad.dataset as dataset_mod
from ad.dataset import DatasetError, DatasetSpec, DatasetWriter, load_dataset, returns_table
from source_agents.history import LearningHistory

N, T, EPISODE = 10, 12, 4  # histories, steps per history, steps per episode
REPO = Path(__file__).resolve().parents[2]


def make_spec(**changes) -> DatasetSpec:
    fields = dict(
        env="synthetic",  # not a registered env: pytrees come back as name-keyed dicts
        env_overrides={},
        env_config={"size": 3},
        split="train",
        source="synthetic",
        source_config={"num_steps": T, "lr": 0.5},
        num_histories=N,
        seed=7,
        extra={"history_note": "synthetic data"},
    )
    fields.update(changes)
    return DatasetSpec(**fields)


def make_data(seed: int = 0, n: int = N, t: int = T):
    """All histories as one batch: pytree obs, episodes of EPISODE steps, pytree params."""
    rng = np.random.default_rng(seed)
    truncated = np.zeros((n, t), bool)
    truncated[:, EPISODE - 1 :: EPISODE] = True
    history = LearningHistory(
        obs={
            "cell": rng.integers(0, 9, (n, t, 2)).astype(np.int32),
            "view": rng.integers(0, 255, (n, t, 3, 3)).astype(np.uint8),
        },
        action=rng.integers(0, 5, (n, t)).astype(np.int32),
        reward=rng.normal(size=(n, t)).astype(np.float32),
        terminated=np.zeros((n, t), bool),
        truncated=truncated,
    )
    params = {"goal": rng.integers(0, 9, (n, 2)).astype(np.int32), "means": rng.random((n, 4)).astype(np.float32)}
    return history, params


def rows(tree, lo, hi):
    import jax

    return jax.tree.map(lambda x: x[lo:hi], tree)


def write_all(path, spec=None, data=None, shard_size=4):
    spec = spec or make_spec()
    history, params = data or make_data()
    with DatasetWriter(path, spec) as writer:
        for lo, hi in writer.pending(shard_size):
            writer.write_shard(lo, rows(history, lo, hi), rows(params, lo, hi))
        return writer.finalize()


def assert_same_dataset(a, b):
    assert (a.num_histories, a.num_steps) == (b.num_histories, b.num_steps)
    for i in range(a.num_histories):
        la, lb = _leaves(a.history(i)), _leaves(b.history(i))
        assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
    np.testing.assert_array_equal(a.episode_returns, b.episode_returns)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


# ---------------------------------------------------------------------------------------
def test_returns_table_hand_computed():
    reward = np.array([[1, 0, 2, 0, 0, 3], [1, 1, 1, 1, 1, 1]], np.float32)
    done = np.array([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]], bool)
    table, counts = returns_table(reward, done)
    # row 0: episodes [1, 0] -> 1 and [2, 0, 0] -> 2; the trailing [3] is incomplete
    np.testing.assert_array_equal(counts, [2, 1])
    np.testing.assert_array_equal(table, [[1.0, 2.0], [6.0, np.nan]])


def test_round_trip(tmp_path):
    history, params = make_data()
    ds = write_all(tmp_path / "ds", data=(history, params))
    ds = load_dataset(tmp_path / "ds", verify=True)
    assert (ds.num_histories, ds.num_steps, ds.num_shards) == (N, T, 3)  # shards of 4, 4, 2
    assert sorted(os.listdir(tmp_path / "ds" / "shard-00000008-00000010")) == sorted(
        ["obs.cell.npy", "obs.view.npy", "action.npy", "reward.npy", "terminated.npy", "truncated.npy",
         "params.goal.npy", "params.means.npy", "episode_returns.npy", "num_episodes.npy", "shard.json"]
    )
    for i in range(N):
        h = ds.history(i)
        assert isinstance(h.action, np.memmap)  # views, not copies
        np.testing.assert_array_equal(h.obs["cell"], history.obs["cell"][i])
        np.testing.assert_array_equal(h.obs["view"], history.obs["view"][i])
        assert h.obs["view"].dtype == np.uint8 and h.obs["cell"].dtype == np.int32
        for field, dtype in [("action", np.int32), ("reward", np.float32), ("terminated", bool), ("truncated", bool)]:
            np.testing.assert_array_equal(getattr(h, field), getattr(history, field)[i])
            assert getattr(h, field).dtype == dtype
        p = ds.task_params(i)
        np.testing.assert_array_equal(p["goal"], params["goal"][i])
        np.testing.assert_array_equal(p["means"], params["means"][i])
        # episodes of 4 steps: the source's return is the sum of each block of 4 rewards
        expected = history.reward[i].reshape(T // EPISODE, EPISODE).sum(1)
        np.testing.assert_allclose(ds.source_returns(i), expected, rtol=1e-6)
    idx = np.array([9, 0, 5])
    np.testing.assert_array_equal(ds.task_params(idx)["goal"], params["goal"][idx])
    np.testing.assert_array_equal(ds.num_episodes, np.full(N, T // EPISODE))
    assert ds.episode_returns.shape == (N, T // EPISODE)

    meta = ds.metadata
    assert meta["schema_version"] == dataset_mod.SCHEMA_VERSION
    assert meta["spec"]["source_config"] == {"num_steps": T, "lr": 0.5}
    assert meta["spec"]["extra"]["history_note"] == "synthetic data"
    assert meta["leaves"]["obs.view"] == {"kind": "step", "shape": [3, 3], "dtype": "|u1"}
    assert {"created", "versions", "git_commit"} <= set(meta) and "numpy" in meta["versions"]
    assert [(s["start"], s["stop"]) for s in meta["shards"]] == [(0, 4), (4, 8), (8, 10)]
    text = ds.summary()
    assert "10 histories x 12 steps" in text and "3 shard(s)" in text

    ds.read_windows(np.arange(N), np.zeros(N, int), T)  # opens every memory map
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # pickling sends the metadata, never the arrays
    np.testing.assert_array_equal(pickle.loads(blob).history(9).action, history.action[9])


def test_env_structured_pytrees(tmp_path):
    """With a registered env, obs and params come back in the env's own pytree types."""
    import envs

    env = envs.make("darkroom")
    history, _ = make_data()
    history = history._replace(obs=history.obs["cell"])
    goals = np.asarray(env.tasks("train").goal[:N])
    spec = make_spec(env="darkroom", env_config={"size": 9, "horizon": 20})
    ds = write_all(tmp_path / "ds", spec=spec, data=(history, type(env.tasks("train"))(goal=goals)))
    assert isinstance(ds.history(3).obs, np.ndarray) and ds.history(3).obs.shape == (T, 2)
    params = ds.task_params(np.arange(N))
    assert type(params).__name__ == "DarkRoomParams"
    np.testing.assert_array_equal(params.goal, goals)


def test_read_windows_equals_slicing(tmp_path):
    ds = write_all(tmp_path / "ds", shard_size=3)  # 4 shards, windows cross none of them
    rng = np.random.default_rng(1)
    for length in (1, 5, T):
        idx = rng.integers(0, N, 64)
        start = rng.integers(0, T - length + 1, 64)
        batch = ds.read_windows(idx, start, length)
        assert batch.action.shape == (64, length) and batch.obs["view"].shape == (64, length, 3, 3)
        for b in range(64):
            h = ds.history(int(idx[b]))
            window = slice(start[b], start[b] + length)
            np.testing.assert_array_equal(batch.obs["cell"][b], h.obs["cell"][window])
            np.testing.assert_array_equal(batch.obs["view"][b], h.obs["view"][window])
            for field in ("action", "reward", "terminated", "truncated"):
                np.testing.assert_array_equal(getattr(batch, field)[b], getattr(h, field)[window])
    with pytest.raises(ValueError, match="window start"):
        ds.read_windows(np.array([0]), np.array([T - 2]), 3)
    with pytest.raises(ValueError, match="history index out of range"):
        ds.read_windows(np.array([N]), np.array([0]), 3)


def test_intended_action_is_stored_only_when_the_source_records_it(tmp_path):
    plain = write_all(tmp_path / "plain")
    assert plain.optional_step_fields == () and plain.history(0).intended_action is None
    assert plain.read_windows(np.array([1]), np.array([0]), 4).intended_action is None
    with pytest.raises(ValueError, match="intended_action"):
        plain.step_table("intended_action")
    history, params = make_data()
    intended = (history.action + 1) % 5  # differs from the executed action everywhere
    ds = write_all(tmp_path / "ds", data=(history._replace(intended_action=intended), params))
    ds = load_dataset(tmp_path / "ds", verify=True)
    assert ds.optional_step_fields == ("intended_action",)
    assert ds.metadata["leaves"]["intended_action"] == {"kind": "step", "shape": [], "dtype": "<i4"}
    for i in range(N):
        np.testing.assert_array_equal(ds.history(i).intended_action, intended[i])
        np.testing.assert_array_equal(ds.history(i).action, history.action[i])
    np.testing.assert_array_equal(ds.step_table("intended_action"), intended)
    batch = ds.read_windows(np.array([7, 2]), np.array([3, 0]), 5)
    np.testing.assert_array_equal(batch.intended_action, [intended[7, 3:8], intended[2, 0:5]])


# ---- validation errors ----------------------------------------------------------------
def test_corrupt_byte_fails_verify_naming_the_file(tmp_path):
    write_all(tmp_path / "ds")
    target = tmp_path / "ds" / "shard-00000004-00000008" / "reward.npy"
    data = bytearray(target.read_bytes())
    data[-7] ^= 0xFF  # flip a byte of the array payload; sizes and header stay valid
    target.write_bytes(bytes(data))
    ds = load_dataset(tmp_path / "ds")  # cheap validation cannot see it
    with pytest.raises(DatasetError, match=r"shard-00000004-00000008/reward\.npy: checksum mismatch"):
        ds.verify()
    with pytest.raises(DatasetError, match=r"reward\.npy: checksum mismatch"):
        load_dataset(tmp_path / "ds", verify=True)


def test_truncated_file_fails_load_naming_the_file(tmp_path):
    write_all(tmp_path / "ds")
    target = tmp_path / "ds" / "shard-00000000-00000004" / "obs.view.npy"
    os.truncate(target, target.stat().st_size - 10)
    with pytest.raises(DatasetError, match=r"shard-00000000-00000004/obs\.view\.npy: .*truncated"):
        load_dataset(tmp_path / "ds")


def test_missing_file_and_wrong_shape(tmp_path):
    write_all(tmp_path / "ds")
    (tmp_path / "ds" / "shard-00000008-00000010" / "action.npy").unlink()
    with pytest.raises(DatasetError, match=r"shard-00000008-00000010/action\.npy: file is missing"):
        load_dataset(tmp_path / "ds")
    np.save(tmp_path / "ds" / "shard-00000008-00000010" / "action.npy", np.zeros((2, T + 1), np.int32))
    with pytest.raises(DatasetError, match=r"action\.npy: shape \(2, 13\), expected \(2, 12\)"):
        load_dataset(tmp_path / "ds")
    np.save(tmp_path / "ds" / "shard-00000008-00000010" / "action.npy", np.zeros((2, T), np.int64))
    with pytest.raises(DatasetError, match=r"action\.npy: dtype int64, expected int32"):
        load_dataset(tmp_path / "ds")


def test_wrong_schema_version(tmp_path):
    write_all(tmp_path / "ds")
    meta_path = tmp_path / "ds" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"meta\.json: schema_version 999 is not supported"):
        load_dataset(tmp_path / "ds")


# ---- atomicity and resume -------------------------------------------------------------
def test_crash_mid_shard_leaves_no_loadable_dataset_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "ds"
    history, params = make_data()
    real_write = dataset_mod._write_npy
    calls = {"n": 0}

    def flaky(file_path, array):  # dies inside the second shard, after a few files
        calls["n"] += 1
        if calls["n"] == 15:
            raise OSError("disk on fire")
        return real_write(file_path, array)

    monkeypatch.setattr(dataset_mod, "_write_npy", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        write_all(path)
    monkeypatch.undo()
    assert [p.name for p in path.iterdir() if p.name.startswith(".tmp-")]  # half-written shard
    with pytest.raises(DatasetError, match="incomplete dataset .*1 finished shard"):
        load_dataset(path)

    with DatasetWriter(path, make_spec()) as writer:  # resume: stale temp dir removed
        assert not [p for p in path.iterdir() if p.name.startswith(".tmp-")]
        assert writer.completed == [(0, 4)]
        assert writer.pending(4) == [(4, 8), (8, 10)]
        first_shard = (path / "shard-00000000-00000004" / "action.npy").stat()
        for lo, hi in writer.pending(4):
            writer.write_shard(lo, rows(history, lo, hi), rows(params, lo, hi))
        resumed = writer.finalize()
    assert (path / "shard-00000000-00000004" / "action.npy").stat().st_mtime_ns == first_shard.st_mtime_ns
    resumed.verify()
    assert_same_dataset(resumed, write_all(tmp_path / "clean"))


def test_all_shards_but_no_meta_is_incomplete(tmp_path):
    history, params = make_data()
    with DatasetWriter(tmp_path / "ds", make_spec()) as writer:
        for lo, hi in writer.pending(5):
            writer.write_shard(lo, rows(history, lo, hi), rows(params, lo, hi))
        # "crash" before finalize
    with pytest.raises(DatasetError, match="incomplete dataset"):
        load_dataset(tmp_path / "ds")
    with DatasetWriter(tmp_path / "ds", make_spec()) as writer:
        assert writer.is_complete and writer.pending(5) == []
        writer.finalize().verify()


def test_killed_writer_process_leaves_no_loadable_dataset(tmp_path):
    """A hard kill (no cleanup, no exception handlers) in the middle of writing a shard."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import ad.dataset as d
        import tests.ad.test_dataset as t
        real, calls = d._write_npy, [0]
        def dying(path, array):
            calls[0] += 1
            if calls[0] == 13:
                os._exit(9)  # like SIGKILL: nothing after this runs
            return real(path, array)
        d._write_npy = dying
        t.write_all({str(tmp_path / "ds")!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    with pytest.raises(DatasetError, match="incomplete dataset"):
        load_dataset(tmp_path / "ds")
    with DatasetWriter(tmp_path / "ds", make_spec()) as writer:  # the OS released the lock
        assert writer.completed == [(0, 4)]


def test_spec_mismatch_names_field_and_overwrite(tmp_path):
    write_all(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"different 'source_config\.lr' \(on disk: 0\.5, requested: 0\.25\)"):
        DatasetWriter(tmp_path / "ds", make_spec(source_config={"num_steps": T, "lr": 0.25}))
    with pytest.raises(DatasetError, match=r"different 'seed'"):
        DatasetWriter(tmp_path / "ds", make_spec(seed=8))
    load_dataset(tmp_path / "ds")  # the failed attempts touched nothing
    new_spec = make_spec(seed=8)
    with DatasetWriter(tmp_path / "ds", new_spec, overwrite=True) as writer:
        assert writer.completed == [] and not (tmp_path / "ds" / "meta.json").exists()
        history, params = make_data(seed=3)
        for lo, hi in writer.pending(N):
            writer.write_shard(lo, rows(history, lo, hi), rows(params, lo, hi))
        ds = writer.finalize()
    assert ds.spec.seed == 8
    np.testing.assert_array_equal(ds.history(0).action, history.action[0])


def test_refuses_foreign_directory_and_concurrent_writer(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a dataset"):
        DatasetWriter(foreign, make_spec())
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        DatasetWriter(foreign, make_spec(), overwrite=True)
    assert (foreign / "notes.txt").exists()
    with DatasetWriter(tmp_path / "ds", make_spec()):
        with pytest.raises(DatasetError, match="another writer"):
            DatasetWriter(tmp_path / "ds", make_spec())


def test_inconsistent_shards_are_rejected(tmp_path):
    history, params = make_data()
    with DatasetWriter(tmp_path / "ds", make_spec()) as writer:
        writer.write_shard(0, rows(history, 0, 4), rows(params, 0, 4))
        with pytest.raises(DatasetError, match="overlap"):
            writer.write_shard(2, rows(history, 2, 6), rows(params, 2, 6))
        short, _ = make_data(t=T - 1)
        with pytest.raises(DatasetError, match="11 steps but earlier shards have 12"):
            writer.write_shard(4, rows(short, 4, 8), rows(params, 4, 8))
        wrong = history._replace(obs={"cell": history.obs["cell"]})
        with pytest.raises(DatasetError, match="leaf layout differs"):
            writer.write_shard(4, rows(wrong, 4, 8), rows(params, 4, 8))
        with pytest.raises(DatasetError, match="not written yet"):
            writer.finalize()
