"""A grid of SAEs per hook, trained on training-task activations, scored on held-out ones.

``run_sweep(stores, out, SweepConfig(...))`` reads ``<stores>/train`` and ``<stores>/test``
(``ad.interp.sae.store``) and, for each hook, trains every row of the grid — one family
at one width with several sparsity settings, one ``jit(vmap)`` call (``train_grid``) —
then measures each SAE's reconstruction on the held-out store (``metrics``). Each row is
saved as it finishes (``<out>/<hook>/<kind>-w<width>.msgpack``: weights, sparsity, input
scale; ``.json``: config, training curve ends, held-out metrics), atomically; a rerun
skips the rows already saved, so a killed sweep resumes.

Default grid per hook (d = d_model): TopK k ∈ {2, 4, 8, 16, 32} × widths {2, 4, 8, 16}·d
(20 SAEs), and at width 4·d the other families: ReLU λ ∈ {1, 3, 10, 30, 100}, BatchTopK
k ∈ {2, …, 32}, JumpReLU λ ∈ {0.01, …, 1} (15 more).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ad.interp.sae.metrics import reconstruction
from ad.interp.sae.models import SAEConfig, Sparsity, Splice
from ad.interp.sae.store import ActivationStore
from ad.interp.sae.train import TrainConfig, input_scale, train_grid
from ad.utils import atomic_write_bytes, atomic_write_text, provenance

TOPK_KS = (2, 4, 8, 16, 32)
RELU_L1 = (1.0, 3.0, 10.0, 30.0, 100.0)
JUMP_L0 = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclasses.dataclass(frozen=True)
class GridRow:
    """One compiled training call: a family at one width, several sparsity settings."""

    kind: str
    width_mult: int  # width = width_mult · d_in
    settings: tuple[float, ...]  # k (topk, batchtopk) or λ (relu, jumprelu)

    @property
    def name(self) -> str:
        return f"{self.kind}-w{self.width_mult}"


def default_grid() -> tuple[GridRow, ...]:
    rows = [GridRow("topk", m, TOPK_KS) for m in (2, 4, 8, 16)]
    rows += [GridRow("relu", 4, RELU_L1), GridRow("batchtopk", 4, TOPK_KS),
             GridRow("jumprelu", 4, JUMP_L0)]
    return tuple(rows)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A sweep over hooks × grid rows."""

    hooks: tuple[str, ...] | None = None
    """hooks to sweep (default: every hook in the stores)"""
    grid: tuple[GridRow, ...] = dataclasses.field(default_factory=default_grid)
    """grid rows (module docstring)"""
    train: TrainConfig = TrainConfig()
    """optimisation settings, shared by every SAE"""
    seed: int = 0
    """row r of hook h trains with fold_in(key(seed), hash-free index h·100 + r)"""


class SavedSAE(NamedTuple):
    """A saved grid row: its SAEs as one stacked ``Splice`` and their record."""

    splice: Splice  # leading axis: the row's sparsity settings
    record: dict


def sparsity_of(row: GridRow) -> Sparsity:
    vals = np.asarray(row.settings)
    if row.kind in ("topk", "batchtopk"):
        return Sparsity(jnp.zeros(len(vals), jnp.float32), jnp.asarray(vals, jnp.int32))
    return Sparsity(jnp.asarray(vals, jnp.float32), jnp.zeros(len(vals), jnp.int32))


def sae_config(row: GridRow, d_in: int) -> SAEConfig:
    k_max = int(max(row.settings)) if row.kind == "topk" else 64
    return SAEConfig(kind=row.kind, d_in=d_in, width=row.width_mult * d_in, k_max=k_max)


def save_row(path: Path, splice: Splice, record: dict) -> None:
    state = {"params": splice.params, "l1": splice.sparsity.l1, "k": splice.sparsity.k,
             "scale": splice.scale}
    atomic_write_bytes(path.with_suffix(".msgpack"),
                       flax.serialization.msgpack_serialize(jax.device_get(state)))
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=1) + "\n")


def load_row(path: str | Path) -> SavedSAE:
    """A saved grid row (``<hook>/<row>.json`` + ``.msgpack``) as a stacked ``Splice``."""
    path = Path(path)
    record = json.loads(path.with_suffix(".json").read_text())
    state = flax.serialization.msgpack_restore(path.with_suffix(".msgpack").read_bytes())
    cfg = SAEConfig(**record["sae_config"])
    g = len(record["settings"])
    params = {k: jnp.asarray(v) for k, v in state["params"].items()}
    splice = Splice(params=params, sparsity=Sparsity(jnp.asarray(state["l1"]),
                                                     jnp.asarray(state["k"])),
                    scale=jnp.asarray(state["scale"]), feature=jnp.full((g,), -1, jnp.int32),
                    value=jnp.zeros((g,), jnp.float32), config=cfg)
    return SavedSAE(splice, record)


def pick(splice: Splice, i: int) -> Splice:
    """Entry ``i`` of a stacked ``Splice``."""
    return jax.tree.map(lambda x: x[i], splice)


def hook_dir(out: Path, hook: str) -> Path:
    return Path(out) / hook


def run_sweep(stores: str | Path, out: str | Path, cfg: SweepConfig, progress: bool = True
              ) -> list[dict]:
    """Train and score every grid row of every hook (module docstring); returns the
    per-SAE records (also in ``<out>/<hook>/<row>.json``)."""
    from tqdm.auto import tqdm

    train_store = ActivationStore(Path(stores) / "train")
    test_store = ActivationStore(Path(stores) / "test")
    hooks = cfg.hooks or tuple(train_store.hooks)
    records = []
    jobs = [(h, r) for h in hooks for r in cfg.grid]
    bar = tqdm(total=len(jobs), disable=not progress, desc="sae sweep", unit="row")
    data_cache: dict = {}
    for hi, hook in enumerate(hooks):
        for ri, row in enumerate(cfg.grid):
            path = hook_dir(out, hook) / row.name
            if path.with_suffix(".json").exists() and path.with_suffix(".msgpack").exists():
                records.append(json.loads(path.with_suffix(".json").read_text()))
                bar.update(1)
                continue
            if hook not in data_cache:
                data_cache.clear()
                x = _flat(train_store.activations(hook))
                scale = input_scale(x)
                xs = jnp.asarray(x * scale)
                data_cache[hook] = (xs, scale, _flat(test_store.activations(hook)))
            xs, scale, x_test = data_cache[hook]
            d = xs.shape[-1]
            sae_cfg = sae_config(row, d)
            sparsity = sparsity_of(row)
            t0 = time.time()
            trained = train_grid(sae_cfg, cfg.train, sparsity, xs,
                                 jax.random.fold_in(jax.random.key(cfg.seed), hi * 100 + ri),
                                 x_mean=xs.mean(0))
            jax.block_until_ready(trained.params)
            seconds = time.time() - t0
            g = len(row.settings)
            splice = Splice(params=trained.params, sparsity=sparsity,
                            scale=jnp.full((g,), scale, jnp.float32),
                            feature=jnp.full((g,), -1, jnp.int32),
                            value=jnp.zeros((g,), jnp.float32), config=sae_cfg)
            rec = reconstruction(splice, x_test)
            record = {
                "hook": hook, "row": row.name, "kind": row.kind, "width": sae_cfg.width,
                "settings": list(row.settings), "sae_config": dataclasses.asdict(sae_config(row, d)),
                "train_config": dataclasses.asdict(cfg.train), "input_scale": scale,
                "train_positions": int(xs.shape[0]), "test_positions": int(x_test.shape[0]),
                "train_seconds": seconds,
                "train_final": {"mse": np.asarray(trained.mse[:, -1]).tolist(),
                                "l0": np.asarray(trained.l0[:, -1]).tolist(),
                                "dead_frac": np.asarray(trained.dead_frac[:, -1]).tolist()},
                "test": {k: np.asarray(v).tolist() for k, v in rec._asdict().items()
                         if k != "frequency"},
                "stores": str(Path(stores).resolve()), **provenance(),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            save_row(path, splice, record)
            records.append(record)
            bar.update(1)
            bar.set_postfix(hook=hook, row=row.name, s=f"{seconds:.0f}")
    bar.close()
    return records


def _flat(acts: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(acts.reshape(-1, acts.shape[-1]), np.float32)


def rows_of(out: str | Path, hook: str) -> list[Path]:
    """The saved rows of ``hook`` (paths without suffix)."""
    return sorted(p.with_suffix("") for p in hook_dir(out, hook).glob("*.json")
                  if "." not in p.stem and p.stem != "labels"
                  and p.with_suffix(".msgpack").exists())
