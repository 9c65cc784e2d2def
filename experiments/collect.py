"""Collect learning histories from a source agent into an on-disk dataset.

    python -m experiments.collect --env darkroom --source ppo --histories 2000 --out data/darkroom-ppo

Runs ``jax.jit(jax.vmap(train))`` of the source (``source_agents``) over fixed chunks of
histories, one chunk per device at a time, and writes each shard atomically with
``ad.dataset.DatasetWriter`` (format in ``ad/dataset.py``).
Ctrl-C (or a crash) keeps the finished shards; rerunning the same command resumes.

Reproducibility: history ``i`` is determined by ``(seed, i)`` alone: its key is
``fold_in(key(seed), i)`` (split into a task key and a training key), and on a finite
task set its task is ``env.tasks(split)[i % n_tasks]`` (every task gets about
``histories / n_tasks`` histories with different seeds); on a continuous task
distribution its task is ``env.sample_params(task_key, split)``. The source runs
``vmap``-ed over a fixed chunk of ``chunk_size`` histories ``[k·C, (k+1)·C)`` per device
and call, whatever the shard size, the device count or the resume pattern: XLA's
floating point depends on the batch width (a vmapped PPO over 8 or 32 histories drifts
apart after a few thousand steps), so a fixed width is what makes history ``i``
bitwise reproducible. ``chunk_size`` is part of the dataset spec (``spec.extra``).

Episode subsampling (``--subsample-every k``, the AD paper's trick to make progress per
context window larger): only episodes ``0, k, 2k, ...`` of each history are stored; the
other episodes' steps are dropped at write time. A dataset is a dense ``(n, T)`` array,
so every history must keep the same step count. With fixed-length episodes (Dark Room,
bandits) that holds by itself. With variable-length episodes (Key-to-Door ends at the
door) each history keeps a different count, so ``--subsample-steps S`` crops every
history to its first ``S`` kept steps (a history keeping fewer raises ``ValueError``);
without it variable-length episodes raise rather than being padded, because padding
would put fake steps inside training windows. The stored ``episode_returns`` stay the
source's full learning curve (all episodes), and ``spec.extra`` records ``k`` (and ``S``).

Library use: ``collect(CollectConfig(env="darkroom", source="noise", ...)) -> Path``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import envs
import source_agents
from ad.dataset import (META_FILE, Dataset, DatasetError, DatasetSpec, DatasetWriter,
                        open_finished, returns_table)
from ad.utils import check_output_path, coerce_overrides, parse_override
from source_agents.history import LearningHistory

DEFAULT_CHUNK = 64  # histories per device and jit call (CollectConfig.chunk_size)


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """One collection run; the CLI flags map one to one onto these fields."""

    out: str | Path  # dataset directory to create (or resume)
    env: str = "darkroom"  # registered environment name (envs.registered())
    env_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # static env fields, e.g. {"horizon": 30}
    source: str = "ppo"  # source agent: a registered name (source_agents.registered()) or an importable module path
    source_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fields of the source Config, e.g. {"num_steps": 4000}
    num_histories: int = 2000  # histories to collect (one agent on one task each)
    split: str = "train"  # task split to collect on: "train" or "test"
    seed: int = 0  # base seed; history i depends only on (seed, i)
    shard_size: int = 256  # histories per shard on disk (does not change the data)
    chunk_size: int = DEFAULT_CHUNK  # histories the source runs at once per device (vmap
    #   width); part of the dataset spec: history i is computed in chunk i // chunk_size
    subsample_every: int = 1  # keep only episodes 0, k, 2k, ... (1 keeps all)
    subsample_steps: int = 0  # with subsampling, crop each history to its first S kept steps (0: keep all; needed for variable-length episodes)
    internals: bool = False  # also store the source's per-step internal quantities (sources whose make_train takes internals=True: rmax, psrl)
    overwrite: bool = False  # delete an existing dataset at `out` instead of resuming it
    verbose: bool = True  # progress bar and closing summary on stdout

    def __post_init__(self):
        for field in ("num_histories", "shard_size", "subsample_every", "chunk_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CollectConfig.{field} must be an int >= 1, got {value!r}")
        if not isinstance(self.subsample_steps, int) or self.subsample_steps < 0:
            raise ValueError(f"CollectConfig.subsample_steps must be an int >= 0, got {self.subsample_steps!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"CollectConfig.split must be 'train' or 'test', got {self.split!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"CollectConfig.seed must be an int >= 0, got {self.seed!r}")


class SourcePerformance(NamedTuple):
    """How good the recorded source got, relative to the exact optimum of each task."""

    final_fraction: float  # mean over histories of (mean return over the last 10% of episodes) / optimum
    fraction_near_optimal: float  # share of histories whose final fraction is >= 0.9
    num_scored: int  # histories with >= 1 completed episode and a positive optimum


# ---------------------------------------------------------------------------------------
# Sources, overrides, inputs
# ---------------------------------------------------------------------------------------
def resolve_source(name: str):
    """A source namespace (``Config``, ``make_train``) by registered name or module path.

    ``module.path`` or ``module.path:attribute`` lets researchers collect from their own
    source without registering it (``source_agents.get``; the dataset spec records the
    string as given).
    """
    return source_agents.get(name)


def make_history_inputs(env, split: str, seed: int):
    """``inputs(indices) -> (train_keys, params)``: per-history keys and tasks (module doc)."""
    base = jax.random.key(seed)
    tasks = env.tasks(split) if env.finite_tasks else None
    num_tasks = None if tasks is None else jax.tree.leaves(tasks)[0].shape[0]

    def one(i):
        task_key, train_key = jax.random.split(jax.random.fold_in(base, i))
        if tasks is None:
            params = env.sample_params(task_key, split)
        else:
            params = jax.tree.map(lambda x: x[i % num_tasks], tasks)
        return train_key, params

    return jax.vmap(one)


def subsample_episodes(history: LearningHistory, every: int, keep_steps: int = 0) -> LearningHistory:
    """Keep episodes ``0, every, 2*every, ...`` of each history.

    Every history must keep the same number of steps: true for fixed-length episodes;
    for variable-length ones pass ``keep_steps`` to crop each history to its first
    ``keep_steps`` kept steps (its last kept episode may then be cut short, as the end
    of any stored history can be).
    """
    return episode_selection(history, every, keep_steps)(history)


def episode_selection(history: LearningHistory, every: int, keep_steps: int = 0):
    """``take(tree)``: ``subsample_episodes``'s choice of steps, applied to any tree of
    ``(n, T, ...)`` leaves aligned with ``history`` (the history itself, or the source's
    internals, so both keep the same steps)."""
    if every == 1 and not keep_steps:
        return lambda tree: tree
    done = np.asarray(history.terminated) | np.asarray(history.truncated)  # (n, T)
    # episode index of each step: completed episodes strictly before it
    episode = np.cumsum(done, axis=1) - done
    keep = episode % every == 0  # (n, T)
    kept = keep.sum(axis=1)
    if keep_steps:
        if kept.min() < keep_steps:
            row = int(kept.argmin())
            raise ValueError(
                f"subsample_steps={keep_steps}: history {row} keeps only {int(kept[row])} steps "
                f"with subsample_every={every}; lower subsample_steps or subsample_every")
        keep &= np.cumsum(keep, axis=1) <= keep_steps  # the first keep_steps kept steps
        kept = keep.sum(axis=1)
    else:
        for row in range(done.shape[0]):
            lengths = np.diff(np.concatenate([[-1], np.flatnonzero(done[row])]))
            if len(np.unique(lengths)) > 1:
                raise ValueError(
                    f"subsample_every={every} needs fixed-length episodes, but history {row} has "
                    f"episode lengths {sorted(set(lengths.tolist()))[:5]}; set subsample_steps "
                    f"to crop every history to the same length, or collect with subsample_every=1")
    if len(np.unique(kept)) > 1:
        raise ValueError(f"subsample_every={every}: histories keep different step counts {sorted(set(kept.tolist()))[:5]}")
    rows, cols = np.nonzero(keep)  # row-major: each history's kept steps in order
    n, t_kept = done.shape[0], int(kept[0])
    take = lambda x: np.asarray(x)[rows, cols].reshape(n, t_kept, *np.shape(x)[2:])  # noqa: E731
    return lambda tree: jax.tree.map(take, tree)


def source_performance(dataset: Dataset) -> SourcePerformance:
    """The closing-summary numbers, from the stored source returns and task params."""
    env = dataset.env
    optimum = np.asarray(jax.jit(jax.vmap(env.optimal_return))(dataset.task_params()), np.float64)
    returns = np.asarray(dataset.episode_returns, np.float64)  # (n, E), NaN-padded
    counts = dataset.num_episodes
    tail = np.maximum(1, np.ceil(0.1 * counts)).astype(int)
    j = np.arange(returns.shape[1])
    in_tail = (j >= (counts - tail)[:, None]) & (j < counts[:, None])
    tail_mean = np.where(in_tail, np.nan_to_num(returns), 0.0).sum(1) / tail
    scored = (counts > 0) & (optimum > 0)
    fraction = tail_mean[scored] / optimum[scored]
    if not scored.any():
        return SourcePerformance(float("nan"), float("nan"), 0)
    return SourcePerformance(float(fraction.mean()), float((fraction >= 0.9).mean()), int(scored.sum()))


# ---------------------------------------------------------------------------------------
# The collection run
# ---------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A bad env, source or override in a ``CollectConfig`` (the CLI prints it, no traceback)."""


def _setup(config: CollectConfig):
    """Build and validate the env, the source and its Config from ``config``."""
    try:
        env_cls = type(envs.make(config.env))
        env_overrides = coerce_overrides(env_cls, config.env_overrides, f"env {config.env}")
        env = envs.make(config.env, **env_overrides)
        source = resolve_source(config.source)
        source_overrides = coerce_overrides(source.Config, config.source_overrides, f"source {config.source} Config")
        source_config = source_agents.make_config(source, config.env, **source_overrides)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    if config.internals and "internals" not in inspect.signature(source.make_train).parameters:
        raise ConfigError(f"--internals: source {config.source!r} does not emit internal "
                          f"quantities (its make_train takes no internals=; rmax and psrl do)")
    return env, env_overrides, source, source_config


def dataset_spec(config: CollectConfig) -> DatasetSpec:
    """The spec ``config`` asks for; every bad field raises ``ConfigError`` (no work done)."""
    return _prepare(config)[0]


def _prepare(config: CollectConfig):
    env, env_overrides, source, source_config = _setup(config)
    extra = {"subsample_every": config.subsample_every, "chunk_size": config.chunk_size}
    if config.subsample_steps:
        extra["subsample_steps"] = config.subsample_steps
    if config.internals:
        extra["internals"] = True
    note = _history_note(env, source, config.split)
    if note:
        extra["history_note"] = note
    spec = DatasetSpec(
        env=config.env,
        env_overrides=env_overrides,
        env_config=dataclasses.asdict(env),
        split=config.split,
        source=config.source,
        source_config=dataclasses.asdict(source_config),
        num_histories=config.num_histories,
        seed=config.seed,
        extra=extra,
    )
    return spec, env, source, source_config


def collect(config: CollectConfig) -> Path:
    """Collect (or resume, or just finalize) the dataset described by ``config``.

    A finished dataset is opened read-only (no lock, so any number of processes can use
    it at once), checked against the spec and verified (checksums and values).
    """
    spec, env, source, source_config = _prepare(config)
    out = Path(config.out)
    check_output_path(out, "--out")
    t_start = time.perf_counter()
    if (out / META_FILE).exists() and not config.overwrite:
        open_finished(out, spec)
        if config.verbose:
            print(f"{out}: finished dataset, verified (checksums and values) in "
                  f"{time.perf_counter() - t_start:.1f} s; nothing to collect")
        return out
    with DatasetWriter(out, spec, overwrite=config.overwrite) as writer:
        resumed = writer.num_completed
        devices = jax.devices()
        pending = writer.pending(min(config.shard_size, config.num_histories))
        steps_per_history = source_config.num_steps
        written, steady_steps, steady_time = 0, 0, 0.0
        if pending:
            run, inputs = _compiled(env, source_config, config)
            chunks = _ChunkedSource(run, inputs, config.chunk_size, devices, config.num_histories)
            bar = tqdm(pending, unit="shard", disable=not config.verbose, desc=f"collect {out.name}")
            for shard_index, (start, stop) in enumerate(bar):
                t_shard = time.perf_counter()
                history, params = chunks.histories(start, stop)
                history, internals = history if config.internals else (history, None)
                m = stop - start
                returns, _ = returns_table(history.reward, history.terminated | history.truncated)
                take = episode_selection(history, config.subsample_every, config.subsample_steps)
                writer.write_shard(start, take(history), params, returns,
                                   internals=None if internals is None else take(internals._asdict()))
                written += m
                shard_time = time.perf_counter() - t_shard
                if shard_index > 0:  # the first shard pays for compilation
                    steady_steps, steady_time = steady_steps + m * steps_per_history, steady_time + shard_time
                bar.set_postfix(env_steps_per_s=f"{m * steps_per_history / shard_time:,.0f}")
        dataset = writer.finalize()
    wall = time.perf_counter() - t_start
    if config.verbose:
        steady = steady_steps / steady_time if steady_time > 0 else None
        print(_closing_summary(dataset, written, resumed, steps_per_history, wall, steady))
    return out


class _ChunkedSource:
    """Histories ``[start, stop)`` computed in fixed chunks ``[k·C, (k+1)·C)``, one chunk per
    device and call (module docstring: the vmap width must not depend on the shard size
    or the device count). Chunks that overhang a shard are kept for the next one.

    With several devices, device d runs chunk ``c + d·C`` as its own single-device call of
    the same jitted function (JAX dispatches them asynchronously, so they run at once).
    A batch sharded over a mesh would not do: the SPMD-partitioned program rounds
    differently from the one-device program (a PPO history differed, 2 devices vs 1).
    """

    def __init__(self, run, inputs, chunk_size: int, devices, num_histories: int):
        self.run, self.inputs, self.C, self.devices = run, inputs, chunk_size, list(devices)
        self.n = num_histories  # chunks past it are not computed
        self.cache: dict[int, tuple] = {}  # chunk start -> (history, params) on the host

    def _chunk(self, c: int) -> tuple:
        if c not in self.cache:
            self.cache = {k: v for k, v in self.cache.items() if k > c}  # passed: free them
            pending = []
            for d, device in enumerate(self.devices):
                if c + d * self.C >= self.n:
                    break
                indices = jax.device_put(
                    jnp.arange(c + d * self.C, c + (d + 1) * self.C, dtype=jnp.int32), device)
                keys, params = self.inputs(indices)
                pending.append((c + d * self.C, (self.run(keys, params), params)))
            for start, result in pending:  # block only once every device has its chunk
                self.cache[start] = jax.device_get(result)
        return self.cache[c]

    def histories(self, start: int, stop: int) -> tuple:
        first = start // self.C * self.C
        parts = [self._chunk(c) for c in range(first, stop, self.C)]
        joined = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
        return jax.tree.map(lambda x: x[start - first: stop - first], joined)


def _compiled(env, source_config, config: CollectConfig):
    """Jitted ``run(keys, params)`` and ``inputs(indices)`` for one chunk on one device.

    Both are cached on their (hashable, frozen) configs, so a pipeline that collects
    several datasets with one source (train and test splits, resumes) compiles once.
    """
    try:
        run = _cached_run(env, config.source, source_config, config.internals)
        inputs = _cached_inputs(env, config.split, config.seed)
    except TypeError:  # an unhashable config: build uncached
        run = _cached_run.__wrapped__(env, config.source, source_config, config.internals)
        inputs = _cached_inputs.__wrapped__(env, config.split, config.seed)
    return run, inputs


@functools.lru_cache(maxsize=8)
def _cached_run(env, source_name: str, source_config, internals: bool = False):
    make_train = resolve_source(source_name).make_train
    train = make_train(env, source_config, internals=True) if internals else make_train(env, source_config)
    return jax.jit(jax.vmap(train))


@functools.lru_cache(maxsize=8)
def _cached_inputs(env, split: str, seed: int):
    return jax.jit(make_history_inputs(env, split, seed))


def _history_note(env, source, split: str) -> str | None:
    """Say so when the source saw Markov features the recorded obs lack (e.g. has_key)."""
    note = getattr(source, "HISTORY_NOTE", None)
    if note:
        return str(note)
    key = jax.random.key(0)

    def features(k):
        _, state = env.reset(k, env.sample_params(k, split))
        return env.source_features(state)

    shape = jax.eval_shape(features, key).shape
    if math.prod(shape) > 0:
        return (
            f"env.source_features (shape {tuple(shape)}) was available to the source; "
            "the recorded obs is the env observation only"
        )
    return None


def _closing_summary(
    dataset: Dataset, written: int, resumed: int, steps_per_history: int, wall: float, steady: float | None
) -> str:
    perf = source_performance(dataset)
    env_steps = written * steps_per_history
    steady_text = f", {steady:,.0f} steps/s after the first shard" if steady else ""
    return "\n".join(
        [
            dataset.summary(),
            f"this run: {written} histories, {env_steps:,} env steps in {wall:.1f} s "
            f"({env_steps / max(wall, 1e-9):,.0f} steps/s incl. compilation{steady_text}); "
            f"{resumed} histories were already on disk",
            f"source over the last 10% of its episodes: {100 * perf.final_fraction:.1f}% of optimal return "
            f"(mean over {perf.num_scored} histories); {100 * perf.fraction_near_optimal:.1f}% of histories "
            f">= 90% of optimal",
        ]
    )


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.collect",
        description=(
            "Collect learning histories of a source agent on many tasks into a memory-mapped\n"
            "dataset directory (format: ad/dataset.py). Interrupt any time (Ctrl-C); rerun the\n"
            "same command to resume from the finished shards. History i depends only on\n"
            "(--seed, i): shard size, device count and resumes never change the data."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m experiments.collect --env darkroom --source ppo --histories 2000 \\\n"
            "      --out data/darkroom-ppo\n"
            "  python -m experiments.collect --env darkroom --source noise \\\n"
            "      --source-override num_steps=4000 --histories 260 --subsample-every 2 \\\n"
            "      --out data/darkroom-noise\n"
            "  python -m experiments.collect --env darkroom --env-override horizon=30 \\\n"
            "      --source noise --split test --histories 16 --out data/darkroom-noise-test\n"
        ),
    )
    parser.add_argument("--env", default="darkroom", help=f"environment name, one of: {', '.join(envs.registered())} (default: darkroom)")
    parser.add_argument(
        "--env-override", action="append", default=[], metavar="KEY=VALUE",
        help="set a static env field, e.g. horizon=30 (repeatable; values parse as bool/int/float/str)",
    )
    parser.add_argument(
        "--source", default="ppo",
        help=f"source agent: one of {', '.join(source_agents.registered())}, or an importable "
        "module path exposing Config and make_train (default: ppo)",
    )
    parser.add_argument(
        "--source-override", action="append", default=[], metavar="KEY=VALUE",
        help="set a field of the source's Config, e.g. num_steps=4000 (the history length in env "
        "steps); repeatable",
    )
    parser.add_argument("--histories", type=int, default=2000, metavar="N", help="number of histories to collect (default: 2000)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="task split (default: train)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="base seed; history i depends only on (seed, i) (default: 0)")
    parser.add_argument(
        "--shard-size", type=int, default=256, metavar="B",
        help="histories per shard file set on disk (default: 256); does not change the data",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK, metavar="C",
        help=f"histories the source runs at once on each device (the vmap width; default: "
        f"{DEFAULT_CHUNK}). History i is computed in chunk i // C, so shard size, device count "
        "and resumes never change the data; C itself is part of the dataset's spec (raise it on "
        "a GPU for throughput)",
    )
    parser.add_argument(
        "--subsample-every", type=int, default=1, metavar="K",
        help="store only episodes 0, K, 2K, ... of each history (the AD paper's subsampling; "
        "default: 1, keep all)",
    )
    parser.add_argument(
        "--subsample-steps", type=int, default=0, metavar="S",
        help="with --subsample-every, crop each history to its first S kept steps; needed when "
        "episodes have different lengths (e.g. key-to-door), so that histories stay equally long "
        "(default: 0, keep all)",
    )
    parser.add_argument(
        "--internals", action="store_true",
        help="also store the source's per-step internal quantities as internals.<name> "
             "(R-max / PSRL: state, visits, value, q_taken, known_fraction), for probes")
    parser.add_argument("--out", required=True, help="dataset directory to create or resume")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="delete an existing dataset at --out first (by default a matching one is resumed and "
        "a different one is an error)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def config_from_args(args: argparse.Namespace) -> CollectConfig:
    return CollectConfig(
        out=args.out,
        env=args.env,
        env_overrides=dict(parse_override(o) for o in args.env_override),
        source=args.source,
        source_overrides=dict(parse_override(o) for o in args.source_override),
        num_histories=args.histories,
        split=args.split,
        seed=args.seed,
        shard_size=args.shard_size,
        chunk_size=args.chunk_size,
        subsample_every=args.subsample_every,
        subsample_steps=args.subsample_steps,
        internals=args.internals,
        overwrite=args.overwrite,
        verbose=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        dataset_spec(config)  # every name and override checked before any work
        check_output_path(Path(config.out), "--out")
        collect(config)
    except (ConfigError, DatasetError, ValueError) as e:  # user errors: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished shards are kept in {config.out}; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
