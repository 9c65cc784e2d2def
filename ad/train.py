"""Distillation: train the AD transformer on windows of learning histories.

    from ad.config import ArchConfig
    from ad.train import DistillConfig, distill
    run_dir = distill(DistillConfig(dataset="data/darkroom-ppo", out="runs/darkroom-ad",
                                    model=ArchConfig(context=60, num_layers=2)))
    model = ad.checkpoints.load_model(run_dir)   # config + params, one call

The algorithm, top to bottom (``distill``):
1. Open the memory-mapped dataset (never loaded whole) and build the model config for its
   env from ``config.model``. Windows (``ad.windows``) are ``window`` consecutive steps
   of one history, longer than the attention band so training sees the same banded
   attention as evaluation; batch ``s`` is a pure function of (seed, s), so a resumed
   run replays exactly the batches an uninterrupted run would see.
2. A background thread reads and assembles the next batches and puts them on the devices
   (sharded over the batch axis) while the current step runs.
3. One jitted ``train_step`` (``ad.train_step``) runs data-parallel over every device:
   params replicated, batch split over a 1-D ``("data",)`` mesh; XLA inserts the
   gradient all-reduce. The same command runs on 1 CPU, a GPU or many devices.
4. Every ``checkpoint_every`` steps the train state is written atomically; a killed run
   restarted with the same command resumes from the last checkpoint and ends where an
   uninterrupted run would. Metrics go to ``metrics.jsonl`` (and TensorBoard when
   ``tensorboardX`` is installed); a progress bar shows loss and env-steps/s.
5. The final model is saved as ``model/config.json`` + ``model/params.msgpack``
   (``ad.checkpoints``, sealed by checksums).

Integrity (docs/integrity.md): the dataset is verified (checksums, once per process) and
value-checked (actions, observations, rewards) before the first step; the jitted step
also records the first step whose loss or gradient norm is not finite, read at logging
and checkpoint time (no per-step host round-trip), and training stops there with
``NonFiniteLossError`` naming the step; no non-finite checkpoint or model is written.
A run is identified by its config (without ``out``, ``dataset`` and ``progress``) and its
dataset's *content* (``Dataset.content_id``, kept in ``dataset.json``), so a moved or
differently spelled runs folder or dataset path resumes. One process trains a run
directory at a time (``.lock``; a second one waits); readers never lock.

Expert Distillation (ED), the paper's baseline, is the same loop with
``last_steps`` set: windows come only from the final (expert) part of each history.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from ad.checkpoints import (MODEL_DIR, checkpoint_steps, restore_latest_checkpoint,
                            save_checkpoint, save_model, snapshot_dir)
from ad.config import ArchConfig, ModelConfig
from ad.dataset import Dataset, load_dataset
from ad.integrity import remove_stale_temp_files, warn_legacy
from ad.model import ADTransformer, init_params
from ad.train_step import init_train_state, make_optimizer, make_train_step
from ad.utils import atomic_write_text, check_output_path, coerce_field, field_types, provenance
from ad.windows import TARGETS, Prefetcher, WindowSampler

PyTree = Any
CONFIG_FILE = "distill_config.json"
DATASET_FILE = "dataset.json"  # the content id of the dataset a run trains on
LOCK_FILE = ".lock"
# fields that say where things are, not what is computed: left out of the resume check
_LOCATION_FIELDS = {"out", "dataset", "progress"}
# DistillConfig fields removed in the house clean-up (they did not help; see
# docs/key_to_door.md): saved runs holding them at these defaults still load.
_REMOVED_FIELDS = {"first_success_focus": 0.0, "task_loss_weight": 0.0}


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Everything that defines one distillation run (saved as ``distill_config.json``)."""

    dataset: str  # path of a dataset written by experiments.collect (training tasks)
    out: str  # run directory: checkpoints, metrics.jsonl, model/
    seed: int = 0  # model init, dropout and window sampling
    model: ArchConfig = ArchConfig()  # the architecture (ad.config.ArchConfig)
    window: int = 0  # T: steps per training window; 0 means 2 * context
    # ---- optimisation ---------------------------------------------------------------------
    batch_size: int = 128  # windows per step, split over all devices
    num_steps: int = 2000  # optimiser steps
    lr: float = 1e-3  # peak learning rate (after warm-up; cosine decay to 0)
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 1e-4  # AdamW decay on matrices
    grad_clip: float = 1.0  # global-norm clipping (<= 0: off)
    label_smoothing: float = 0.0  # on the action targets
    targets: str = "action"  # "action" (what the source did) or "intended_action" (its
    #   choice before injected noise, for datasets that store it: the memory diagnostic)
    # ---- data -----------------------------------------------------------------------------
    last_steps: int = 0  # > 0: Expert Distillation, windows only from each history's last
    #   last_steps steps (its final, expert episodes)
    # ---- bookkeeping ----------------------------------------------------------------------
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    snapshots: bool = False  # also keep the model at step 0, every power of two and the
    #   end (ad.checkpoints.snapshot_dir; the study's over-training experiment); training
    #   is unchanged (same params at every step as without)
    log_every: int = 50  # steps between metric lines
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        types = field_types(DistillConfig)
        for f in dataclasses.fields(self):
            if f.name != "model":  # typed values (CLI strings parsed) or an error naming the field
                object.__setattr__(self, f.name, coerce_field(
                    types[f.name], getattr(self, f.name), f"DistillConfig.{f.name}"))
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ArchConfig.from_dict(
                self.model, where="DistillConfig.model"))
        if not isinstance(self.model, ArchConfig) or isinstance(self.model, ModelConfig):
            raise ValueError(f"DistillConfig.model must be an ad.config.ArchConfig, got "
                             f"{type(self.model).__name__}")
        for name in ("batch_size", "num_steps", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DistillConfig.{name} must be >= 1, got {getattr(self, name)}")
        self.model.training_window(self.window)  # checks window >= context
        for name in ("seed", "last_steps", "window", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"DistillConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"DistillConfig.label_smoothing must lie in [0, 1), got "
                             f"{self.label_smoothing}")
        if self.targets not in TARGETS:
            raise ValueError(f"DistillConfig.targets must be one of {TARGETS}, got "
                             f"{self.targets!r}")

    @property
    def window_steps(self) -> int:
        return self.model.training_window(self.window)

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "DistillConfig") -> "DistillConfig":
        """Build from a dict that is nested (``{"model": {...}, ...}``, as saved) or flat
        (architecture fields beside the others, as in ``experiments.settings`` and in runs
        saved before the model config was nested); removed fields at their defaults are
        dropped with a warning, unknown ones are an error naming them."""
        arch_fields = {f.name for f in dataclasses.fields(ArchConfig)}
        own = {f.name for f in dataclasses.fields(cls)}
        model = dict(d.get("model") or {})
        kw = {}
        for key, value in d.items():
            if key == "model":
                continue
            if key in arch_fields or key in ("obs_linear", "episode_return_token"):
                model[key] = value
            elif key in own:
                kw[key] = value
            elif key in _REMOVED_FIELDS:
                if value != _REMOVED_FIELDS[key]:
                    raise ValueError(f"{where}: field {key}={value!r} was removed (it did not "
                                     f"help; see docs/key_to_door.md)")
                warnings.warn(f"{where}: ignoring removed field {key}={value!r} (its default)",
                              stacklevel=2)
            else:
                raise ValueError(f"{where}: unknown field {key!r}; valid fields: "
                                 f"{sorted((own - {'model'}) | arch_fields)}")
        return cls(model=ArchConfig.from_dict(model, where=f"{where}.model"), **kw)


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; nothing past it was written."""


def _comparable(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in _LOCATION_FIELDS}


def _check_resume(run_dir: Path, config: DistillConfig, dataset: Dataset,
                  overwrite: bool) -> None:
    """Refuse to continue a run with another config or another dataset (by content);
    where the run directory or the dataset live does not matter."""
    cfg_path, data_path = run_dir / CONFIG_FILE, run_dir / DATASET_FILE
    wanted = dataclasses.asdict(config)
    if cfg_path.exists():
        if overwrite:
            import shutil

            shutil.rmtree(run_dir)
        else:
            # read through from_dict: runs saved flat, or before a field was added or
            # removed, compare as their current equivalent
            try:
                saved = dataclasses.asdict(DistillConfig.from_dict(
                    json.loads(cfg_path.read_text()), where=str(cfg_path)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_path}: not valid JSON ({e}); delete the run directory "
                                 f"to start over") from None
            old, new = _comparable(saved), _comparable(wanted)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise ValueError(
                    f"{run_dir}: holds a run with a different config (fields {diff}: "
                    f"{[old.get(k) for k in diff]} on disk, {[new.get(k) for k in diff]} "
                    f"requested); choose another run directory (--runs / out) or delete it")
            _check_dataset_identity(run_dir, dataset, saved["dataset"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg_path.exists():
        atomic_write_text(cfg_path, json.dumps(wanted, indent=2))
    if not data_path.exists():
        atomic_write_text(data_path, json.dumps(
            {"content_id": dataset.content_id, "path": str(dataset.path)}, indent=2))


def _check_dataset_identity(run_dir: Path, dataset: Dataset, saved_path: str) -> None:
    data_path = run_dir / DATASET_FILE
    if data_path.exists():
        try:
            recorded = json.loads(data_path.read_text())["content_id"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{data_path}: malformed ({type(e).__name__}: {e})") from None
        if recorded != dataset.content_id:
            raise ValueError(
                f"{run_dir}: was trained on another dataset (content id {recorded[:16]}… in "
                f"{data_path}, {dataset.path} has {dataset.content_id[:16]}…); choose another "
                f"run directory (--runs / out) or delete it")
    else:  # a run from before content ids: the path is all there is to compare
        if os.path.realpath(saved_path) != os.path.realpath(dataset.path):
            warn_legacy(run_dir, f"the dataset this run trained on (recorded as {saved_path}, "
                                 f"now {dataset.path})")


class _RunLock:
    """An exclusive lock on a run directory while it trains; a second process waits."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{run_dir}: another process is training this run; waiting for it to end",
                  file=sys.stderr, flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_values_checked: set[str] = set()


def open_training_dataset(path: str | os.PathLike) -> Dataset:
    """The dataset a run trains on: verified (checksums) and value-checked, once per
    process and content (``ad.integrity`` caches the digests)."""
    dataset = load_dataset(path, verify=True)
    if dataset.content_id not in _values_checked:
        dataset.check_values()
        _values_checked.add(dataset.content_id)
    return dataset


def _tensorboard(run_dir: Path):
    try:
        from tensorboardX import SummaryWriter  # optional
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


@dataclasses.dataclass(frozen=True)
class DataParallelStep:
    """A jitted train step over a 1-D ``data`` mesh: state replicated, batch split on axis 0."""
    step: Callable  # (TrainState, Batch) -> (TrainState, metrics); donates the state
    replicated: NamedSharding
    data_sharded: NamedSharding
    # (TrainState, Batch, first_bad) -> (TrainState, metrics, first_bad): first_bad is the
    # first step number whose loss or gradient norm was not finite (-1: none yet)
    guarded_step: Callable | None = None


def data_parallel_train_step(model: ADTransformer, optimizer, label_smoothing: float = 0.0,
                             devices=None) -> DataParallelStep:
    """Data parallelism with ``jax.sharding``: XLA inserts the gradient all-reduce.

    On a CPU, ``jax.config.update("jax_num_cpu_devices", n)`` (or ``XLA_FLAGS=
    --xla_force_host_platform_device_count=n``) before first use splits the host into n
    devices; each runs its shard of the batch on its own thread, which uses several cores
    better than one device's intra-op threading for a model this small (see
    benchmarks/ad_throughput.py).
    """
    mesh = Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))
    replicated, data_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    inner = make_train_step(model, optimizer, label_smoothing)
    step = jax.jit(inner, in_shardings=(replicated, data_sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)

    def guarded(state, batch, first_bad):
        new_state, metrics = inner(state, batch)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        first_bad = jnp.where((first_bad < 0) & ~finite, state.step + 1, first_bad)
        return new_state, metrics, first_bad

    guarded_step = jax.jit(guarded, in_shardings=(replicated, data_sharded, replicated),
                           out_shardings=(replicated, replicated, replicated),
                           donate_argnums=(0, 2))
    return DataParallelStep(step, replicated, data_sharded, guarded_step)


def distill(config: DistillConfig, overwrite: bool = False) -> Path:
    """Train (or resume) a distillation run; returns the run directory."""
    run_dir = Path(config.out)
    check_output_path(run_dir, "DistillConfig.out")
    lock = _RunLock(run_dir)
    try:
        return _distill_locked(config, run_dir, overwrite)
    finally:
        lock.release()


def _distill_locked(config: DistillConfig, run_dir: Path, overwrite: bool) -> Path:
    dataset = load_dataset(config.dataset)  # metadata checks only: the run may be finished
    env = dataset.env
    model_config = ModelConfig.for_env(env, config.model)
    _check_resume(run_dir, config, dataset, overwrite)
    if (run_dir / MODEL_DIR / "config.json").exists():
        return run_dir  # finished earlier (config.json is the model's last file); load_model verifies it
    for d in (run_dir, run_dir / MODEL_DIR):
        remove_stale_temp_files(d)  # left by a killed writer (checkpoints: ad.checkpoints)
    dataset = open_training_dataset(config.dataset)

    devices = jax.devices()
    if config.batch_size % len(devices):
        raise ValueError(f"DistillConfig.batch_size={config.batch_size} must be divisible by "
                         f"the number of devices ({len(devices)})")
    model = ADTransformer(model_config)
    optimizer = make_optimizer(config.lr, min(config.warmup_steps, config.num_steps - 1),
                               config.num_steps, config.weight_decay, config.grad_clip)
    parallel = data_parallel_train_step(model, optimizer, config.label_smoothing, devices)
    replicated, data_sharded = parallel.replicated, parallel.data_sharded
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = init_train_state(init_params(model_config, init_key, config.window_steps),
                             optimizer, dropout_key)
    resumed = restore_latest_checkpoint(run_dir, state)
    if resumed is not None:
        state = resumed
    state = jax.device_put(state, replicated)
    start_step = int(state.step)

    def snapshot(done: int):
        save_model(snapshot_dir(run_dir, done), model_config, state.params,
                   env=dataset.spec.env, env_overrides=dataset.spec.env_overrides,
                   dataset=str(dataset.path), source=dataset.spec.source,
                   dataset_id=dataset.content_id)

    snapshot_at = set(checkpoint_steps(config.num_steps)) if config.snapshots else set()
    if 0 in snapshot_at and start_step == 0:
        snapshot(0)
    train_step = parallel.guarded_step
    first_bad = jax.device_put(jnp.int32(-1), replicated)
    sampler = WindowSampler(dataset, model_config, config.window_steps, config.batch_size,
                            config.seed, config.last_steps, config.targets)

    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start_step)
    tb = _tensorboard(run_dir)
    steps_per_batch = config.batch_size * config.window_steps
    bar = tqdm(total=config.num_steps, initial=start_step, disable=not config.progress,
               desc=f"distill {run_dir.name}", unit="step", dynamic_ncols=True)
    prefetch = Prefetcher(sampler, start_step, config.num_steps, data_sharded)
    t0, last_t, last_step = time.time(), time.time(), start_step
    metrics = None

    def check_finite():  # one scalar read, only where the host reads anyway
        bad = int(jax.device_get(first_bad))
        if bad >= 0:
            raise NonFiniteLossError(
                f"{run_dir}: the loss or gradient became non-finite at step {bad} (the "
                f"dataset {dataset.path} passed its value checks; lower lr or check the "
                f"config); stopped, no checkpoint or model was written past it")
    try:
        with open(metrics_path, "a") as log:
            for step in range(start_step, config.num_steps):
                state, metrics, first_bad = train_step(state, prefetch.next(), first_bad)
                done = step + 1
                if done % config.log_every == 0 or done == config.num_steps:
                    check_finite()
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.time()
                    rate = (done - last_step) * steps_per_batch / max(now - last_t, 1e-9)
                    last_t, last_step = now, done
                    record = {"step": done, **m, "env_steps_per_s": rate,
                              "wall_s": now - t0}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if tb is not None:
                        for k, v in record.items():
                            tb.add_scalar(k, v, done)
                    bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}",
                                    steps_s=f"{rate:,.0f}")
                if done in snapshot_at:
                    check_finite()
                    snapshot(done)
                if done % config.checkpoint_every == 0 or done == config.num_steps:
                    check_finite()
                    save_checkpoint(run_dir, state)
                bar.update(1)
    finally:
        prefetch.close()
        bar.close()
        if tb is not None:
            tb.close()
    check_finite()
    save_model(run_dir, model_config, state.params, env=dataset.spec.env,
               env_overrides=dataset.spec.env_overrides, dataset=str(dataset.path),
               source=dataset.spec.source, dataset_id=dataset.content_id)
    atomic_write_text(run_dir / "provenance.json", json.dumps(
        {"config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
         "devices": [str(d) for d in devices], "wall_s": time.time() - t0,
         "resumed_from": start_step, "dataset_id": dataset.content_id, **provenance()},
        indent=2))
    return run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (they will be recomputed), and
    a partial line left by an interrupted write (e.g. a full disk)."""
    if not path.exists():
        return

    def step_of(line: str):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None  # partial or foreign line: dropped, the steps it held are redone
    lines = path.read_text(errors="replace").splitlines()
    keep = [line for line in lines if (s := step_of(line)) is not None and s <= step]
    if any(step_of(line) is None for line in lines):
        print(f"{path}: dropped a partial or unreadable line (an interrupted write); the "
              f"steps after {step} are recomputed", file=sys.stderr)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
