"""Fault injection (issue 26): byte flips, truncations and edits of every kind of file,
kills at named fault points, a full disk, partial metric lines, concurrent readers,
moved folders. Each fault ends in an error naming the damaged file or in an exact
resume, never in a silent result (the cases live in tests/integrity/faults.py)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from ad.checkpoints import load_model, restore_checkpoint, save_checkpoint
from ad.integrity import IntegrityError, LegacyArtefactWarning
from ad.train import NonFiniteLossError, distill
from tests.integrity import faults
from tests.integrity.faults import (collect_code, dataset_cases, dataset_outcomes, distill_code,
                                    make_dataset, model_cases, model_outcome, params_bytes,
                                    run_config, run_killed, temp_files)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("integrity") / "data")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("integrity") / "other", seed=7)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory) -> Path:
    """A finished tiny run (4 steps, checkpoints at 2 and 4): the reference for resumes."""
    return distill(run_config(data, tmp_path_factory.mktemp("integrity") / "run"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- datasets (findings 2 and 9) --------------------------------------------------------
@pytest.mark.parametrize("case", list(dataset_cases(Path("."))))
def test_a_damaged_dataset_is_refused_naming_the_file(case, data, other, tmp_path):
    p = _copy(data, tmp_path / "ds")
    dataset_cases(other)[case](p)
    for outcome in dataset_outcomes(p):  # distill opening it, and a collect rerun
        assert outcome.kind == "detected", outcome


def test_messages_name_what_is_wrong(data, other, tmp_path):
    cases = dataset_cases(other)
    expected = {"meta: bytes of reward.npy +1 (legacy)": r"reward.npy: \d+ bytes on disk, .*meta.json records \d+",
                "meta: leaf 'reward' dropped (legacy)": r"meta.json: leaf 'reward' is missing",
                "actions 1000, checksums updated": r"action.npy: .*history 0, step 0: 1000 .*valid: in \[0, 5\)",
                "rewards NaN, checksums updated": r"reward.npy: .*valid: finite",
                "meta: spec.env edited (legacy, no content checksum)": r"meta.json: spec.env differs",
                "meta: shards swap dirs (legacy)": r"names directory 'shard-00000008-00000016'",
                "meta: spec.env -> darkroom-hard": r"meta.json: content checksum mismatch"}
    for i, (case, pattern) in enumerate(expected.items()):
        p = _copy(data, tmp_path / f"ds{i}")
        cases[case](p)
        outcome = dataset_outcomes(p)[0]
        assert outcome.kind == "detected", (case, outcome)
        assert __import__("re").search(pattern, outcome.detail), (case, outcome.detail)


def test_an_intact_dataset_opens_and_a_legacy_one_warns_once(data, tmp_path):
    assert [o.kind for o in dataset_outcomes(data)] == ["silent", "silent"]  # no error
    legacy = _copy(data, tmp_path / "legacy")
    meta = json.loads((legacy / "meta.json").read_text())
    del meta["content_blake2b"]
    (legacy / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(LegacyArtefactWarning, match="no recorded checksum"):
        from ad.train import open_training_dataset

        open_training_dataset(legacy)


def test_an_unfinished_dataset_from_before_chunks_is_not_mixed(data, tmp_path):
    """A collection started by the old code (no chunk_size) is not finished with new chunks;
    a finished one is accepted as it is."""
    from ad.dataset import DatasetError
    from experiments.collect import CollectConfig, collect

    old = _copy(data, tmp_path / "old")
    for f in ("spec.json", "meta.json"):
        d = json.loads((old / f).read_text())
        spec = d if f == "spec.json" else d["spec"]
        del spec["extra"]["chunk_size"]
        d.pop("content_blake2b", None)
        (old / f).write_text(json.dumps(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyArtefactWarning)
        collect(CollectConfig(out=old, **faults.COLLECT))  # finished legacy: verified, used
    (old / "meta.json").unlink()
    with pytest.raises(DatasetError, match="older version.*--overwrite"):
        collect(CollectConfig(out=old, **faults.COLLECT))


# ---- models (findings 1 and 7) ---------------------------------------------------------
@pytest.mark.parametrize("case", list(model_cases()))
def test_a_damaged_model_is_refused_naming_the_file(case, run_dir, tmp_path):
    d = _copy(run_dir, tmp_path / "run")
    model_cases()[case](d)
    outcome = model_outcome(d)
    assert outcome.kind == "detected", outcome


def test_a_legacy_model_loads_with_a_warning(run_dir, tmp_path):
    d = _copy(run_dir, tmp_path / "run")
    (d / "model" / "checksums.json").unlink()
    with pytest.warns(LegacyArtefactWarning, match="trained model has no recorded checksum"):
        legacy = load_model(d)
    for a, b in zip(jax_leaves(legacy.params), jax_leaves(load_model(run_dir).params)):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


# ---- kills at named fault points, checkpoints, metrics, disk full (findings 4, 9) -------
@pytest.mark.parametrize("fault", ["checkpoint_write:2", "model_write:1"])
def test_a_run_killed_while_writing_resumes_exactly(fault, data, run_dir, tmp_path):
    out = tmp_path / "run"
    result = run_killed(distill_code(data, out), fault)
    assert result.returncode == -9, result.stderr[-2000:]  # SIGKILL at the fault point
    assert temp_files(out), "the kill left the writer's temp file"
    distill(run_config(data, out))
    assert params_bytes(out) == params_bytes(run_dir)
    assert not temp_files(out)  # removed by the rerun
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "step_00000002.msgpack", "step_00000002.msgpack.blake2b",
        "step_00000004.msgpack", "step_00000004.msgpack.blake2b"]


def test_a_collection_killed_while_writing_a_shard_resumes_exactly(data, tmp_path):
    out = tmp_path / "ds"
    result = run_killed(collect_code(out), "shard_write:2")
    assert result.returncode == -9, result.stderr[-2000:]
    make_dataset(out)
    for f in data.rglob("*.npy"):
        np.testing.assert_array_equal(np.load(f), np.load(out / f.relative_to(data)))
    assert not list(out.glob(".tmp-*"))


def _unfinished(run_dir: Path, tmp: Path, keep_last_checkpoint: bool) -> Path:
    return faults.unfinished_copy(run_dir, tmp, keep_last_checkpoint)


def test_a_corrupt_latest_checkpoint_is_named_and_skipped(data, run_dir, tmp_path):
    d = _unfinished(run_dir, tmp_path / "run", keep_last_checkpoint=True)
    faults.flip("checkpoints/step_00000004.msgpack", (100, 101, 102))(d)
    with pytest.warns(UserWarning, match=r"step_00000004.msgpack: checksum mismatch"):
        distill(run_config(data, d))
    assert params_bytes(d) == params_bytes(run_dir)


def test_a_partial_metrics_line_is_dropped_and_rewritten(data, run_dir, tmp_path, capsys):
    """Finding 4: a half-written last line of metrics.jsonl (disk full, kill)."""
    d = _unfinished(run_dir, tmp_path / "run", keep_last_checkpoint=False)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "accur')
    distill(run_config(data, d))
    assert f"{d / 'metrics.jsonl'}: dropped a partial" in capsys.readouterr().err
    losses = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, open(p / "metrics.jsonl"))]  # noqa: E731
    assert losses(d) == losses(run_dir) and params_bytes(d) == params_bytes(run_dir)


def test_a_full_disk_leaves_no_temp_file(run_dir, monkeypatch, tmp_path):
    import ad.utils

    d = _copy(run_dir, tmp_path / "run")
    state = restore_checkpoint(d / "checkpoints" / "step_00000004.msgpack", _template(run_dir))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ad.utils.os, "fsync", full)
    with pytest.raises(OSError, match=r"step_00000006.msgpack(.blake2b)?: could not be written \(No space"):
        save_checkpoint(d, state.replace(step=state.step + 2))
    monkeypatch.undo()
    assert not temp_files(d) and not list((d / "checkpoints").glob("step_00000006*"))


def _template(run_dir: Path):
    import jax

    from ad.config import ModelConfig
    from ad.model import init_params
    from ad.train_step import init_train_state, make_optimizer

    cfg = load_model(run_dir).config
    c = faults.TINY_RUN
    opt = make_optimizer(c["lr"], c["warmup_steps"], c["num_steps"])
    return init_train_state(init_params(ModelConfig(**vars_of(cfg)), jax.random.key(0), 8), opt,
                            jax.random.PRNGKey(0))


def vars_of(cfg):
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


# ---- non-finite values (deliverable: loss guard, no non-finite checkpoint) ----------------
def test_a_non_finite_loss_stops_training_naming_the_step(data, tmp_path):
    out = tmp_path / "run"
    # an absurd learning rate overflows the weights within a few steps
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step \d+"):
        distill(run_config(data, out, lr=1e30, num_steps=8, grad_clip=0.0))
    assert not (out / "model").exists()
    for ckpt in (out / "checkpoints").glob("step_*.msgpack"):  # only finite states were saved
        restore_checkpoint(ckpt, _template_for(out, data))


def _template_for(out: Path, data: Path):
    import jax

    from ad.config import ArchConfig, ModelConfig
    from ad.dataset import load_dataset
    from ad.model import init_params
    from ad.train_step import init_train_state, make_optimizer

    cfg = ModelConfig.for_env(load_dataset(data).env, ArchConfig(**faults.TINY_RUN["model"]))
    opt = make_optimizer(1e30, 2, 8, grad_clip=0.0)
    return init_train_state(init_params(cfg, jax.random.key(0), 8), opt, jax.random.PRNGKey(0))


def test_a_non_finite_checkpoint_is_never_written(run_dir, tmp_path):
    import jax

    d = _copy(run_dir, tmp_path / "run")
    state = restore_checkpoint(d / "checkpoints" / "step_00000004.msgpack", _template(run_dir))
    bad = state.replace(step=state.step + 2, params=jax.tree.map(lambda x: x * np.nan, state.params))
    with pytest.raises(IntegrityError, match="step_00000006.msgpack: .* non-finite"):
        save_checkpoint(d, bad)
    assert not (d / "checkpoints" / "step_00000006.msgpack").exists()


# ---- readers never lock (finding 6); moved folders resume (finding 5) ----------------------
def test_readers_never_lock_a_finished_dataset(data):
    from experiments.collect import CollectConfig, collect

    fd = os.open(data / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as if another process held it
        collect(CollectConfig(out=data, **faults.COLLECT))  # reads, verifies, no lock needed
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_a_moved_run_and_dataset_resume_without_retraining(data, other, run_dir, tmp_path, monkeypatch):
    moved_data = _copy(data, tmp_path / "elsewhere" / "data")
    moved_run = _copy(run_dir, tmp_path / "elsewhere" / "runs" / "run")
    before = (moved_run / "model" / "params.msgpack").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(moved_data)
    for dataset in (moved_data, Path("elsewhere/data/"), link):  # moved, relative, a symlink
        distill(run_config(dataset, moved_run))
    assert (moved_run / "model" / "params.msgpack").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"dataset.json|another dataset") as e:
        distill(run_config(other, moved_run))  # another dataset's content is refused
    assert "--overwrite" not in str(e.value)
    with pytest.raises(ValueError, match=r"different config \(fields \['num_steps'\]") as e:
        distill(run_config(moved_data, moved_run, num_steps=6))
    assert "--overwrite" not in str(e.value)
