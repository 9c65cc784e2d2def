"""Saving and loading: training checkpoints and trained models.

A run directory (``ad.train.distill``) holds ``checkpoints/step_<n>.msgpack`` (the whole
train state, written atomically every ``checkpoint_every`` steps; the last two kept) and,
when training has finished, ``model/config.json`` (the ``ModelConfig``, the env and the
dataset it was distilled from) beside ``model/params.msgpack``.

    model = load_model("runs/darkroom/ad-seed0")   # config + params, one call
    model.config, model.params, model.env

Models saved before the house clean-up still load: fields removed since (see
``ad.config.REMOVED_FIELDS``) are accepted at their old defaults with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import serialization

from ad.config import ModelConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer, init_params
from ad.train_step import TrainState
from ad.utils import atomic_write_bytes, atomic_write_text

PyTree = Any
CKPT_DIR = "checkpoints"
MODEL_DIR = "model"


# ----------------------------------------------------------------------------------------
# Checkpoints (the train state, for resuming)
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


# ----------------------------------------------------------------------------------------
# Trained models
# ----------------------------------------------------------------------------------------
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


def save_model(run_dir: Path, config: ModelConfig, params: PyTree, *, env: str,
               env_overrides: dict, dataset: str = "", source: str = "") -> Path:
    model_dir = run_dir / MODEL_DIR
    meta = {"model_config": dataclasses.asdict(config), "env": env,
            "env_overrides": dict(env_overrides), "dataset": str(dataset), "source": source}
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
    config = ModelConfig.from_dict(meta["model_config"], where=str(cfg_path))
    template = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    params = serialization.from_bytes(template, (model_dir / "params.msgpack").read_bytes())
    return LoadedModel(config, params, meta["env"], meta["env_overrides"],
                       model_dir.parent if model_dir.name == MODEL_DIR else model_dir,
                       meta.get("dataset", ""))
