"""Distillation: train the AD transformer on windows of learning histories.

    from ad.train import DistillConfig, distill
    run_dir = distill(DistillConfig(dataset="data/darkroom-ppo", out="runs/darkroom-ad"))
    model = load_model(run_dir)            # config + params, one call

The algorithm, top to bottom (``distill``):
1. Open the memory-mapped dataset (never loaded whole) and build the model config for its
   env. Windows are ``window`` consecutive steps of one history (never crossing two),
   longer than the attention band ``context`` so training sees the same banded
   attention as evaluation. Window ``j`` of optimiser step ``s`` is drawn by
   ``numpy.random.default_rng([seed, s])``: batches are a pure function of the step, so
   resuming at step ``s`` replays exactly the batches an uninterrupted run would see
   (the sampler's whole state is the step number, which the checkpoint holds).
2. A background thread reads and assembles the next batches and puts them on the devices
   (sharded over the batch axis) while the current step runs.
3. One jitted ``train_step`` (``ad.train_step``) runs data-parallel over every device:
   params replicated, batch split over a 1-D ``("data",)`` mesh; XLA inserts the
   gradient all-reduce. The same command runs on 1 CPU, a GPU or many devices.
4. Every ``checkpoint_every`` steps the train state is written atomically; a killed run
   restarted with the same command resumes from the last checkpoint and ends where an
   uninterrupted run would. Metrics go to ``metrics.jsonl`` (and TensorBoard when
   ``tensorboardX`` is installed); a progress bar shows loss and env-steps/s.
5. The final model is saved as ``model/config.json`` + ``model/params.msgpack``.

Expert Distillation (ED), the paper's baseline, is the same loop with
``last_steps`` set: windows come only from the final (expert) part of each history.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from ad.dataset import Dataset, load_dataset
from ad.model import (ADTransformer, ModelConfig, StepInputs, episode_start_from_done,
                      init_params, running_episode_return)
from ad.train_step import Batch, TrainState, init_train_state, make_optimizer, make_train_step
from ad.utils import atomic_write_bytes, atomic_write_text, provenance

PyTree = Any
CONFIG_FILE = "distill_config.json"
CKPT_DIR = "checkpoints"
MODEL_DIR = "model"


# step fields a run can learn to predict (DistillConfig.targets)
TARGETS = ("action", "intended_action")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Everything that defines one distillation run (saved as ``distill_config.json``)."""

    dataset: str  # path of a dataset written by experiments.collect (training tasks)
    out: str  # run directory: checkpoints, metrics.jsonl, model/
    seed: int = 0  # model init, dropout and window sampling
    # ---- model (see ad.model.ModelConfig) -------------------------------------------------
    context: int = 60  # c: steps every attention layer sees (the band)
    window: int = 0  # T: steps per training window; 0 means 2 * context
    d_model: int = 64  # residual width
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads
    mlp_dim: int = 256  # MLP hidden width
    dropout: float = 0.1  # residual/MLP dropout
    attn_dropout: float = 0.0  # attention-probability dropout
    token_mask_prob: float = 0.0  # random token masking during training
    token_layout: str = "step"  # "step" (one token per step) or "oar" (paper's 3 tokens)
    positions: str = "rope"  # "rope" or "alibi"
    obs_encoder: str = ""  # "" picks the env's default ("cell" for grid cells)
    obs_linear: bool = False  # add a linear embedding of the coordinates (ModelConfig.obs_linear)
    episode_start_token: bool = False  # tell the model which steps start an episode
    prev_obs_token: bool = False  # also give each step obs[t-1] (ModelConfig.prev_obs_token)
    episode_return_token: bool = False  # and the reward so far in its episode
    #   (ModelConfig.episode_return_token)
    dtype: str = "float32"  # "bfloat16" compute on accelerators
    # ---- optimisation ---------------------------------------------------------------------
    batch_size: int = 128  # windows per step, split over all devices
    num_steps: int = 2000  # optimiser steps
    lr: float = 1e-3  # peak learning rate (after warm-up; cosine decay to 0)
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 1e-4  # AdamW decay on matrices
    grad_clip: float = 1.0  # global-norm clipping (<= 0: off)
    label_smoothing: float = 0.0  # on the action targets
    targets: str = "action"  # "action" (what the source did) or "intended_action" (its
    #   choice before injected noise, for datasets that store it: source_agents.history)
    # ---- data -----------------------------------------------------------------------------
    last_steps: int = 0  # > 0: Expert Distillation, windows only from each history's last
    #   last_steps steps (its final, expert episodes)
    first_success_focus: float = 0.0  # fraction of windows placed around each history's
    #   first success (WindowSampler.first_success_end): the moment one success in context
    #   has to be acted on, rare among uniformly placed windows
    task_loss_weight: float = 0.0  # > 0: also train an auxiliary head to predict the
    #   history's discrete task entries (task_targets) at every step, with this weight
    #   (ModelConfig.task_entries; the head is never used to act)
    # ---- bookkeeping ----------------------------------------------------------------------
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    log_every: int = 50  # steps between metric lines
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        for name in ("context", "d_model", "num_layers", "num_heads", "mlp_dim", "batch_size",
                     "num_steps", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DistillConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.window and self.window < self.context:
            raise ValueError(f"DistillConfig.window ({self.window}) must be >= context "
                             f"({self.context}); longer windows (2c-4c) train the banded "
                             f"attention that long evaluations use")
        if self.last_steps < 0:
            raise ValueError(f"DistillConfig.last_steps must be >= 0, got {self.last_steps}")
        if self.targets not in TARGETS:
            raise ValueError(f"DistillConfig.targets must be one of {TARGETS}, got {self.targets!r}")
        if not self.task_loss_weight >= 0.0:
            raise ValueError(f"DistillConfig.task_loss_weight must be >= 0, got "
                             f"{self.task_loss_weight!r}")
        if not 0.0 <= self.first_success_focus <= 1.0:
            raise ValueError(f"DistillConfig.first_success_focus must lie in [0, 1], got "
                             f"{self.first_success_focus!r}")

    @property
    def window_steps(self) -> int:
        return self.window or 2 * self.context


def model_config_for(config: DistillConfig, env) -> ModelConfig:
    """The ``ModelConfig`` a distillation run trains, matched to the dataset's env."""
    overrides = dict(
        d_model=config.d_model, num_layers=config.num_layers, num_heads=config.num_heads,
        mlp_dim=config.mlp_dim, dropout=config.dropout, attn_dropout=config.attn_dropout,
        token_mask_prob=config.token_mask_prob, context=config.context,
        token_layout=config.token_layout, positions=config.positions, dtype=config.dtype,
        episode_start_token=config.episode_start_token, prev_obs_token=config.prev_obs_token,
        episode_return_token=config.episode_return_token, obs_linear=config.obs_linear)
    if config.obs_encoder:
        overrides["obs_encoder"] = config.obs_encoder
    return ModelConfig.for_env(env, **overrides)


# ----------------------------------------------------------------------------------------
# Data: windows of histories -> batches
# ----------------------------------------------------------------------------------------
def task_targets(dataset: Dataset, num_values: int) -> np.ndarray:
    """(histories, E) int32: every history's task params flattened to E discrete entries
    (leaves in the stored order, each leaf's entries in C order), the auxiliary head's
    targets. Each entry must be an integer in ``[0, num_values)`` (Key-to-Door: key x, key
    y, door x, door y); real-valued tasks (bandit arm means) have no such head."""
    columns = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(dataset.task_params())[0]:
        name, leaf = "params" + jax.tree_util.keystr(path), np.asarray(leaf)
        if leaf.dtype.kind not in "iu":
            raise ValueError(f"{dataset.path}: task param {name!r} has dtype {leaf.dtype}; "
                             f"task_loss_weight needs discrete (integer) task params")
        if leaf.size and (leaf.min() < 0 or leaf.max() >= num_values):
            raise ValueError(f"{dataset.path}: task param {name!r} takes values in "
                             f"[{leaf.min()}, {leaf.max()}], outside the head's classes "
                             f"[0, {num_values})")
        columns.append(leaf.reshape(len(leaf), -1))
    if not columns:
        raise ValueError(f"{dataset.path}: no task params stored; task_loss_weight needs them")
    return np.concatenate(columns, axis=1).astype(np.int32)


class WindowSampler:
    """Deterministic batches of training windows: batch ``s`` depends only on (seed, s).

    A window is ``T`` consecutive steps of one history. To build ``prev_action`` /
    ``prev_reward`` for its first step it reads the step before it; a window that starts
    at step 0 starts its stream and gets the "none" action and reward 0 (DESIGN.md).
    With ``prev_obs`` the batches also carry ``obs[t-1]`` (``ModelConfig.prev_obs_token``);
    with ``episode_return`` the reward so far in each step's episode
    (``ModelConfig.episode_return_token``), read from a table of every history computed
    once, so that windows starting mid-episode get it right too. ``targets`` names the
    step field the model learns to predict (``action``, or ``intended_action`` where the
    source stored its choice before injected noise); the inputs always carry the
    executed actions.

    ``first_success_focus`` = p: each window is, with probability p, placed so that the
    last step of its history's first success (``first_success_end``) lies in its first
    half (start uniform over ``[end - T/2, end]``), so that the rest of the window shows
    what follows one success; histories without a success, and the other windows, are
    placed uniformly. With p = 0 the draws are exactly those of uniform placement.

    ``task_targets`` (histories, E) int32, optional (``task_targets()``): each batch then
    carries its windows' rows as ``Batch.task_target`` for the auxiliary task head.
    """

    def __init__(self, dataset: Dataset, window: int, batch_size: int, seed: int,
                 num_actions: int, last_steps: int = 0, prev_obs: bool = False,
                 episode_return: bool = False, targets: str = "action",
                 first_success_focus: float = 0.0, task_targets: np.ndarray | None = None):
        T, n = window, dataset.num_steps
        if n < T:
            raise ValueError(f"{dataset.path}: histories have {n} steps, too short for "
                             f"windows of {T} steps")
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
        if targets != "action" and targets not in dataset.optional_step_fields:
            raise ValueError(f"{dataset.path}: targets={targets!r}, but the dataset stores no "
                             f"{targets} (its source injected no noise; use targets='action')")
        self.targets = targets
        self.dataset, self.T, self.B, self.seed = dataset, T, batch_size, seed
        self.num_actions, self.prev_obs = num_actions, prev_obs
        self.lo = 0 if last_steps <= 0 else max(0, n - max(last_steps, T))
        self.hi = n - T  # inclusive upper bound of a window start
        self.returns = None
        if episode_return:  # (histories, steps) float32: running_episode_return per history
            done = dataset.step_table("terminated") | dataset.step_table("truncated")
            self.returns = running_episode_return(dataset.step_table("reward"),
                                                  episode_start_from_done(done))
        if not 0.0 <= first_success_focus <= 1.0:
            raise ValueError(f"first_success_focus must lie in [0, 1], got {first_success_focus!r}")
        self.focus = first_success_focus
        if task_targets is not None and len(task_targets) != dataset.num_histories:
            raise ValueError(f"{dataset.path}: task_targets has {len(task_targets)} rows for "
                             f"{dataset.num_histories} histories")
        self.task_targets = task_targets
        self.success_end = first_success_end(dataset) if self.focus > 0 else None

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        history = rng.integers(0, self.dataset.num_histories, self.B)
        start = rng.integers(self.lo, self.hi + 1, self.B)
        if self.focus > 0:  # extra draws only here, so p = 0 keeps the uniform stream
            end = self.success_end[history]
            lo = np.clip(end - self.T // 2, self.lo, self.hi)
            hi = np.clip(end, self.lo, self.hi)
            focused = rng.integers(lo, hi + 1)
            start = np.where((rng.random(self.B) < self.focus) & (end >= 0), focused, start)
        return history, start

    def batch(self, step: int) -> Batch:
        history, start = self.indices(step)
        # Read the window plus the step before it (when there is one), then select the
        # window: rows[offset : offset + T] with offset 1 iff the window starts mid-stream.
        length = min(self.T + 1, self.dataset.num_steps)
        first = np.clip(start - 1, 0, self.dataset.num_steps - length)
        rows = self.dataset.read_windows(history, first, length)
        offset = (start - first)[:, None]  # 0 or 1
        idx = offset + np.arange(self.T)[None]  # (B, T)

        def take(x):
            return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

        obs = jax.tree.map(take, rows.obs)
        rows_done = np.logical_or(rows.terminated, rows.truncated)
        action, reward, done = take(rows.action), take(rows.reward), take(rows_done)
        prev_action = np.concatenate([rows.action[:, :1], action[:, :-1]], axis=1)
        prev_reward = np.concatenate([rows.reward[:, :1], reward[:, :-1]], axis=1)
        prev_obs = None
        if self.prev_obs:  # obs[t-1]; at a stream start (window start 0) a stand-in that
            # the model never reads (prev_action is "none" there)
            prev_obs = jax.tree.map(
                lambda o, w: np.concatenate([o[:, :1], w[:, :-1]], axis=1).astype(np.int32),
                rows.obs, obs)
        episode_start = np.concatenate([rows_done[:, :1], done[:, :-1]], axis=1)
        at_stream_start = start == 0
        prev_action[at_stream_start, 0] = self.num_actions  # the "none" action token
        prev_reward[at_stream_start, 0] = 0.0
        episode_start[at_stream_start, 0] = True
        episode_return = None
        if self.returns is not None:
            episode_return = self.returns[history[:, None], start[:, None] + np.arange(self.T)]
        inputs = StepInputs(obs=jax.tree.map(lambda o: o.astype(np.int32), obs),
                            prev_action=prev_action.astype(np.int32),
                            prev_reward=prev_reward.astype(np.float32),
                            episode_start=episode_start,
                            prev_obs=prev_obs, episode_return=episode_return)
        target = action if self.targets == "action" else take(getattr(rows, self.targets))
        return Batch(inputs=inputs, target_action=target.astype(np.int32),
                     mask=np.ones(action.shape, np.float32),
                     task_target=(None if self.task_targets is None
                                  else self.task_targets[history]))


def first_success_end(dataset: Dataset, frac: float = 0.9) -> np.ndarray:
    """(histories,) int64: the last step of each history's first *success*, an episode whose
    return reaches ``frac`` times the best episode return of that history; -1 where no
    episode pays anything. (Key-to-Door: the first episode with key and door.)"""
    reward = dataset.step_table("reward").astype(np.float64)
    done = dataset.step_table("terminated") | dataset.step_table("truncated")
    # each step's episode return so far, that step's reward included
    returns = running_episode_return(reward, episode_start_from_done(done)) + reward
    at_end = np.where(done, returns, -np.inf)
    best = at_end.max(axis=1, keepdims=True)
    hit = done & (returns >= frac * best) & (best > 0)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


class Prefetcher:
    """Assemble batches ``start..stop-1`` in a thread and put them on the devices early."""

    def __init__(self, sampler: WindowSampler, start: int, stop: int, sharding, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def work():
            try:
                for step in range(start, stop):
                    if self._stop.is_set():
                        return
                    item = jax.device_put(sampler.batch(step), sharding)
                    while not self._stop.is_set():
                        try:
                            self._queue.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
            except BaseException as e:  # surface reader errors in the training loop
                self._queue.put(e)

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def next(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------------------
# Checkpoints and saved models
# ----------------------------------------------------------------------------------------
def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CKPT_DIR / f"step_{step:08d}.msgpack"


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    paths = sorted((run_dir / CKPT_DIR).glob("step_*.msgpack"))
    if not paths:
        return None
    return int(paths[-1].stem.split("_")[1]), paths[-1]


def save_checkpoint(run_dir: Path, state: TrainState, keep: int = 2) -> None:
    step = int(state.step)
    atomic_write_bytes(_checkpoint_path(run_dir, step),
                       serialization.to_bytes(jax.device_get(state)))
    for old in sorted((run_dir / CKPT_DIR).glob("step_*.msgpack"))[:-keep]:
        old.unlink()


def restore_checkpoint(path: Path, template: TrainState) -> TrainState:
    try:
        return serialization.from_bytes(template, path.read_bytes())
    except Exception as e:  # a half-written file cannot exist (atomic), but a foreign one can
        raise ValueError(f"{path}: not a checkpoint of this run ({e})") from e


class LoadedModel(NamedTuple):
    """A trained AD model: everything evaluation and analysis need."""

    config: ModelConfig
    params: PyTree
    env_name: str
    env_overrides: dict
    run_dir: Path
    dataset: str = ""  # the dataset it was distilled from (as recorded at save time)

    @property
    def env(self):
        import envs

        return envs.make(self.env_name, **self.env_overrides)

    def apply(self, inputs: StepInputs) -> jax.Array:
        return ADTransformer(self.config).apply({"params": self.params}, inputs, train=False)


def save_model(run_dir: Path, config: ModelConfig, params: PyTree, dataset: Dataset) -> Path:
    model_dir = run_dir / MODEL_DIR
    meta = {"model_config": dataclasses.asdict(config), "env": dataset.spec.env,
            "env_overrides": dict(dataset.spec.env_overrides),
            "dataset": str(dataset.path), "source": dataset.spec.source}
    atomic_write_bytes(model_dir / "params.msgpack", serialization.to_bytes(jax.device_get(params)))
    atomic_write_text(model_dir / "config.json", json.dumps(meta, indent=2))
    return model_dir


def load_model(run_dir: str | os.PathLike) -> LoadedModel:
    """Load a trained model (config + params) from a run directory or its ``model/``."""
    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_DIR if (run_dir / MODEL_DIR).is_dir() else run_dir
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: no trained model here (did distillation finish?)")
    meta = json.loads(cfg_path.read_text())
    config = ModelConfig.from_dict(meta["model_config"])
    template = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    params = serialization.from_bytes(template, (model_dir / "params.msgpack").read_bytes())
    return LoadedModel(config, params, meta["env"], meta["env_overrides"],
                       model_dir.parent if model_dir.name == MODEL_DIR else model_dir,
                       meta.get("dataset", ""))


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
            # a field added to DistillConfig after the run was saved counts as its default
            defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig)
                        if f.default is not dataclasses.MISSING}
            saved = {**{k: v for k, v in defaults.items() if k in wanted},
                     **json.loads(cfg_path.read_text())}
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
                             devices=None, task_weight: float = 0.0) -> DataParallelStep:
    """Data parallelism with ``jax.sharding``: XLA inserts the gradient all-reduce.

    On a CPU, ``jax.config.update("jax_num_cpu_devices", n)`` (or ``XLA_FLAGS=
    --xla_force_host_platform_device_count=n``) before first use splits the host into n
    devices; each runs its shard of the batch on its own thread, which uses several cores
    better than one device's intra-op threading for a model this small (see
    benchmarks/ad_throughput.py).
    """
    mesh = Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))
    replicated, data_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(make_train_step(model, optimizer, label_smoothing, task_weight),
                   in_shardings=(replicated, data_sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)
    return DataParallelStep(step, replicated, data_sharded)


def distill(config: DistillConfig, overwrite: bool = False) -> Path:
    """Train (or resume) a distillation run; returns the run directory."""
    run_dir = Path(config.out)
    dataset = load_dataset(config.dataset)
    env = dataset.env
    model_config = model_config_for(config, env)
    targets_table = None
    if config.task_loss_weight > 0:
        targets_table = task_targets(dataset, model_config.obs_num_values)
        model_config = dataclasses.replace(model_config, task_entries=targets_table.shape[1])
    _check_resume(run_dir, config, overwrite)

    devices = jax.devices()
    if config.batch_size % len(devices):
        raise ValueError(f"DistillConfig.batch_size={config.batch_size} must be divisible by "
                         f"the number of devices ({len(devices)})")
    model = ADTransformer(model_config)
    optimizer = make_optimizer(config.lr, min(config.warmup_steps, config.num_steps - 1),
                               config.num_steps, config.weight_decay, config.grad_clip)
    parallel = data_parallel_train_step(model, optimizer, config.label_smoothing, devices,
                                        config.task_loss_weight)
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
    sampler = WindowSampler(dataset, config.window_steps, config.batch_size, config.seed,
                            model_config.num_actions, config.last_steps,
                            prev_obs=model_config.prev_obs_token,
                            episode_return=model_config.episode_return_token,
                            targets=config.targets,
                            first_success_focus=config.first_success_focus,
                            task_targets=targets_table)

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
                    extra = ({"task": f"{m['task_loss']:.3f}"} if "task_loss" in m else {})
                    bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}", **extra,
                                    steps_s=f"{rate:,.0f}")
                if done % config.checkpoint_every == 0 or done == config.num_steps:
                    save_checkpoint(run_dir, state)
                bar.update(1)
    finally:
        prefetch.close()
        bar.close()
        if tb is not None:
            tb.close()
    save_model(run_dir, model_config, state.params, dataset)
    atomic_write_text(run_dir / "provenance.json", json.dumps(
        {"config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
         "devices": [str(d) for d in devices], "wall_s": time.time() - t0,
         "resumed_from": start_step, **provenance()}, indent=2))
    return run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (they will be recomputed)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
