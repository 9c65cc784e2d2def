"""Saving and loading: training checkpoints and trained models, checksummed.

A run directory (``ad.train.distill``) holds ``checkpoints/step_<n>.msgpack`` (the whole
train state, written atomically every ``checkpoint_every`` steps; the last two kept), each
with a ``step_<n>.msgpack.blake2b`` sidecar written before it, and, when training has
finished, ``model/config.json`` (the ``ModelConfig``, the env and the dataset it was
distilled from) beside ``model/params.msgpack``, sealed by ``model/checksums.json``
(``ad.integrity``: written first, ``config.json`` last, so a model whose ``config.json``
exists is complete).

    model = load_model("runs/darkroom/ad-seed0")   # config + params, one call, verified
    model.config, model.params, model.env

Every load checks, and raises ``IntegrityError`` naming the file otherwise: the
checksums; that the weights have exactly the tree, shapes and dtypes the config
describes (an edited config or foreign weights never load silently); that every weight
is finite. A checkpoint that fails is skipped for the one before it, with a warning.
Models and checkpoints written before checksums existed load with a one-line warning.

With ``DistillConfig(snapshots=True)`` the run also keeps the model at step 0, every power
of two of the step count and the last step, each as ``snapshots/step_<n>/model/`` (loaded
with ``load_model(snapshot_dir(run_dir, n))``; ``snapshot_steps(run_dir)`` lists them):
the study's over-training experiment reads them.

Models saved before the house clean-up still load: fields removed since (see
``ad.config.REMOVED_FIELDS``) are accepted at their old defaults with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import serialization, traverse_util

from ad.config import ModelConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer, init_params
from ad.train_step import TrainState
from ad.integrity import (IntegrityError, file_digest, json_digest, remove_stale_temp_files,
                          sidecar, verify_sealed, verify_sidecar, write_sealed,
                          write_with_sidecar)

PyTree = Any
CKPT_DIR = "checkpoints"
MODEL_DIR = "model"
SNAPSHOT_DIR = "snapshots"


def checkpoint_steps(num_steps: int) -> list[int]:
    """0, every power of two below ``num_steps``, and ``num_steps`` (AlgZoo's schedule:
    the zoo's checkpoints and a run's snapshots)."""
    steps, p = [0], 1
    while p < num_steps:
        steps.append(p)
        p *= 2
    return steps + [num_steps]


def snapshot_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / f"step_{step:08d}"


def snapshot_steps(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the finished snapshots of a run (those whose ``config.json`` exists)."""
    root = Path(run_dir) / SNAPSHOT_DIR
    return sorted(int(d.name.split("_")[1]) for d in root.glob("step_*")
                  if (d / MODEL_DIR / "config.json").exists())


# ----------------------------------------------------------------------------------------
# Checkpoints (the train state, for resuming)
# ----------------------------------------------------------------------------------------
def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CKPT_DIR / f"step_{step:08d}.msgpack"


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    paths = _checkpoints(run_dir)
    return (_step_of(paths[-1]), paths[-1]) if paths else None


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / CKPT_DIR).glob("step_*.msgpack"))


def _step_of(path: Path) -> int:
    return int(path.stem.split("_")[1])


def save_checkpoint(run_dir: Path, state: TrainState, keep: int = 2) -> None:
    """Write the train state (sidecar checksum first), keep the last ``keep`` checkpoints.

    Refuses a state with a non-finite value: a checkpoint is always one to resume from.
    """
    state = jax.device_get(state)
    path = _checkpoint_path(run_dir, int(state.step))
    _check_finite(serialization.to_state_dict(state), path)
    write_with_sidecar(path, serialization.to_bytes(state), fault="checkpoint_write")
    for old in _checkpoints(run_dir)[:-keep]:
        old.unlink()
        sidecar(old).unlink(missing_ok=True)
    clean_checkpoint_dir(run_dir)


def clean_checkpoint_dir(run_dir: Path) -> None:
    """Remove what a killed writer left: temp files and sidecars without a checkpoint."""
    ckpt_dir = run_dir / CKPT_DIR
    remove_stale_temp_files(ckpt_dir)
    for side in ckpt_dir.glob("step_*.msgpack.blake2b"):
        if not side.with_suffix("").exists():
            side.unlink(missing_ok=True)


def restore_checkpoint(path: Path, template: TrainState) -> TrainState:
    """The train state in ``path``, checked against its sidecar and ``template``'s layout."""
    verify_sidecar(path, "checkpoint")
    return _restore_checked(template, path, "the train state of this run")


def restore_latest_checkpoint(run_dir: Path, template: TrainState) -> TrainState | None:
    """The newest checkpoint that verifies; a corrupt one is reported and skipped for the
    one before it (so a resume stays exact); None if there is none; ``IntegrityError`` if
    none verifies."""
    clean_checkpoint_dir(run_dir)
    errors = []
    for path in reversed(_checkpoints(run_dir)):
        try:
            return restore_checkpoint(path, template)
        except IntegrityError as e:
            errors.append(str(e))
            warnings.warn(f"skipping a corrupt checkpoint: {e}", stacklevel=2)
    if errors:
        raise IntegrityError(f"{run_dir / CKPT_DIR}: no checkpoint verifies ({'; '.join(errors)}); "
                             f"delete the run directory or choose another one (experiments.run --runs, "
                             f"DistillConfig.out) to start over")
    return None


def _restore_checked(template: PyTree, path: Path, what: str) -> PyTree:
    """Deserialize ``path`` and check it has exactly ``template``'s tree, shapes and dtypes
    and finite values: flax alone ignores extra keys and never checks shapes."""
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(f"{path}: file is missing") from None
    except Exception as e:  # msgpack raises several types for truncated or foreign bytes
        raise IntegrityError(f"{path}: not a readable msgpack file ({type(e).__name__}: {e}); "
                             f"truncated or corrupt") from None
    if not isinstance(raw, dict):
        raise IntegrityError(f"{path}: holds a {type(raw).__name__}, not {what}")
    want = traverse_util.flatten_dict(serialization.to_state_dict(template), sep="/")
    got = traverse_util.flatten_dict(raw, sep="/")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise IntegrityError(f"{path}: does not hold {what}: missing {missing[:4]}, "
                             f"unexpected {extra[:4]} ({len(missing)} / {len(extra)} entries)")
    for key, leaf in want.items():
        value = got[key]
        if np.shape(value) != np.shape(leaf) or np.asarray(value).dtype != np.asarray(leaf).dtype:
            raise IntegrityError(
                f"{path}: {key} has shape {np.shape(value)} {np.asarray(value).dtype}, {what} "
                f"needs {np.shape(leaf)} {np.asarray(leaf).dtype}")
    _check_finite(got, path)
    return serialization.from_state_dict(template, raw)


def _check_finite(tree: dict, path: Path) -> None:
    for key, value in traverse_util.flatten_dict(tree, sep="/").items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise IntegrityError(f"{path}: {key} holds non-finite values "
                                 f"({int((~np.isfinite(value)).sum())} of {value.size})")


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
               env_overrides: dict, dataset: str = "", source: str = "",
               dataset_id: str = "") -> Path:
    """Write ``model/`` sealed by ``checksums.json`` (``config.json`` last)."""
    model_dir = run_dir / MODEL_DIR
    params = jax.device_get(params)
    _check_finite(serialization.to_state_dict(params), model_dir / "params.msgpack")
    meta = {"model_config": dataclasses.asdict(config), "env": env,
            "env_overrides": dict(env_overrides), "dataset": str(dataset), "source": source,
            "dataset_id": dataset_id}
    write_sealed(model_dir, {"params.msgpack": serialization.to_bytes(params),
                             "config.json": json.dumps(meta, indent=2).encode()},
                 fault="model_write")
    return model_dir


def load_model(run_dir: str | os.PathLike) -> LoadedModel:
    """Load a trained model (config + params) from a run directory or its ``model/``,
    verified (module docstring); ``IntegrityError`` names the file that fails."""
    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_DIR if (run_dir / MODEL_DIR).is_dir() else run_dir
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: no trained model here (did distillation finish?)")
    verify_sealed(model_dir, ["config.json", "params.msgpack"], "trained model")
    try:
        meta = json.loads(cfg_path.read_text())
        model_config, env_name, env_overrides = meta["model_config"], meta["env"], meta["env_overrides"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{cfg_path}: not valid JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise IntegrityError(f"{cfg_path}: malformed model config (missing {e})") from None
    try:
        config = ModelConfig.from_dict(model_config, where=str(cfg_path))
    except (TypeError, ValueError) as e:
        raise IntegrityError(str(e) if str(cfg_path) in str(e) else f"{cfg_path}: {e}") from None
    template = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    params = _restore_checked(template, model_dir / "params.msgpack",
                              f"the weights of the model_config in {cfg_path}")
    return LoadedModel(config, params, env_name, env_overrides,
                       model_dir.parent if model_dir.name == MODEL_DIR else model_dir,
                       meta.get("dataset", ""))


def model_files_digest(run_dir: str | os.PathLike) -> str:
    """One digest of a finished model's files (its identity, e.g. for caching results)."""
    model_dir = Path(run_dir) / MODEL_DIR
    return json_digest({n: file_digest(model_dir / n) for n in ("config.json", "params.msgpack")})
