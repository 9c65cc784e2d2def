"""experiments.run end to end under faults (issue 26): flipped model weights stop the
run (finding 1), a moved runs/data folder resumes (finding 5), a finished evaluation is
reused and says so (finding 9), and every bad flag is refused before any stage starts
(finding 8)."""

from __future__ import annotations

import json
import shutil

import pytest

from ad.integrity import IntegrityError
from experiments import run as run_mod
from experiments.settings import Setting

TINY = Setting(
    name="tiny-bandit", env="bernoulli-bandit", source="thompson", histories=16,
    source_overrides=dict(num_steps=20),
    distill=dict(context=20, window=20, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                 dropout=0.0, batch_size=8, num_steps=3, log_every=3, warmup_steps=1),
    eval_episodes=20, eval_tasks=4, report_episodes=(5, 15))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    kw = dict(data_root=root / "d", runs_root=root / "r", out_root=root / "o", quiet=True)
    record = run_mod.run(TINY, **kw)
    return root, kw, record


def test_a_rerun_reuses_the_evaluation_and_says_so(roots, capsys):
    root, kw, record = roots
    again = run_mod.run(TINY, **{**kw, "quiet": False})
    assert "evaluate: reusing" in capsys.readouterr().out
    assert again["summary"] == record["summary"]


def test_moved_folders_resume_without_retraining(roots, tmp_path, capsys):
    root, kw, record = roots
    shutil.copytree(root / "d", tmp_path / "data")
    shutil.copytree(root / "r", tmp_path / "runs")
    params = tmp_path / "runs" / "tiny-bandit" / "ad-seed0" / "model" / "params.msgpack"
    before = params.stat().st_mtime_ns
    moved = run_mod.run(TINY, data_root=tmp_path / "data", runs_root=tmp_path / "runs",
                        out_root=root / "o", quiet=False)
    assert params.stat().st_mtime_ns == before
    assert "evaluate: reusing" in capsys.readouterr().out  # same models, by content
    assert moved["summary"] == record["summary"]


def test_flipped_model_weights_stop_the_run_naming_the_file(roots, tmp_path):
    """Finding 1: 64 flipped bytes in params.msgpack were evaluated silently."""
    root, kw, _ = roots
    shutil.copytree(root / "r", tmp_path / "runs")
    p = tmp_path / "runs" / "tiny-bandit" / "ad-seed0" / "model" / "params.msgpack"
    raw = bytearray(p.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0x55
    p.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"params.msgpack: checksum mismatch"):
        run_mod.run(TINY, data_root=root / "d", runs_root=tmp_path / "runs",
                    out_root=tmp_path / "o", quiet=True)
    assert not (tmp_path / "o" / "tiny-bandit" / "eval.json").exists()


# ---- one validation pass before any work (finding 8) -----------------------------------------
@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setenv("ICRL_NO_HUGEPAGE_MALLOC", "1")  # main() must not re-exec pytest

    def call(*argv):
        try:
            rc = run_mod.main(list(argv))
        except SystemExit as e:
            rc = e.code
        return rc, capsys.readouterr().err
    return call


@pytest.mark.parametrize("override, message", [
    ("lr=abc", "lr: expected a number, got 'abc'"),
    ("num_steps=abc", "num_steps: expected an int, got 'abc'"),
    ("dropout=abc", "dropout: expected a number, got 'abc'"),
    ("num_step=3", "unknown field 'num_step'"),
    ("dataset=/x", "dataset: set by experiments.run from --data"),
    ("noequals", "KEY=VALUE"),
])
def test_bad_distill_overrides_are_named_before_anything_runs(override, message, cli, tmp_path):
    rc, err = cli("bandit", "--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"),
                  "--out", str(tmp_path / "o"), "--distill-override", override)
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # nothing was collected


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "-1"], "--seeds: expected an int >= 0, got -1"),
    (["--seeds", "abc"], "--seeds: expected an int >= 0, got 'abc'"),
    (["--distill-override", "context=-3"], "context must be an int >= 1, got -3"),
    (["--distill-override", "num_heads=3"], "not divisible by num_heads=3"),
    (["--distill-override", "token_layout=bogus"], "token_layout must be one of"),
    (["--distill-override", "lr=-1"], "lr must be > 0, got -1.0"),
])
def test_bad_values_are_named_before_anything_runs(argv, message, cli, tmp_path):
    rc, err = cli("bandit", "--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"),
                  "--out", str(tmp_path / "o"), *argv)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "d").exists()


def test_an_out_that_is_a_file_is_refused_before_collection(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, err = cli("bandit", "--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"),
                  "--out", str(tmp_path / "afile"))
    assert rc == 2 and "--out" in err and "afile is a file, not a directory" in err
    assert not (tmp_path / "d").exists()


def test_collect_types_every_override_including_lists(tmp_path, capsys):
    from experiments.collect import CollectConfig, dataset_spec, main

    spec = dataset_spec(CollectConfig(out=tmp_path / "x", source="ppo",
                                      source_overrides={"hidden_sizes": "64,64", "lr": "1"}))
    assert spec.source_config["hidden_sizes"] == (64, 64) and spec.source_config["lr"] == 1.0
    for flags, message in [(["--source", "ppo", "--source-override", "hidden_sizes=a,b"],
                            "hidden_sizes[0]: expected an int, got 'a'"),
                           (["--source", "ppo", "--source-override", "lr=abc"], "lr: expected a number"),
                           (["--env-override", "horizon=abc"], "horizon: expected an int, got 'abc'"),
                           (["--seed", "-1"], "seed must be an int >= 0")]:
        try:
            rc = main([*flags, "--histories", "2", "--out", str(tmp_path / "o"), "--quiet"])
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (flags, err)
    assert not (tmp_path / "o").exists()
    assert json.dumps(spec.to_json())  # the spec stays plain JSON
