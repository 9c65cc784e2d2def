"""Multi-episode learning-history datasets on disk: memory-mapped, atomic, resumable.

A dataset holds ``num_histories`` learning histories (``source_agents.LearningHistory``),
each ``num_steps`` consecutive env steps of one source agent on one task, plus each
history's task params and the source's own per-episode returns. Readers never load it
whole: every array is a ``.npy`` file opened with ``np.load(mmap_mode="r")``.

    with DatasetWriter("data/darkroom-ppo", spec) as writer:
        for start, stop in writer.pending(shard_size=256):
            writer.write_shard(start, histories, params)   # leaves (stop - start, ...)
        dataset = writer.finalize()
    dataset = load_dataset("data/darkroom-ppo")            # validates, cheap
    batch = dataset.read_windows(history_idx, start, length=240)   # leaves (B, 240, ...)

On-disk format (``SCHEMA_VERSION`` = 1)
---------------------------------------
::

    <dataset>/
      spec.json                        what the writer was asked for (DatasetSpec); first file
      meta.json                        the dataset's metadata; written LAST (see atomicity)
      .lock                            advisory lock held by the process that is writing
      shard-00000000-00000256/         histories [0, 256), one directory per shard
        obs.npy                        (n, T, *shape) obs leaf; pytree obs use one file per
        obs.<path>.npy                   leaf, named by its path ("obs.image", "obs.0", ...)
        action.npy                     (n, T) int32
        reward.npy                     (n, T) float32
        terminated.npy, truncated.npy  (n, T) bool
        intended_action.npy            (n, T) int32, only from sources that inject noise:
                                         their choice before it (source_agents.history)
        internals.<name>.npy           (n, T, ...) optional: the source's own per-step
                                         quantities (e.g. R-max's visit counts and values;
                                         ``collect --internals``), for probes and SAE
                                         labels; never read into training windows
        params.<path>.npy              (n, *shape) task params, one row per history
        episode_returns.npy            (n, E) float32: the source's return in each completed
                                         episode, NaN-padded; E = most episodes in the shard
        num_episodes.npy               (n,) int32: completed episodes per history
        shard.json                     shard manifest (range, per-file shape/dtype/bytes/
                                         blake2b); written last inside the shard

Here ``n`` is the shard's history count, ``T`` = ``num_steps``, the same for every
history of a dataset. Step ``t`` follows ``source_agents.history``: the agent saw
``obs[t]``, took ``action[t]`` and the step returned ``reward[t]``, ``terminated[t]``,
``truncated[t]``. ``episode_returns`` is the *source's* learning curve over all the
episodes it lived (when the writer subsampled episodes, ``spec.extra`` says so and the
stored steps hold only the kept episodes).

``meta.json`` keys: ``format`` ("icrl-ad-dataset"), ``schema_version``, ``spec`` (env
name, env config and overrides, split, source name and full config, num_histories,
seed, ``extra``: anything else the writer passed, e.g. ``subsample_every``,
``history_note``), ``num_histories``, ``num_steps``, ``leaves`` (per file stem: ``kind``
"step" (n, T, ...), "history" (n, ...) or "episodes" (n, E); trailing ``shape``;
``dtype``), ``shards`` (``dir``, ``start``, ``stop``, ``max_episodes``, ``files`` with
``shape``, ``dtype``, ``bytes``, ``blake2b``), ``content_blake2b`` (``ad.integrity.
json_digest`` of the keys above: any edit of the spec, layout or shard table is caught),
``created`` (UTC ISO time), ``versions`` (python and package versions) and ``git_commit``
(null outside a git checkout). ``Dataset.content_id`` is that digest: it names a dataset
by its content, wherever it lives (distillation runs record it).

Atomicity and resume
--------------------
Each shard is written into a hidden temp directory, every file fsynced, its
``shard.json`` written last, and only then renamed to ``shard-*``: a ``shard-*``
directory is complete by construction. ``meta.json`` is written (temp file, fsync,
``os.replace``) only after every history is covered, so a crash or kill at any moment
leaves either a valid dataset or a directory that ``load_dataset`` reports as
incomplete. Re-opening a ``DatasetWriter`` on the same path with the same spec
continues: finished shards are kept, stale temp directories are removed, and
``pending()`` lists the missing history ranges. A different spec raises
``DatasetError`` naming the differing field, unless ``overwrite=True`` (which deletes
the old dataset first; a non-empty directory that is not a dataset is never deleted).

Validation
----------
``load_dataset`` checks the schema version, ``content_blake2b``, that ``spec.json`` agrees
with ``meta.json``, that the required leaves exist, that each shard directory's name
matches its range, that every file exists, and each file's ``.npy`` header (shape,
dtype) and size against ``meta.json`` (catches truncation); this reads headers only.
``verify=True`` / ``Dataset.verify()`` also recomputes every blake2b checksum (cached
per process, ``ad.integrity.file_digest``); ``check_values=True`` /
``Dataset.check_values()`` checks that actions, observations and task-independent
fields are in range and rewards finite. Distillation opens its dataset with both;
rerunning ``experiments.collect`` over a finished dataset verifies it. Every problem
raises ``DatasetError`` (an ``ad.integrity.IntegrityError``, a ``ValueError``) naming the
file and what is wrong. Datasets written before ``content_blake2b`` existed load with a
one-line warning.

Readers never lock: any number of processes may read a finished dataset; only a
``DatasetWriter`` (which a finished dataset never needs) takes ``.lock``.

Memory maps keep one file descriptor each; a dataset opens at most
``files_per_shard × shards`` of them, lazily, so prefer large shards for huge datasets.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from ad.integrity import IntegrityError, check_file, json_digest, warn_legacy
from ad.utils import atomic_write_text, fault_point, fsync_dir, provenance
from source_agents.history import LearningHistory, episode_returns

PyTree = Any

FORMAT = "icrl-ad-dataset"
SCHEMA_VERSION = 1
META_FILE = "meta.json"
SPEC_FILE = "spec.json"
SHARD_MANIFEST = "shard.json"
LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"
_SHARD_RE = re.compile(r"^shard-(\d{8})-(\d{8})$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_STEP_FIELDS = ("action", "reward", "terminated", "truncated")
# step fields a source may leave out (None in its LearningHistory); stored when present
_OPTIONAL_STEP_FIELDS = ("intended_action",)
INTERNALS = "internals"  # file-stem prefix of a source's optional per-step internal quantities
# stored dtype and the dtype kinds a source may hand over for it
_STEP_DTYPES = {
    "action": (np.int32, "iu"),
    "reward": (np.float32, "fiu"),
    "terminated": (np.bool_, "biu"),
    "truncated": (np.bool_, "biu"),
    "intended_action": (np.int32, "iu"),
}
# the keys of meta.json that define a dataset's content (``content_blake2b`` covers them)
_CONTENT_KEYS = ("format", "schema_version", "spec", "num_histories", "num_steps", "leaves",
                 "shards")
_REQUIRED_LEAVES = {"action": "step", "reward": "step", "terminated": "step",
                    "truncated": "step", "episode_returns": "episodes",
                    "num_episodes": "history"}


class DatasetError(IntegrityError):
    """A dataset on disk is missing, incomplete, corrupt or does not match a request."""


# ---------------------------------------------------------------------------------------
# The writer's identity: what a dataset was asked to contain
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything that defines a dataset's content; re-opening a path must match it."""

    env: str  # registered environment name (envs.make)
    env_overrides: Mapping[str, Any]  # overrides passed to envs.make (rebuilds the env)
    env_config: Mapping[str, Any]  # every static field of the env after overrides
    split: str  # task split the histories were collected on: "train" or "test"
    source: str  # source agent name (registered, or an importable module path)
    source_config: Mapping[str, Any]  # the source's full Config as a dict
    num_histories: int  # histories in the finished dataset
    seed: int  # base seed; history i's randomness derives from (seed, i)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # e.g. history_note

    def __post_init__(self):
        if not isinstance(self.num_histories, int) or self.num_histories < 1:
            raise ValueError(f"DatasetSpec.num_histories must be an int >= 1, got {self.num_histories!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"DatasetSpec.split must be 'train' or 'test', got {self.split!r}")

    def to_json(self) -> dict:
        """The spec as plain JSON types (tuples become lists), as stored on disk."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DatasetSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _jsonable(obj: Any) -> Any:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        return repr(o)

    return json.loads(json.dumps(obj, default=default))


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """Dotted path of the first field where two JSON values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                return where
            diff = _first_difference(old[key], new[key], where)
            if diff:
                return diff
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            diff = _first_difference(a, b, f"{prefix}[{i}]")
            if diff:
                return diff
        return None
    same = old == new and type(old) is type(new)
    return None if same else (prefix or "<root>")


def _lookup(data: Any, dotted: str) -> Any:
    for part in re.findall(r"[^.\[\]]+", dotted):
        if isinstance(data, dict):
            data = data.get(part, "<missing>")
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return "<missing>"
    return data


# spec.extra keys added after datasets were first written: a finished dataset whose spec
# predates one is still the dataset asked for (its data are what they are)
_LATER_EXTRA_KEYS = ("chunk_size",)


def check_same_spec(path: Path, old: Mapping[str, Any], new: Mapping[str, Any], *,
                    finished: bool) -> None:
    """Raise ``DatasetError`` naming the first differing field unless ``old`` (on disk) and
    ``new`` (requested) describe the same dataset."""
    old_extra = old.get("extra") if isinstance(old.get("extra"), dict) else {}
    legacy = [k for k in _LATER_EXTRA_KEYS if k not in old_extra and k in new.get("extra", {})]
    if legacy and not finished:
        raise DatasetError(
            f"{path}: an unfinished dataset started by an older version, which computed "
            f"histories in batches of the shard size; finishing it now would mix two batchings "
            f"(different floating point). Recollect it: experiments.collect --overwrite "
            f"(overwrite=True), or delete {path}")
    if legacy:
        new = dict(new, extra={k: v for k, v in new["extra"].items() if k not in legacy})
    diff = _first_difference(old, new)
    if diff:
        raise DatasetError(
            f"{path}: exists with a different {diff!r} "
            f"(on disk: {_lookup(old, diff)!r}, requested: {_lookup(new, diff)!r}); "
            "choose another path (experiments.run: another --data), or replace it with "
            "experiments.collect --overwrite (overwrite=True)")


def open_finished(path: str | os.PathLike, spec: DatasetSpec) -> "Dataset":
    """A finished dataset opened read-only (no lock): checked against ``spec``, verified
    (checksums) and value-checked. ``experiments.collect`` uses it on a rerun."""
    dataset = load_dataset(path)
    check_same_spec(dataset.path, dataset.metadata["spec"], spec.to_json(), finished=True)
    dataset.verify()
    dataset.check_values()
    return dataset


# ---------------------------------------------------------------------------------------
# Pytree leaves <-> file names
# ---------------------------------------------------------------------------------------
def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_names(prefix: str, tree: PyTree, is_leaf=None) -> tuple[list[str], list[Any], Any]:
    """File stems, leaves and treedef of a pytree: ``prefix`` plus ``.``-joined key path."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    names, leaves = [], []
    for path, leaf in with_path:
        name = ".".join([prefix] + [_key_name(k) for k in path])
        if not _SAFE_NAME.match(name):
            raise ValueError(f"pytree leaf path {name!r} cannot be a file name")
        names.append(name)
        leaves.append(leaf)
    if len(set(names)) != len(names):
        raise ValueError(f"pytree leaf paths are not unique: {names}")
    return names, leaves, treedef


# ---------------------------------------------------------------------------------------
# Low-level file helpers
# ---------------------------------------------------------------------------------------
class _HashingFile:
    """File wrapper that feeds every written byte to blake2b (no re-read for checksums)."""

    def __init__(self, f):
        self._f = f
        self.hash = hashlib.blake2b()
        self.bytes = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.bytes += len(data)
        return self._f.write(data)


def _write_npy(path: Path, array: np.ndarray) -> dict:
    """Write one array, fsync it, and return its manifest entry."""
    array = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        hf = _HashingFile(f)
        np.lib.format.write_array(hf, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "bytes": hf.bytes,
        "blake2b": hf.hash.hexdigest(),
    }


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) read from a ``.npy`` header only."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (ValueError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: not a readable .npy file ({e})") from None
    if fortran:
        raise DatasetError(f"{path}: Fortran-ordered array; expected C order")
    return tuple(shape), dtype, offset


def content_digest(meta: Mapping[str, Any]) -> str:
    """The digest of a dataset's content keys in ``meta.json`` (its ``content_id``)."""
    return json_digest({k: meta.get(k) for k in _CONTENT_KEYS})


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def returns_table(reward: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-history completed-episode returns, NaN-padded: ``((n, E) float32, (n,) int32)``.

    ``E`` is the largest number of completed episodes among the ``n`` histories (at
    least 1, so the array is never empty).
    """
    reward, done = np.asarray(reward), np.asarray(done, bool)
    counts = done.sum(axis=1).astype(np.int32)
    width = max(int(counts.max(initial=0)), 1)
    table = np.stack([episode_returns(r, d, width) for r, d in zip(reward, done)])
    return table.astype(np.float32), counts


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------
def _shard_dir_name(start: int, stop: int) -> str:
    return f"shard-{start:08d}-{stop:08d}"


class DatasetWriter:
    """Writes a dataset shard by shard; re-opening the same path with the same spec resumes.

    Use as a context manager (the lock is released on exit). ``pending(shard_size)``
    lists the history ranges still to write, ``write_shard`` writes one range
    atomically, ``finalize`` writes ``meta.json`` once every history is covered.
    """

    def __init__(self, path: str | os.PathLike, spec: DatasetSpec, *, overwrite: bool = False):
        self._lock_fd: int | None = None
        self.path = Path(path)
        self.spec = spec
        self._spec_json = spec.to_json()
        if self.path.exists() and not self.path.is_dir():
            raise DatasetError(f"{self.path}: exists and is not a directory")
        if overwrite and self.path.exists():
            self._remove_existing()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._check_identity()
            for stale in self.path.glob(f"{_TMP_PREFIX}*"):  # left by a crash mid-write
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            # completed shards: start -> manifest
            self._shards: dict[int, dict] = {}
            self._layout: dict | None = None
            for shard_dir in sorted(self.path.glob("shard-*")):
                self._adopt_existing(shard_dir)
        except BaseException:
            self.close()
            raise

    # ---- set-up ------------------------------------------------------------------
    def _is_dataset_dir(self) -> bool:
        return (self.path / SPEC_FILE).exists() or (self.path / META_FILE).exists()

    def _remove_existing(self) -> None:
        if any(self.path.iterdir()) and not self._is_dataset_dir():
            raise DatasetError(
                f"{self.path}: refusing to overwrite a non-empty directory that is not a "
                f"dataset (no {SPEC_FILE} or {META_FILE})"
            )
        self._lock()  # never delete a dataset another process is writing
        shutil.rmtree(self.path)
        self.close()

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatasetError(f"{self.path}: another writer holds {LOCK_FILE}") from None
        self._lock_fd = fd

    def _check_identity(self) -> None:
        spec_path, meta_path = self.path / SPEC_FILE, self.path / META_FILE
        if spec_path.exists() or meta_path.exists():
            old = _read_json(spec_path) if spec_path.exists() else _read_json(meta_path).get("spec", {})
            check_same_spec(self.path, old, self._spec_json, finished=meta_path.exists())
            return
        else:
            others = [
                p.name for p in self.path.iterdir() if p.name != LOCK_FILE and not p.name.startswith(_TMP_PREFIX)
            ]
            if others:
                raise DatasetError(
                    f"{self.path}: directory is not empty and is not a dataset "
                    f"(found {sorted(others)[:5]}); choose another path"
                )
            _atomic_write_json(spec_path, self._spec_json)

    def _adopt_existing(self, shard_dir: Path) -> None:
        """Take over a finished shard of an interrupted run, verified (checksums)."""
        match = _SHARD_RE.match(shard_dir.name)
        if not match:
            raise DatasetError(f"{shard_dir}: unexpected shard directory name")
        manifest = _read_json(shard_dir / SHARD_MANIFEST)
        start, stop = int(match.group(1)), int(match.group(2))
        if (manifest.get("start"), manifest.get("stop")) != (start, stop):
            raise DatasetError(f"{shard_dir / SHARD_MANIFEST}: range does not match the directory name")
        self._claim(start, stop, shard_dir)
        self._check_layout(manifest["layout"], shard_dir)
        for filename, record in manifest["files"].items():
            try:
                check_file(shard_dir / filename, record["bytes"], record["blake2b"])
            except IntegrityError as e:
                raise DatasetError(f"{e}; delete {shard_dir} and rerun to recollect it") from None
        self._shards[start] = manifest

    # ---- bookkeeping ---------------------------------------------------------------
    @property
    def completed(self) -> list[tuple[int, int]]:
        """History ranges already on disk, sorted."""
        return sorted((m["start"], m["stop"]) for m in self._shards.values())

    @property
    def num_completed(self) -> int:
        return sum(stop - start for start, stop in self.completed)

    @property
    def is_complete(self) -> bool:
        return self.num_completed == self.spec.num_histories

    def pending(self, shard_size: int) -> list[tuple[int, int]]:
        """Missing history ranges, each at most ``shard_size`` long, in order."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        out, cursor = [], 0
        for start, stop in self.completed + [(self.spec.num_histories, self.spec.num_histories)]:
            for lo in range(cursor, start, shard_size):
                out.append((lo, min(lo + shard_size, start)))
            cursor = stop
        return out

    def _claim(self, start: int, stop: int, where: Any) -> None:
        n = self.spec.num_histories
        if not (0 <= start < stop <= n):
            raise DatasetError(f"{where}: history range [{start}, {stop}) outside [0, {n})")
        for s, e in self.completed:
            if start < e and s < stop:
                raise DatasetError(f"{where}: histories [{start}, {stop}) overlap the written shard [{s}, {e})")

    def _check_layout(self, layout: dict, where: Any) -> None:
        if self._layout is None:
            self._layout = layout
            return
        if layout["num_steps"] != self._layout["num_steps"]:
            raise DatasetError(
                f"{where}: histories have {layout['num_steps']} steps but earlier shards have "
                f"{self._layout['num_steps']}"
            )
        diff = _first_difference(self._layout["leaves"], layout["leaves"])
        if diff:
            raise DatasetError(
                f"{where}: leaf layout differs from earlier shards at {diff!r} "
                f"(earlier {_lookup(self._layout['leaves'], diff)!r}, "
                f"now {_lookup(layout['leaves'], diff)!r})"
            )

    # ---- writing -------------------------------------------------------------------
    def write_shard(
        self,
        start: int,
        history: LearningHistory,
        params: PyTree,
        episode_returns: np.ndarray | None = None,
        internals: Mapping[str, np.ndarray] | None = None,
    ) -> Path:
        """Atomically write histories ``[start, start + n)``; returns the shard directory.

        ``history`` leaves are ``(n, T, ...)`` (a vmapped source's output), ``params``
        leaves ``(n, ...)``. ``episode_returns`` is the source's ``(n, E)`` NaN-padded
        per-episode returns; by default it is computed from ``history`` (pass it when
        ``history`` was subsampled, so the source's full learning curve is kept).
        ``internals`` maps names to the source's ``(n, T, ...)`` numeric per-step
        quantities (stored as ``internals.<name>``; every shard must store the same names).
        """
        history = jax.device_get(history)
        params = jax.device_get(params)
        files: dict[str, np.ndarray] = {}
        kinds: dict[str, str] = {}
        obs_names, obs_leaves, _ = leaf_names("obs", history.obs)
        if not obs_leaves:
            raise ValueError("history.obs has no array leaves")
        if np.ndim(history.action) != 2:
            raise ValueError(f"history.action must be (n, T), got shape {np.shape(history.action)}")
        n, num_steps = np.shape(history.action)
        for name, leaf in zip(obs_names, obs_leaves):
            files[name], kinds[name] = np.asarray(leaf), "step"
        for field in _STEP_FIELDS + _OPTIONAL_STEP_FIELDS:
            if getattr(history, field) is None:
                continue
            value = np.asarray(getattr(history, field))
            target, allowed_kinds = _STEP_DTYPES[field]
            if value.dtype.kind not in allowed_kinds:
                raise ValueError(f"history.{field}: dtype {value.dtype} cannot be stored as {np.dtype(target)}")
            files[field], kinds[field] = value.astype(target, copy=False), "step"
        for key, value in (internals or {}).items():
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise ValueError(f"internals[{key!r}]: dtype {value.dtype} is not numeric")
            files[f"{INTERNALS}.{key}"], kinds[f"{INTERNALS}.{key}"] = value, "step"
        for name, arr in files.items():
            if arr.shape[:2] != (n, num_steps):
                raise ValueError(f"history leaf {name!r}: shape {arr.shape} does not start with (n, T) = {(n, num_steps)}")
        param_names, param_leaves, _ = leaf_names("params", params)
        for name, leaf in zip(param_names, param_leaves):
            arr = np.asarray(leaf)
            if arr.shape[:1] != (n,):
                raise ValueError(f"task params leaf {name!r}: shape {arr.shape} does not start with n = {n}")
            files[name], kinds[name] = arr, "history"
        if episode_returns is None:
            table, counts = returns_table(files["reward"], files["terminated"] | files["truncated"])
        else:
            table = np.asarray(episode_returns, np.float32)
            if table.ndim != 2 or table.shape[0] != n:
                raise ValueError(f"episode_returns must be (n={n}, E), got shape {table.shape}")
            valid = ~np.isnan(table)
            counts = valid.sum(axis=1).astype(np.int32)
            if not np.array_equal(valid, np.arange(table.shape[1]) < counts[:, None]):
                raise ValueError("episode_returns: NaN padding must only trail each row")
        files["episode_returns"], kinds["episode_returns"] = table, "episodes"
        files["num_episodes"], kinds["num_episodes"] = counts, "history"

        stop = start + n
        self._claim(start, stop, f"write_shard(start={start}, n={n})")
        layout = {
            "num_steps": int(num_steps),
            "leaves": {
                name: {
                    "kind": kinds[name],
                    # trailing shape per step / per history; the episodes width varies by shard
                    "shape": [] if kinds[name] == "episodes" else list(arr.shape[2 if kinds[name] == "step" else 1 :]),
                    "dtype": arr.dtype.str,
                }
                for name, arr in files.items()
            },
        }
        self._check_layout(layout, f"write_shard(start={start})")

        final = self.path / _shard_dir_name(start, stop)
        tmp = self.path / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        entries = {f"{name}.npy": _write_npy(tmp / f"{name}.npy", arr) for name, arr in files.items()}
        manifest = {
            "start": start,
            "stop": stop,
            "max_episodes": int(table.shape[1]),
            "layout": layout,
            "files": entries,
        }
        _atomic_write_json(tmp / SHARD_MANIFEST, manifest)
        fsync_dir(tmp)
        fault_point("shard_write")
        os.rename(tmp, final)  # the shard becomes visible complete, or not at all
        fsync_dir(self.path)
        self._shards[start] = manifest
        return final

    def finalize(self) -> "Dataset":
        """Write ``meta.json`` (last) once every history is on disk; return the dataset."""
        if (self.path / META_FILE).exists():
            return load_dataset(self.path)
        if not self.is_complete:
            missing = self.pending(self.spec.num_histories)
            raise DatasetError(f"{self.path}: cannot finalize, histories {missing} are not written yet")
        shards = []
        for start in sorted(self._shards):
            m = self._shards[start]
            shards.append(
                {
                    "dir": _shard_dir_name(m["start"], m["stop"]),
                    "start": m["start"],
                    "stop": m["stop"],
                    "max_episodes": m["max_episodes"],
                    "files": m["files"],
                }
            )
        meta = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "spec": self._spec_json,
            "num_histories": self.spec.num_histories,
            "num_steps": self._layout["num_steps"],
            "leaves": self._layout["leaves"],
            "shards": shards,
        }
        meta["content_blake2b"] = content_digest(meta)
        meta.update(provenance())
        _atomic_write_json(self.path / META_FILE, meta)
        return load_dataset(self.path)

    # ---- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


# ---------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------
def load_dataset(path: str | os.PathLike, verify: bool = False,
                 check_values: bool = False) -> "Dataset":
    """Open and validate a dataset (metadata, headers and sizes; checksums too with
    ``verify``, value ranges with ``check_values``: see the module docstring)."""
    dataset = Dataset(path)
    if verify:
        dataset.verify()
    if check_values:
        dataset.check_values()
    return dataset


class Dataset:
    """A finished dataset, memory-mapped. Use ``load_dataset`` to open one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such dataset directory")
        if not meta_path.exists():
            shards = len(list(self.path.glob("shard-*")))
            raise DatasetError(
                f"{self.path}: incomplete dataset ({META_FILE} is missing; {shards} finished "
                "shard(s) on disk); rerun the same collection command to resume it"
            )
        meta = _read_json(meta_path)
        if meta.get("format") != FORMAT:
            raise DatasetError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(
                f"{meta_path}: schema_version {meta.get('schema_version')!r} is not supported "
                f"(this code reads version {SCHEMA_VERSION})"
            )
        self.metadata: dict = meta
        if "content_blake2b" in meta:
            if meta["content_blake2b"] != content_digest(meta):
                raise DatasetError(
                    f"{meta_path}: content checksum mismatch: the spec, leaves or shard table "
                    f"were edited or are corrupt (content_blake2b does not match)")
        else:
            warn_legacy(meta_path, "dataset metadata (spec and shard table)")
        spec_path = self.path / SPEC_FILE
        if spec_path.exists() and _read_json(spec_path) != meta.get("spec"):
            diff = _first_difference(_read_json(spec_path), meta.get("spec"))
            raise DatasetError(f"{meta_path}: spec.{diff} differs from {spec_path} "
                               f"({_lookup(meta.get('spec'), diff)!r} vs "
                               f"{_lookup(_read_json(spec_path), diff)!r}): edited metadata")
        try:
            self.spec = DatasetSpec.from_json(meta["spec"])
            self.num_histories: int = int(meta["num_histories"])
            self.num_steps: int = int(meta["num_steps"])
            self._leaves: dict = meta["leaves"]
            self._shards: list[dict] = sorted(meta["shards"], key=lambda s: s["start"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{meta_path}: malformed metadata ({type(e).__name__}: {e})") from None
        self._starts = np.array([s["start"] for s in self._shards], np.int64)
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._window_views: dict[tuple[int, str, int], np.ndarray] = {}  # read_windows cache
        self._structures: dict[str, Any] = {}
        self._validate()

    # ---- validation ------------------------------------------------------------------
    def _file_path(self, shard: dict, filename: str) -> Path:
        return self.path / shard["dir"] / filename

    @property
    def content_id(self) -> str:
        """The dataset's identity by content (spec, layout, every file's checksum)."""
        return content_digest(self.metadata)

    def _validate(self) -> None:
        meta_path = self.path / META_FILE
        for name, kind in _REQUIRED_LEAVES.items():
            if self._leaves.get(name, {}).get("kind") != kind:
                raise DatasetError(f"{meta_path}: leaf {name!r} is missing or not of kind "
                                   f"{kind!r}; every dataset stores it")
        if not self.names("obs") or not self.names("params"):
            raise DatasetError(f"{meta_path}: no obs or no params leaves")
        cursor = 0
        expected_files = {f"{name}.npy" for name in self._leaves}
        for shard in self._shards:
            if shard["start"] != cursor or shard["stop"] <= shard["start"]:
                raise DatasetError(f"{meta_path}: shard {shard['dir']} covers [{shard['start']}, {shard['stop']}), expected to start at {cursor}")
            cursor = shard["stop"]
            if shard["dir"] != _shard_dir_name(shard["start"], shard["stop"]):
                raise DatasetError(f"{meta_path}: shard entry [{shard['start']}, {shard['stop']}) "
                                   f"names directory {shard['dir']!r}, expected "
                                   f"{_shard_dir_name(shard['start'], shard['stop'])!r}")
            if set(shard["files"]) != expected_files:
                raise DatasetError(
                    f"{meta_path}: shard {shard['dir']} lists files {sorted(shard['files'])}, "
                    f"expected {sorted(expected_files)}"
                )
            n = shard["stop"] - shard["start"]
            for name, leaf in self._leaves.items():
                filename = f"{name}.npy"
                file_path = self._file_path(shard, filename)
                record = shard["files"][filename]
                lead = {"step": [n, self.num_steps], "history": [n], "episodes": [n, shard["max_episodes"]]}[leaf["kind"]]
                want_shape, want_dtype = tuple(lead + leaf["shape"]), np.dtype(leaf["dtype"])
                if tuple(record["shape"]) != want_shape or np.dtype(record["dtype"]) != want_dtype:
                    raise DatasetError(f"{meta_path}: entry for {file_path} is inconsistent with the dataset layout")
                shape, dtype, offset = _npy_header(file_path)
                if shape != want_shape:
                    raise DatasetError(f"{file_path}: shape {shape}, expected {want_shape}")
                if dtype != want_dtype:
                    raise DatasetError(f"{file_path}: dtype {dtype}, expected {want_dtype}")
                size = file_path.stat().st_size
                want_size = offset + math.prod(shape) * dtype.itemsize
                if size != want_size:
                    raise DatasetError(
                        f"{file_path}: {size} bytes on disk, its header implies {want_size} "
                        f"({'truncated' if size < want_size else 'trailing data'})"
                    )
                if size != record["bytes"]:
                    raise DatasetError(f"{file_path}: {size} bytes on disk, {meta_path} "
                                       f"records {record['bytes']}")
        if cursor != self.num_histories:
            raise DatasetError(f"{meta_path}: shards cover {cursor} histories, expected {self.num_histories}")

    def verify(self) -> None:
        """Recompute every file's blake2b checksum; raise ``DatasetError`` on a mismatch.

        Digests are cached per process (``ad.integrity.file_digest``): a pipeline that
        opens the same unchanged dataset several times hashes it once.
        """
        for shard in self._shards:
            for filename, record in shard["files"].items():
                try:
                    check_file(self._file_path(shard, filename), record["bytes"],
                               record["blake2b"], "dataset file")
                except DatasetError:
                    raise
                except IntegrityError as e:
                    raise DatasetError(str(e)) from None

    def check_values(self) -> None:
        """Check the values training relies on, shard by shard; ``DatasetError`` names the
        file, the first bad history and step, the value and the valid range.

        actions (and intended actions) in ``[0, env.num_actions)``, discrete observation
        leaves in ``[0, num_values)``, rewards finite, ``num_episodes`` in ``[0, T]``,
        completed episode returns finite. Reads each file once (memory-mapped).
        """
        env = self.env
        num_actions = int(env.num_actions)
        from envs.core import ArraySpec  # local: reading arrays never needs the env package

        spec_leaves = jax.tree_util.tree_leaves(env.observation_spec(),
                                                is_leaf=lambda x: isinstance(x, ArraySpec))
        obs_names = self.names("obs")
        obs_range = {}
        if len(spec_leaves) == len(obs_names):
            for name, leaf in zip(obs_names, spec_leaves):
                if getattr(leaf, "num_values", None) is not None:
                    obs_range[name] = (0, int(leaf.num_values))
        ranges = {"action": (0, num_actions), "intended_action": (0, num_actions),
                  "num_episodes": (0, self.num_steps + 1), **obs_range}
        for s, shard in enumerate(self._shards):
            arrays = self._shard_arrays(s)
            for name, (lo, hi) in ranges.items():
                if name in arrays:
                    a = arrays[name]
                    bad = (a < lo) | (a >= hi)
                    if bad.any():
                        self._value_error(shard, name, bad, a, f"in [{lo}, {hi})")
            for name in ("reward",):
                bad = ~np.isfinite(arrays[name])
                if bad.any():
                    self._value_error(shard, name, bad, arrays[name], "finite")
            returns, counts = arrays["episode_returns"], arrays["num_episodes"]
            completed = np.arange(returns.shape[1])[None] < counts[:, None]
            bad = completed & ~np.isfinite(returns)
            if bad.any():
                self._value_error(shard, "episode_returns", bad, returns, "finite")

    def _value_error(self, shard: dict, name: str, bad: np.ndarray, values: np.ndarray,
                     valid: str) -> None:
        where = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
        history = shard["start"] + int(where[0])
        at = f"history {history}" + (f", step {int(where[1])}" if len(where) > 1 else "")
        raise DatasetError(f"{self._file_path(shard, name + '.npy')}: {int(bad.sum())} "
                           f"value(s) out of range, first at {at}: {values[where].item()!r} (valid: "
                           f"{valid}); the dataset is corrupt")

    # ---- memory maps -----------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def _shard_arrays(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._maps:
            shard = self._shards[s]
            self._maps[s] = {
                name: np.load(self._file_path(shard, f"{name}.npy"), mmap_mode="r") for name in self._leaves
            }
        return self._maps[s]

    def _locate(self, history_idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(history_idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_histories):
            raise ValueError(f"history index out of range [0, {self.num_histories}): {idx.min()}..{idx.max()}")
        return np.searchsorted(self._starts, idx, side="right") - 1

    # ---- pytree structure ---------------------------------------------------------------
    def names(self, prefix: str) -> list[str]:
        """Stored file stems of one group ("obs" or "params"), in pytree leaf order."""
        return [n for n in self._leaves if n == prefix or n.startswith(prefix + ".")]

    @property
    def env(self):
        """The environment the histories come from, rebuilt from the spec."""
        if "env" not in self._structures:
            import envs  # local import: reading arrays never needs the env package

            self._structures["env"] = envs.make(self.spec.env, **dict(self.spec.env_overrides))
        return self._structures["env"]

    def _treedef(self, prefix: str):
        """Treedef matching the stored leaves, from the env; a name-keyed dict otherwise."""
        if prefix not in self._structures:
            stored = self.names(prefix)
            treedef = None
            try:
                from envs.core import ArraySpec

                env = self.env
                if prefix == "obs":
                    template = env.observation_spec()
                    is_leaf = lambda x: isinstance(x, ArraySpec)  # noqa: E731
                else:
                    template = jax.eval_shape(lambda k: env.sample_params(k, self.spec.split), jax.random.key(0))
                    is_leaf = None
                names, _, treedef = leaf_names(prefix, template, is_leaf)
                if names != stored:
                    treedef = None
            except Exception:  # unknown env or changed structure: fall back to names
                treedef = None
            self._structures[prefix] = treedef
        return self._structures[prefix]

    def _unflatten(self, prefix: str, leaves: dict[str, np.ndarray]) -> PyTree:
        stored = self.names(prefix)
        treedef = self._treedef(prefix)
        if treedef is not None:
            return jax.tree_util.tree_unflatten(treedef, [leaves[n] for n in stored])
        if stored == [prefix]:
            return leaves[prefix]
        return {n[len(prefix) + 1 :]: leaves[n] for n in stored}

    # ---- reading -----------------------------------------------------------------------
    def history(self, i: int) -> LearningHistory:
        """History ``i`` as memory-mapped views, leaves ``(T, ...)``."""
        s = int(self._locate(np.array([i]))[0])
        row = i - self._shards[s]["start"]
        arrays = self._shard_arrays(s)
        obs = self._unflatten("obs", {n: arrays[n][row] for n in self.names("obs")})
        return LearningHistory(obs, *(arrays[f][row] for f in _STEP_FIELDS),
                               **{f: arrays[f][row] for f in self.optional_step_fields})

    def task_params(self, idx: int | np.ndarray | None = None) -> PyTree:
        """Task params of history ``idx`` (int: one task; array: batched; None: all)."""
        single = np.ndim(idx) == 0 and idx is not None
        idx_arr = np.arange(self.num_histories) if idx is None else np.atleast_1d(np.asarray(idx))
        leaves = {n: self._gather_rows(n, idx_arr) for n in self.names("params")}
        if single:
            leaves = {n: v[0] for n, v in leaves.items()}
        return self._unflatten("params", leaves)

    def _gather_rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        shard_of = self._locate(idx)
        first = self._shard_arrays(0)[name]
        out = np.empty((len(idx),) + first.shape[1:], first.dtype)
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            out[sel] = self._shard_arrays(s)[name][idx[sel] - self._shards[s]["start"]]
        return out

    def step_table(self, name: str) -> np.ndarray:
        """``(num_histories, num_steps)``: one step field (``action``, ``reward``,
        ``terminated``, ``truncated``, and ``intended_action`` where stored) of every
        history, read into memory."""
        fields = _STEP_FIELDS + self.optional_step_fields
        if name not in fields:
            raise ValueError(f"{self.path}: step_table takes one of {fields}, got {name!r}")
        return self._gather_rows(name, np.arange(self.num_histories))

    @property
    def internal_fields(self) -> tuple[str, ...]:
        """Names of the source's stored per-step internal quantities (may be empty)."""
        return tuple(n[len(INTERNALS) + 1:] for n in self.names(INTERNALS))

    def internals(self, i: int) -> dict[str, np.ndarray]:
        """History ``i``'s source internals, ``{name: (T, ...)}`` memory-mapped views,
        aligned with ``history(i)``'s steps."""
        if not self.internal_fields:
            raise ValueError(f"{self.path}: stores no source internals (collect with "
                             f"--internals from a source that emits them, e.g. rmax or psrl)")
        s = int(self._locate(np.array([i]))[0])
        arrays = self._shard_arrays(s)
        row = i - self._shards[s]["start"]
        return {name: arrays[f"{INTERNALS}.{name}"][row] for name in self.internal_fields}

    @property
    def optional_step_fields(self) -> tuple[str, ...]:
        """The optional step fields (``intended_action``) this dataset stores."""
        return tuple(f for f in _OPTIONAL_STEP_FIELDS if f in self._leaves)

    @functools.cached_property
    def num_episodes(self) -> np.ndarray:
        """(num_histories,) int32: completed episodes of the source in each history."""
        return self._gather_rows("num_episodes", np.arange(self.num_histories))

    @functools.cached_property
    def episode_returns(self) -> np.ndarray:
        """(num_histories, E) float32, NaN-padded: the source's per-episode returns.

        A memory map when the dataset has one shard; otherwise shards (whose widths
        differ) are stacked into one in-memory array: it is at most ``1/episode_length``
        the size of the step data. ``source_returns(i)`` reads one history lazily.
        """
        if self.num_shards == 1:
            return self._shard_arrays(0)["episode_returns"]
        width = max(s["max_episodes"] for s in self._shards)
        out = np.full((self.num_histories, width), np.nan, np.float32)
        for s, shard in enumerate(self._shards):
            table = self._shard_arrays(s)["episode_returns"]
            out[shard["start"] : shard["stop"], : table.shape[1]] = table
        return out

    def source_returns(self, i: int) -> np.ndarray:
        """The source's completed-episode returns in history ``i`` (memory-mapped view)."""
        s = int(self._locate(np.array([i]))[0])
        row = i - self._shards[s]["start"]
        arrays = self._shard_arrays(s)
        return arrays["episode_returns"][row, : int(arrays["num_episodes"][row])]

    def read_windows(self, history_idx: np.ndarray, start: np.ndarray, length: int) -> LearningHistory:
        """Gather ``B`` windows ``history[h][s : s + length]``: leaves ``(B, length, ...)``.

        Vectorised per shard (one block gather per leaf and shard touched); it reads only
        the requested steps from the memory maps.
        """
        history_idx = np.asarray(history_idx, np.int64).reshape(-1)
        start = np.asarray(start, np.int64).reshape(-1)
        if history_idx.shape != start.shape:
            raise ValueError(f"history_idx {history_idx.shape} and start {start.shape} must have the same shape")
        if not 1 <= length <= self.num_steps:
            raise ValueError(f"length must be in [1, num_steps={self.num_steps}], got {length}")
        if start.size and (start.min() < 0 or start.max() + length > self.num_steps):
            raise ValueError(
                f"window start must be in [0, num_steps - length = {self.num_steps - length}], "
                f"got {start.min()}..{start.max()}"
            )
        shard_of = self._locate(history_idx)
        step_names = [n for n, leaf in self._leaves.items()
                      if leaf["kind"] == "step" and not n.startswith(INTERNALS + ".")]
        out = {
            n: np.empty((len(history_idx), length, *self._leaves[n]["shape"]), np.dtype(self._leaves[n]["dtype"]))
            for n in step_names
        }
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            arrays = self._shard_arrays(s)
            rows = history_idx[sel] - self._shards[s]["start"]
            for n in step_names:
                # a strided view (n, T - L + 1, *shape, L) of every window: indexing it copies
                # each window as one block (faster than per-element gathers for long windows);
                # views are cached because building one costs more than a short gather
                view_key = (int(s), n, length)
                if view_key not in self._window_views:
                    self._window_views[view_key] = np.lib.stride_tricks.sliding_window_view(arrays[n], length, axis=1)
                windows = self._window_views[view_key]
                out[n][sel] = np.moveaxis(windows[rows, start[sel]], -1, 1)
        obs = self._unflatten("obs", {n: out[n] for n in self.names("obs")})
        return LearningHistory(obs, *(out[f] for f in _STEP_FIELDS),
                               **{f: out[f] for f in self.optional_step_fields})

    # ---- reporting --------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(r["bytes"] for s in self._shards for r in s["files"].values())

    def summary(self) -> str:
        """A short human-readable description of the dataset."""
        spec = self.spec
        counts = self.num_episodes
        returns = self.episode_returns
        done = counts > 0
        first = float(np.mean(returns[done, 0])) if done.any() else float("nan")
        last = float(np.mean(returns[np.flatnonzero(done), counts[done] - 1])) if done.any() else float("nan")
        obs = ", ".join(f"{n} {tuple(self._leaves[n]['shape'])} {np.dtype(self._leaves[n]['dtype'])}" for n in self.names("obs"))
        lines = [
            f"dataset {self.path} (schema v{self.metadata['schema_version']}, created {self.metadata.get('created')})",
            f"  env {spec.env}{' ' + str(dict(spec.env_overrides)) if spec.env_overrides else ''} "
            f"split={spec.split}; source {spec.source}; seed {spec.seed}",
            f"  {self.num_histories} histories x {self.num_steps} steps = {self.num_histories * self.num_steps:,} steps "
            f"in {self.num_shards} shard(s), {_human_bytes(self.nbytes)}",
            f"  obs: {obs}",
            f"  source episodes per history: {counts.min()}..{counts.max()}; "
            f"mean return first episode {first:.3f}, last episode {last:.3f}",
        ]
        lines += [f"  {k}: {v}" for k, v in spec.extra.items()]
        return "\n".join(lines)

    def __getstate__(self) -> dict:
        # pickling (e.g. to a worker) must not copy the memory-mapped data: reopen lazily
        state = dict(self.__dict__)
        state["_maps"], state["_window_views"] = {}, {}
        state.pop("num_episodes", None)
        state.pop("episode_returns", None)
        return state

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, histories={self.num_histories}, steps={self.num_steps})"


__all__ = [
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "DatasetWriter",
    "SCHEMA_VERSION",
    "leaf_names",
    "load_dataset",
    "returns_table",
]
