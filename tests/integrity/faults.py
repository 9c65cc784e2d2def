"""Fault cases of issue 26, shared by the fault-injection tests and the summary table.

Each case injects one fault into a fresh copy of a small artefact (a collected Dark Room
dataset, a trained run) or runs a process that is killed at a named fault point, then
reads the outcome the way the pipeline would:

- ``detected``: an error whose message names the damaged file inside the artefact (or,
  for command lines, the flag and value);
- ``resumed``: rerunning the same command gives bit-identical results;
- ``silent``: neither (the failure the issue is about; must never happen);
- ``unnamed``: an error that names no file (counted as a failure too).

    python -m tests.integrity.faults          # runs every case, prints the table (~2 min)

The pytest files in this folder run the same cases (tests/integrity/test_faults.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
S0, S1 = "shard-00000000-00000008", "shard-00000008-00000016"
COLLECT = dict(env="darkroom", source="noise", source_overrides={"num_steps": 100},
               num_histories=16, shard_size=8, chunk_size=8, verbose=False)
TINY_RUN = dict(model=dict(context=4, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                           dropout=0.0), window=8, batch_size=8, lr=3e-3, warmup_steps=2,
                log_every=1, progress=False, num_steps=4, checkpoint_every=2)


@dataclasses.dataclass
class Outcome:
    kind: str  # "detected", "resumed", "detected+resumed", "silent" or "unnamed"
    detail: str = ""


def expect_error(fn: Callable, root: Path) -> Outcome:
    """``detected`` when ``fn`` raises an error naming a path under ``root``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except (ValueError, OSError, FloatingPointError) as e:
        return Outcome("detected" if str(root) in str(e) else "unnamed", str(e)[:300])
    return Outcome("silent", "no error")


# ---------------------------------------------------------------------------------------
# Artefacts
# ---------------------------------------------------------------------------------------
def make_dataset(path: Path, **overrides) -> Path:
    from experiments.collect import CollectConfig, collect

    return collect(CollectConfig(out=path, **{**COLLECT, **overrides}))


def run_config(dataset: Path, out: Path, **overrides):
    from ad.train import DistillConfig

    return DistillConfig.from_dict({**TINY_RUN, "dataset": str(dataset), "out": str(out),
                                    **overrides})


def params_bytes(run_dir: Path) -> bytes:
    return (run_dir / "model" / "params.msgpack").read_bytes()


# ---------------------------------------------------------------------------------------
# Dataset faults (findings 2, 9): every one must stop training and a collect rerun
# ---------------------------------------------------------------------------------------
def _meta(p: Path) -> dict:
    return json.loads((p / "meta.json").read_text())


def _write_meta(p: Path, meta: dict, *, reseal: bool) -> None:
    """Write meta.json; ``reseal`` recomputes content_blake2b (a consistent edit, as a
    buggy writer would make), otherwise the edit is a corruption."""
    from ad.dataset import content_digest

    if reseal and "content_blake2b" in meta:
        meta["content_blake2b"] = content_digest(meta)
    (p / "meta.json").write_text(json.dumps(meta, indent=1))


def meta_edit(fn, reseal=False, legacy=False):
    def mutate(p: Path):
        meta = _meta(p)
        fn(meta)
        if legacy:  # as written before content_blake2b existed
            meta.pop("content_blake2b", None)
        _write_meta(p, meta, reseal=reseal)
    return mutate


def flip(rel: str, offsets=(200, 201, 202, 203)):
    def mutate(p: Path):
        raw = bytearray((p / rel).read_bytes())
        for o in offsets:
            raw[o % len(raw)] ^= 0xFF
        (p / rel).write_bytes(bytes(raw))
    return mutate


def set_values(rel: str, value, reseal=False):
    """Overwrite two rows in place; with ``reseal`` the checksums are updated too, so
    only the value checks can tell (a source that wrote bad values)."""
    def mutate(p: Path):
        from ad.integrity import file_digest

        f = p / rel
        a = np.load(f)
        a[:2] = value
        raw = bytearray(f.read_bytes())
        raw[len(raw) - a.nbytes:] = a.tobytes()
        f.write_bytes(bytes(raw))
        if reseal:
            meta = _meta(p)
            shard, name = rel.split("/")
            for s in meta["shards"]:
                if s["dir"] == shard:
                    s["files"][name]["blake2b"] = file_digest(f)[1]
            _write_meta(p, meta, reseal=True)
    return mutate


def truncate(rel: str, size: Callable[[int], int]):
    def mutate(p: Path):
        os.truncate(p / rel, size((p / rel).stat().st_size))
    return mutate


def append(rel: str, n: int):
    def mutate(p: Path):
        with open(p / rel, "ab") as f:
            f.write(b"\0" * n)
    return mutate


def swap_dirs(meta):
    a, b = meta["shards"][0], meta["shards"][1]
    for key in ("dir", "files", "max_episodes"):
        a[key], b[key] = b[key], a[key]


def drop_reward(meta):
    del meta["leaves"]["reward"]
    for s in meta["shards"]:
        del s["files"]["reward.npy"]


def copy_from_other(rel: str, other: Path):
    def mutate(p: Path):
        shutil.copy(other / rel, p / rel)
    return mutate


def dataset_cases(other: Path) -> dict[str, Callable[[Path], None]]:
    return {
        "truncate reward.npy to half": truncate(f"{S0}/reward.npy", lambda n: n // 2),
        "truncate obs.npy by 1 byte": truncate(f"{S1}/obs.npy", lambda n: n - 1),
        "append 16 bytes to action.npy": append(f"{S0}/action.npy", 16),
        "xor 4 data bytes of reward.npy": flip(f"{S0}/reward.npy"),
        "xor magic bytes of terminated.npy": flip(f"{S0}/terminated.npy", (0, 1, 2)),
        "actions set to 1000": set_values(f"{S0}/action.npy", 1000),
        "actions 1000, checksums updated": set_values(f"{S0}/action.npy", 1000, reseal=True),
        "obs 99 (off the grid), checksums updated": set_values(f"{S1}/obs.npy", 99, reseal=True),
        "rewards NaN, checksums updated": set_values(f"{S0}/reward.npy", np.nan, reseal=True),
        "action.npy from a seed-7 dataset": copy_from_other(f"{S0}/action.npy", other),
        "reward.npy of shard 0 <-> shard 1": _swap_files(f"{S0}/reward.npy", f"{S1}/reward.npy"),
        "meta.json truncated": truncate("meta.json", lambda n: n // 2),
        "meta.json deleted": lambda p: (p / "meta.json").unlink(),
        "meta: spec.env -> darkroom-hard": meta_edit(lambda m: m["spec"].__setitem__("env", "darkroom-hard")),
        "meta: spec.env edited (legacy, no content checksum)": meta_edit(
            lambda m: m["spec"].__setitem__("env", "darkroom-hard"), legacy=True),
        "meta: two shard entries swap dirs": meta_edit(swap_dirs),
        "meta: shards swap dirs (legacy)": meta_edit(swap_dirs, legacy=True),
        "meta: blake2b of action.npy changed": meta_edit(
            lambda m: m["shards"][0]["files"]["action.npy"].__setitem__("blake2b", "0" * 128)),
        "meta: bytes of reward.npy +1 (legacy)": meta_edit(
            lambda m: m["shards"][0]["files"]["reward.npy"].__setitem__(
                "bytes", m["shards"][0]["files"]["reward.npy"]["bytes"] + 1), legacy=True),
        "meta: leaf 'reward' dropped (legacy)": meta_edit(drop_reward, legacy=True),
        "meta: num_histories 16 -> 8": meta_edit(lambda m: m.__setitem__("num_histories", 8)),
        "delete params.goal.npy": lambda p: (p / S1 / "params.goal.npy").unlink(),
        "delete a whole shard dir": lambda p: shutil.rmtree(p / S1),
    }


def _swap_files(a: str, b: str):
    def mutate(p: Path):
        ta, tb = (p / a).read_bytes(), (p / b).read_bytes()
        (p / a).write_bytes(tb)
        (p / b).write_bytes(ta)
    return mutate


def dataset_outcomes(path: Path) -> list[Outcome]:
    """What distillation (opens the dataset for training) and a collect rerun (opens the
    finished dataset) make of ``path``."""
    from ad.dataset import DatasetSpec, open_finished
    from ad.train import open_training_dataset
    from experiments.collect import CollectConfig, dataset_spec

    spec: DatasetSpec = dataset_spec(CollectConfig(out=path, **COLLECT))
    return [expect_error(lambda: open_training_dataset(path), path),
            expect_error(lambda: open_finished(path, spec), path)]


# ---------------------------------------------------------------------------------------
# Model faults (findings 1, 7)
# ---------------------------------------------------------------------------------------
def _config_edit(key, value, legacy=False):
    def mutate(d: Path):
        cfg = json.loads((d / "model/config.json").read_text())
        cfg["model_config"][key] = value
        (d / "model/config.json").write_text(json.dumps(cfg))
        if legacy:
            (d / "model/checksums.json").unlink()
    return mutate


def _params_edit(fn, legacy=False):
    def mutate(d: Path):
        p = d / "model/params.msgpack"
        p.write_bytes(fn(p.read_bytes()))
        if legacy:
            (d / "model/checksums.json").unlink()
    return mutate


def _flip64(b: bytes) -> bytes:
    b = bytearray(b)
    mid = len(b) // 2
    for i in range(mid, mid + 64):
        b[i] ^= 0x55
    return bytes(b)


def model_cases() -> dict[str, Callable[[Path], None]]:
    cases = {
        "params.msgpack 64 bytes flipped mid-file": _params_edit(_flip64),
        "params.msgpack truncated to half": _params_edit(lambda b: b[: len(b) // 2]),
        "params.msgpack truncated by 1 byte": _params_edit(lambda b: b[:-1]),
        "params.msgpack 16 trailing bytes": _params_edit(lambda b: b + b"\0" * 16),
        "params.msgpack empty": _params_edit(lambda b: b""),
        "config.json truncated": lambda d: (d / "model/config.json").write_bytes(
            (d / "model/config.json").read_bytes()[:40]),
        "params.msgpack deleted": lambda d: (d / "model/params.msgpack").unlink(),
    }
    edits = [("num_layers", 2), ("num_heads", 1), ("d_model", 32), ("mlp_dim", 64),
             ("num_actions", 4), ("d_model", "abc"), ("context", 9), ("positions", "alibi")]
    for key, value in edits:
        cases[f"model_config {key} -> {value!r}"] = _config_edit(key, value)
        # a model from before checksums: only edits that change the weights' shapes can be
        # caught (context, positions and the head count shape no weight: docs/integrity.md)
        if key not in ("context", "positions", "num_heads"):
            cases[f"model_config {key} -> {value!r} (legacy, no checksums)"] = _config_edit(
                key, value, legacy=True)
    cases["params truncated (legacy)"] = _params_edit(lambda b: b[: len(b) // 2], legacy=True)
    cases["params replaced by config text (legacy)"] = lambda d: (
        shutil.copy(d / "model/config.json", d / "model/params.msgpack"),
        (d / "model/checksums.json").unlink())
    return cases


def model_outcome(run_dir: Path) -> Outcome:
    from ad.checkpoints import load_model

    return expect_error(lambda: load_model(run_dir), run_dir)


# ---------------------------------------------------------------------------------------
# Kills at named fault points (subprocess, SIGKILL: no clean-up runs)
# ---------------------------------------------------------------------------------------
def run_killed(code: str, fault: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ICRL_FAULTS=fault, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               ICRL_NO_HUGEPAGE_MALLOC="1")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def distill_code(dataset: Path, out: Path, **overrides) -> str:
    return (f"from tests.integrity.faults import run_config; from ad.train import distill; "
            f"distill(run_config({str(dataset)!r}, {str(out)!r}, **{overrides!r}))")


def collect_code(out: Path, **overrides) -> str:
    return (f"from pathlib import Path; from tests.integrity.faults import make_dataset; "
            f"make_dataset(Path({str(out)!r}), **{overrides!r})")


def temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


# ---------------------------------------------------------------------------------------
# Faults a rerun must survive exactly (the tests: test_faults.py, test_pipeline.py)
# ---------------------------------------------------------------------------------------
def unfinished_copy(run: Path, dst: Path, keep_last_checkpoint: bool) -> Path:
    """A copy of a finished run as if it had been killed before saving its model."""
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "model")
    (dst / "provenance.json").unlink()
    if not keep_last_checkpoint:
        for f in (dst / "checkpoints").glob(f"step_{TINY_RUN['num_steps']:08d}*"):
            f.unlink()
    return dst


def _resume_rows(tmp: Path, data: Path, other: Path, run: Path) -> list:
    import contextlib
    import errno
    import fcntl
    import io
    from unittest import mock

    import ad.utils
    from ad.train import distill
    from experiments.collect import CollectConfig, collect

    rows, ref = [], params_bytes(run)

    def resumed(out: Path) -> bool:
        return params_bytes(out) == ref and not temp_files(out)

    d = unfinished_copy(run, tmp / "r-flip", keep_last_checkpoint=True)
    flip("checkpoints/step_00000004.msgpack", (100, 101, 102))(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distill(run_config(data, d))
    named = any("step_00000004.msgpack: checksum mismatch" in str(w.message) for w in caught)
    rows.append(("ckpt", "latest checkpoint 3 bytes flipped (skipped for the one before)",
                 Outcome(("detected+" if named else "") + ("resumed" if resumed(d) else "silent"))))

    d = unfinished_copy(run, tmp / "r-metrics", keep_last_checkpoint=False)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "accur')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        distill(run_config(data, d))
    lines = [json.loads(line)["step"] for line in open(d / "metrics.jsonl")]
    rows.append(("metrics", "partial last line of metrics.jsonl (finding 4)", Outcome(
        ("detected+" if str(d / "metrics.jsonl") in err.getvalue() else "")
        + ("resumed" if resumed(d) and lines == [1, 2, 3, 4] else "silent"))))

    d = unfinished_copy(run, tmp / "r-full", keep_last_checkpoint=False)
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    with mock.patch.object(ad.utils.os, "fsync", full):
        o = expect_error(lambda: distill(run_config(data, d)), d)
    left = temp_files(d)
    distill(run_config(data, d))  # space freed: the same command again
    rows.append(("disk", "disk full while writing (fsync fails with ENOSPC)", Outcome(
        ("detected+" if o.kind == "detected" and not left else "unnamed+")
        + ("resumed" if resumed(d) else "silent"), o.detail)))

    o = expect_error(lambda: distill(run_config(data, tmp / "r-nan", lr=1e30, num_steps=8,
                                                grad_clip=0.0)), tmp / "r-nan")
    ok = o.kind == "detected" and "non-finite at step" in o.detail and not (tmp / "r-nan" / "model").exists()
    rows.append(("train", "loss overflows (lr 1e30): stops naming the step", Outcome(
        "detected" if ok else "silent", o.detail)))

    fd = os.open(data / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a concurrent process holding the writer's lock
    try:
        o = expect_error(lambda: collect(CollectConfig(out=data, **COLLECT)), data)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    rows.append(("readers", "collect over a finished dataset while .lock is held (finding 6)",
                 Outcome("resumed" if o.kind == "silent" else "unnamed", o.detail)))

    moved = tmp / "moved"
    shutil.copytree(data, moved / "data")
    shutil.copytree(run, moved / "runs" / "run")
    link = tmp / "link"
    link.symlink_to(moved / "data")
    before = (moved / "runs" / "run" / "model" / "params.msgpack").stat().st_mtime_ns
    distill(run_config(link, moved / "runs" / "run"))
    same = (moved / "runs" / "run" / "model" / "params.msgpack").stat().st_mtime_ns == before
    rows.append(("moved", "runs and data folders moved, dataset via a symlink (finding 5)",
                 Outcome("resumed" if same else "silent")))
    o = expect_error(lambda: distill(run_config(other, moved / "runs" / "run")), moved / "runs" / "run")
    rows.append(("moved", "the same run pointed at another dataset's content", o))
    return rows


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------
def main() -> int:  # pragma: no cover - a report, the tests assert the same cases
    import tempfile

    from ad.train import distill

    rows: list[tuple[str, str, Outcome]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, other = make_dataset(tmp / "data"), make_dataset(tmp / "other", seed=7)
        for name, mutate in dataset_cases(other).items():
            p = tmp / "dc"
            shutil.rmtree(p, ignore_errors=True)
            shutil.copytree(data, p)
            mutate(p)
            for where, o in zip(("distill", "collect rerun"), dataset_outcomes(p)):
                rows.append(("dataset", f"{name} [{where}]", o))
        run = distill(run_config(data, tmp / "run"))
        for name, mutate in model_cases().items():
            d = tmp / "mc"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(run, d)
            mutate(d)
            rows.append(("model", name, model_outcome(d)))
        ref = params_bytes(run)
        for fault in ("checkpoint_write:1", "checkpoint_write:2", "model_write:1", "model_write:2"):
            out = tmp / f"kill-{fault.replace(':', '-')}"
            r = run_killed(distill_code(data, out), fault)
            killed = r.returncode == -9
            distill(run_config(data, out))
            same = params_bytes(out) == ref and not temp_files(out)
            rows.append(("kill", f"distill killed at {fault}" + ("" if killed else " (not reached)"),
                         Outcome("resumed" if same else "silent")))
        for fault in ("shard_write:1", "shard_write:2"):
            out = tmp / f"kill-{fault.replace(':', '-')}"
            run_killed(collect_code(out), fault)
            make_dataset(out)
            same = all(np.array_equal(np.load(f), np.load(out / f.relative_to(data)))
                       for f in data.rglob("*.npy")) and not temp_files(out)
            rows.append(("kill", f"collect killed at {fault}", Outcome("resumed" if same else "silent")))
        rows += _resume_rows(tmp, data, other, run)
    counts = {k: sum(k in o.kind.split("+") for _, _, o in rows)
              for k in ("detected", "resumed", "silent", "unnamed")}
    print(f"{'kind':8s} {'fault':62s} outcome")
    for kind, name, o in rows:
        print(f"{kind:8s} {name:62s} {o.kind}: {o.detail[:90]}")
    print(f"\nfaults injected {len(rows)}; detected with a named file {counts['detected']}; "
          f"resumed exactly {counts['resumed']}; silent {counts['silent']}; "
          f"error without a file {counts['unnamed']}")
    return 0 if counts["silent"] == counts["unnamed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
