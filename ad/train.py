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
   (``ad.checkpoints``).

Expert Distillation (ED), the paper's baseline, is the same loop with
``last_steps`` set: windows come only from the final (expert) part of each history.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from ad.checkpoints import (MODEL_DIR, latest_checkpoint, restore_checkpoint,
                            save_checkpoint, save_model)
from ad.config import ArchConfig, ModelConfig
from ad.dataset import load_dataset
from ad.model import ADTransformer, init_params
from ad.train_step import init_train_state, make_optimizer, make_train_step
from ad.utils import atomic_write_text, provenance
from ad.windows import TARGETS, Prefetcher, WindowSampler

PyTree = Any
CONFIG_FILE = "distill_config.json"
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
    log_every: int = 50  # steps between metric lines
    progress: bool = True  # show a progress bar

    def __post_init__(self):
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
        if self.last_steps < 0:
            raise ValueError(f"DistillConfig.last_steps must be >= 0, got {self.last_steps}")
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
def _check_resume(run_dir: Path, config: DistillConfig, overwrite: bool) -> None:
    cfg_path = run_dir / CONFIG_FILE
    wanted = dataclasses.asdict(config)
    if cfg_path.exists():
        if overwrite:
            import shutil

            shutil.rmtree(run_dir)
        else:
            # read through from_dict: runs saved flat, or before a field was added or
            # removed, compare as their current equivalent
            saved = dataclasses.asdict(DistillConfig.from_dict(
                json.loads(cfg_path.read_text()), where=str(cfg_path)))
            ignore = {"progress"}
            diff = sorted(k for k in set(saved) | set(wanted)
                          if k not in ignore and saved.get(k) != wanted.get(k))
            if diff:
                raise ValueError(
                    f"{run_dir}: holds a run with a different config (fields {diff}); use a new "
                    f"--out or --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg_path.exists():
        atomic_write_text(cfg_path, json.dumps(wanted, indent=2))


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
    step = jax.jit(make_train_step(model, optimizer, label_smoothing),
                   in_shardings=(replicated, data_sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)
    return DataParallelStep(step, replicated, data_sharded)


def distill(config: DistillConfig, overwrite: bool = False) -> Path:
    """Train (or resume) a distillation run; returns the run directory."""
    run_dir = Path(config.out)
    dataset = load_dataset(config.dataset)
    env = dataset.env
    model_config = ModelConfig.for_env(env, config.model)
    _check_resume(run_dir, config, overwrite)

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
    resumed = latest_checkpoint(run_dir)
    if resumed is not None:
        state = restore_checkpoint(resumed[1], state)
    state = jax.device_put(state, replicated)
    start_step = int(state.step)
    if start_step >= config.num_steps and (run_dir / MODEL_DIR / "config.json").exists():
        return run_dir  # finished earlier: nothing to redo

    train_step = parallel.step
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
    try:
        with open(metrics_path, "a") as log:
            for step in range(start_step, config.num_steps):
                state, metrics = train_step(state, prefetch.next())
                done = step + 1
                if done % config.log_every == 0 or done == config.num_steps:
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
                if done % config.checkpoint_every == 0 or done == config.num_steps:
                    save_checkpoint(run_dir, state)
                bar.update(1)
    finally:
        prefetch.close()
        bar.close()
        if tb is not None:
            tb.close()
    save_model(run_dir, model_config, state.params, env=dataset.spec.env,
               env_overrides=dataset.spec.env_overrides, dataset=str(dataset.path),
               source=dataset.spec.source)
    atomic_write_text(run_dir / "provenance.json", json.dumps(
        {"config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
         "devices": [str(d) for d in devices], "wall_s": time.time() - t0,
         "resumed_from": start_step, **provenance()}, indent=2))
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
    keep = [line for line in path.read_text().splitlines()
            if (s := step_of(line)) is not None and s <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
