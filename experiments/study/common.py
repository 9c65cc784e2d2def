"""What every experiment of the study shares: subjects, held-out tasks, the source's
held-out histories, the policy-quality metrics, statistics over tasks and seeds, and
resumable JSON + PNG output with provenance.

Held-out tasks and the source's held-out histories are drawn exactly as
``experiments.run.evaluate_setting`` draws them (``ad.evaluate.eval_tasks`` with the same
keys, ``ad.evaluate.source_learning``); Dark Room histories are then kept every
``setting.subsample_every``-th episode, the form the model was distilled from
(``experiments.collect.subsample_episodes``). The zoo's 2-armed subject (``ZOO_SUBJECTS``)
gets the same draw: bandit tasks of the env's test key stream (the zoo distilled it from
histories on the train stream; its catalogue's held-out figures are another draw of the
test stream, ``jax.random.key(0)``), so held out in the same sense as the 5-armed subject's.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pickle
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import source_agents
from ad import evaluate as ev
from ad.checkpoints import LoadedModel, load_model
from ad.integrity import json_digest
from ad.interp.agents import darkroom_optimal_actions
from ad.interp.streams import Stream, to_inputs
from ad.utils import atomic_write_bytes, atomic_write_text, provenance
from experiments.collect import subsample_episodes
from experiments.run import _cached_evaluation, improvement
from experiments.settings import Setting, get_setting

SUBJECTS = ("bandit", "darkroom")  # the settings of experiments.run the study runs on
# Subjects an experiment runs on when asked (``--subjects``): the 5-armed bandit distilled from
# Thompson sampling (a setting of experiments.run, trained like the others under --runs), and
# the zoo's 2-armed bandit (``ZOO_SUBJECTS``).
MORE_SUBJECTS = ("bandit-thompson", "bandit2")
# Subjects whose models ship with the model zoo (``ad.zoo``; --runs is not read): family and
# architecture. bandit2: the zoo's largest 2-armed configuration when the study ran (the
# d32 and standard-size ones joined later), distilled from UCB1 on the train key stream like
# the 5-armed subject.
ZOO_SUBJECTS = {"bandit2": ("bandit2", dict(d_model=16, num_layers=2, num_heads=2, mlp_dim=32))}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What one experiment run needs (every module's CLI fills it)."""

    subject: str  # SUBJECTS or MORE_SUBJECTS: a setting trained by experiments.run or a zoo entry
    runs: str = "runs"  # root of the trained models: <runs>/<subject>/ad-seed<k> (zoo: unread)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds (the unit for claims about the recipe)
    out: str = "docs/findings"  # <out>/<experiment>-<subject>.{json,png}
    tasks: int = 300  # bandits: held-out tasks (Dark Room: all 16 held-out goals)
    rollouts_per_task: int = 8  # Dark Room: rollouts per held-out goal
    key: int = 1234  # experiments.run's evaluation seed: the same held-out tasks
    cache: str = ""  # a folder for per-seed rollouts and policies ("" = none); not part of a result's identity

    def __post_init__(self):
        if self.subject not in SUBJECTS + MORE_SUBJECTS:
            raise ValueError(f"subject must be one of {SUBJECTS + MORE_SUBJECTS}, got "
                             f"{self.subject!r}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be ints >= 0, got {self.seeds!r}")
        if self.tasks < 2 or self.rollouts_per_task < 1:
            raise ValueError(f"tasks must be >= 2 and rollouts_per_task >= 1, got "
                             f"{self.tasks}, {self.rollouts_per_task}")

    @property
    def setting(self) -> Setting:
        if self.subject in ZOO_SUBJECTS:
            return zoo_setting(self.subject)
        return get_setting(self.subject)

    def run_dirs(self) -> list[Path]:
        if self.subject in ZOO_SUBJECTS:
            return zoo_run_dirs(self.subject, self.seeds)
        dirs = [Path(self.runs) / self.subject / f"ad-seed{s}" for s in self.seeds]
        for d in dirs:
            if not (d / "model" / "config.json").exists():
                raise FileNotFoundError(f"{d}: no finished model (model/config.json missing); "
                                        f"train it with python -m experiments.run {self.subject}")
        return dirs


def zoo_setting(subject: str) -> Setting:
    """A zoo subject's recipe as a ``Setting`` (its family's env, source and histories; its
    architecture and training in ``distill``): what the study reads of a setting."""
    from ad.zoo.build import FAMILIES

    family, arch = ZOO_SUBJECTS[subject]
    f = FAMILIES[family]
    return Setting(name=subject, env=f.env, source=f.source, histories=f.histories,
                   source_overrides=dict(f.source_overrides),
                   distill={**arch, "context": f.context, "num_steps": f.num_steps,
                            "batch_size": f.batch_size, "lr": f.lr},
                   eval_episodes=f.episodes, env_overrides=dict(f.env_overrides))


def zoo_run_dirs(subject: str, seeds) -> list[Path]:
    """The shipped final checkpoints of a zoo subject's seeds (``ad.zoo.load``'s folders)."""
    import ad.zoo

    family, arch = ZOO_SUBJECTS[subject]
    entry = ad.zoo.find(family, **arch)
    missing = sorted(set(seeds) - set(entry.seeds))
    if missing:
        raise ValueError(f"{subject}: {entry.name} ships seeds {list(entry.seeds)}, not {missing}")
    return [entry.path / f"seed{s}" for s in seeds]


class Subject(NamedTuple):
    """The models of one setting and its held-out tasks."""

    config: StudyConfig
    models: list  # LoadedModel per seed
    env: Any
    tasks: Any  # leaves (N, ...): held-out tasks, each task's rollouts adjacent
    rollouts_per_task: int

    @property
    def n(self) -> int:
        return int(jax.tree.leaves(self.tasks)[0].shape[0])

    @property
    def bandit(self) -> bool:
        return self.env.max_episode_steps == 1

    @property
    def episodes(self) -> int:
        return self.config.setting.eval_episodes

    @property
    def horizon(self) -> int:
        return self.env.max_episode_steps


def load_subject(config: StudyConfig) -> Subject:
    """The trained models and the held-out tasks (``experiments.run``'s draw)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # one line instead of one per seed
        warnings.simplefilter("always")
        models: list[LoadedModel] = [load_model(d) for d in config.run_dirs()]
    if caught:
        say(f"{config.subject}: {len(caught)} warning(s) loading the models, the first: "
            f"{str(caught[0].message)[:160]}")
    env = models[0].env
    key = jax.random.fold_in(jax.random.PRNGKey(config.key), 0)  # experiments.run: "test"
    tasks = ev.eval_tasks(env, "test", config.tasks, key)
    per_task = 1
    if env.finite_tasks:
        per_task = config.rollouts_per_task
        tasks = ev.repeat_tasks(tasks, per_task)
    return Subject(config, models, env, tasks, per_task)


def source_key(config: StudyConfig, key_offset: int = 7) -> jax.Array:
    """The key of the source's held-out runs (``experiments.run``'s)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.key), 0), key_offset)


def source_histories(subject: Subject, key_offset: int = 7, subsample: bool = True):
    """The source learning every held-out task from scratch (``experiments.run``'s call),
    as a ``Stream`` in the form the model was trained on (Dark Room: every k-th episode;
    ``subsample=False``: every episode), and the source's per-episode returns before
    subsampling (N, E)."""
    setting = subject.config.setting
    source = source_agents.get(setting.source)
    source_config = source_agents.make_config(source, setting.env, **setting.source_overrides)
    key = source_key(subject.config, key_offset)
    history, curve = memo(subject.config, "source", repr(source_config),
                          (subject.tasks, key), lambda: ev.source_learning(
                              source, source_config, subject.env, subject.tasks, key))
    history = jax.tree.map(np.asarray, history)
    if subsample and setting.subsample_every > 1:
        history = subsample_episodes(history, setting.subsample_every)
    return Stream.from_history(history), curve


def episode_length(stream: Stream) -> int:
    """The one episode length of a stream whose episodes all last the same number of steps
    (bandits: 1 pull; Dark Room: its horizon); refuses others."""
    done = np.asarray(stream.done, bool)
    ends = [np.flatnonzero(row) for row in done]
    lengths = {int(x) for e in ends for x in np.diff(np.concatenate([[-1], e]))}
    if len(lengths) != 1 or any(e[-1] != done.shape[1] - 1 for e in ends):
        raise ValueError(f"needs whole episodes of one length, got lengths {sorted(lengths)[:5]}")
    return lengths.pop()


def take_episodes(stream: Stream, order: np.ndarray) -> Stream:
    """Row ``b`` made of its own episodes ``order[b]`` (B, E') in that order — the same
    transitions, another order or a subset — for streams of whole, equal-length episodes."""
    H = episode_length(stream)
    B, T = stream.action.shape
    order = np.asarray(order)
    idx = (order[:, :, None] * H + np.arange(H)).reshape(B, -1)  # (B, E' * H) step indices

    def take(x):
        x = np.asarray(x)
        return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    return jax.tree.map(take, stream)


# ----------------------------------------------------------------------------------------
# Per-seed memo: a rollout or a policy computed once per model and input
# ----------------------------------------------------------------------------------------
def _digest(*parts) -> str:
    """blake2b of the bytes of arrays (pytrees), strings and numbers, in order."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        for leaf in jax.tree.leaves(part):
            if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                     jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            a = np.asarray(leaf)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        h.update(repr(type(part)).encode() if part is None else b"|")
    return h.hexdigest()


def model_id(model: LoadedModel) -> str:
    """A trained model's identity for ``memo``: its folder, and its weights' size and time."""
    params = Path(model.run_dir) / "model" / "params.msgpack"
    st = params.stat()
    return f"{model.run_dir}:{st.st_size}:{st.st_mtime_ns}"


def memo(config: StudyConfig, what: str, owner: str, inputs: tuple, fn):
    """``fn()`` once per (owner, inputs) — ``owner`` names the model (``model_id``) or
    source — kept in ``config.cache`` (a pickle per result, written atomically) so a run
    over more seeds recomputes only the new ones."""
    if not config.cache:
        return fn()
    path = Path(config.cache) / f"{what}-{_digest(owner, what, *inputs)}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    out = jax.tree.map(np.asarray, fn())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pickle.dumps(out))
    return out


def rollout(subject: Subject, model: LoadedModel, tasks, key, num_steps: int, *,
            feedback=None, prompt=None, record_policy: bool = False):
    """``ad.evaluate.ad_rollout`` of one model, memoised per seed (``memo``)."""
    def fn():
        return ev.ad_rollout(model.params, model.config, subject.env, tasks, key, num_steps,
                             prompt=prompt, record_policy=record_policy, feedback=feedback)

    return memo(subject.config, "rollout", model_id(model), (tasks, key, num_steps, repr(feedback),
                                                   prompt, record_policy), fn)


# ----------------------------------------------------------------------------------------
# Policy quality and improvement
# ----------------------------------------------------------------------------------------
def policy(model: LoadedModel, stream: Stream, forward=None, chunk: int = 32,
           config: StudyConfig | None = None) -> np.ndarray:
    """(B, T, A) the model's teacher-forced policy on whole streams (the one input builder;
    ``chunk`` rows per forward to bound memory); memoised per seed when ``config`` has a
    cache."""
    def fn():
        fwd = forward or jax.jit(model.apply)
        B = stream.action.shape[0]
        out = [jax.nn.softmax(fwd(to_inputs(jax.tree.map(lambda x: x[i:i + chunk], stream),
                                            model.config)), axis=-1)
               for i in range(0, B, chunk)]
        return np.concatenate([np.asarray(o) for o in out])

    if config is None:
        return fn()
    return memo(config, "policy", model_id(model), (stream,), fn)


def quality(subject: Subject, stream: Stream, pi: np.ndarray) -> np.ndarray:
    """(B, T) the quality of a policy ``pi`` (B, T, A) at every step of ``stream``:
    bandits — its expected reward ``pi · mu`` under the task's true arm means; Dark Room —
    the probability it puts on a shortest-path action to the goal."""
    if subject.bandit:
        return np.einsum("bta,ba->bt", pi, np.asarray(subject.tasks.means))
    goal = np.asarray(subject.tasks.goal)[:, None]
    optimal = np.asarray(darkroom_optimal_actions(np.asarray(stream.obs), goal,
                                                  subject.env.size))
    return (pi * optimal).sum(-1)


def reference_policy(agent, stream: Stream) -> np.ndarray:
    """(B, T, A) a reference agent's policy on the same stream: the argmax of its values,
    ties sharing the probability (``ad.interp.agents.policy_along``)."""
    from ad.interp.agents import policy_along

    return policy_along(agent, stream.obs, stream.action, stream.reward, stream.done)


def per_episode(values: np.ndarray, done: np.ndarray, num_episodes: int) -> np.ndarray:
    """(B, E): the mean of a per-step quantity over each of the first ``num_episodes``
    episodes of each row (episodes end where ``done``)."""
    done = np.asarray(done, bool)
    ep = np.cumsum(done, axis=1) - done
    out = np.full((values.shape[0], num_episodes), np.nan)
    for e in range(num_episodes):
        m = ep == e
        if not m.any(1).all():
            raise ValueError(f"per_episode: a row has fewer than {num_episodes} episodes")
        out[:, e] = (values * m).sum(1) / m.sum(1)
    return out


def task_improvement(curve: np.ndarray, rollouts_per_task: int, early: int = 5,
                     late: int = 10) -> np.ndarray:
    """(tasks,): each task's improvement, the mean over its rollouts of the last ``late``
    episodes minus the first ``early`` (rows: one model's rollouts, each task's adjacent).
    Its mean is ``experiments.run.improvement``'s (tested)."""
    curve = np.asarray(curve, np.float64)
    per_task = curve.reshape(-1, rollouts_per_task, curve.shape[1]).mean(1)
    return per_task[:, -late:].mean(1) - per_task[:, :early].mean(1)


def run_improvement(curve: np.ndarray, rollouts_per_task: int) -> dict:
    """``experiments.run.improvement`` of one model's curve (rows = its rollouts)."""
    return improvement(curve, curve.shape[0], rollouts_per_task)


# ----------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------
def over_tasks(x: np.ndarray) -> dict:
    """Mean and 95% half-width (1.96 SE) over tasks (the unit within one model)."""
    x = np.asarray(x, np.float64)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": 1.96 * se, "tasks": int(len(x))}


def over_seeds(values) -> dict:
    """Per-seed values, their mean and 95% t-interval half-width (the unit for claims about
    the recipe), and whether every seed has the same sign."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    half = (float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
            if len(v) > 1 else float("nan"))
    return {"per_seed": v.tolist(), "mean": float(v.mean()), "ci95": half,
            "all_positive": bool((v > 0).all()), "all_negative": bool((v < 0).all())}


def curve_stats(curves: np.ndarray) -> dict:
    mean, ci = ev.mean_and_ci(curves)
    return {"mean": mean.tolist(), "ci95": ci.tolist()}


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------
def record_key(experiment: str, config: StudyConfig, extra: dict | None = None) -> str:
    """What a finished result depends on: the experiment, its config and the models' files
    (size and modification time: these legacy runs have no checksums)."""
    files = {str(d): [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                      for p in sorted((d / "model").iterdir())] for d in config.run_dirs()}
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "cache"}
    return json_digest({"experiment": experiment, "config": settings,
                        "models": files, "extra": extra or {}})


def output_paths(experiment: str, config: StudyConfig) -> tuple[Path, Path]:
    stem = Path(config.out) / f"{experiment}-{config.subject}"
    return stem.with_suffix(".json"), stem.with_suffix(".png")


def finished(experiment: str, config: StudyConfig) -> dict | None:
    """The finished result of exactly this experiment, config and models, or None."""
    path, _ = output_paths(experiment, config)
    return _cached_evaluation(path, record_key(experiment, config))


def run(module, config: StudyConfig, force: bool = False) -> dict:
    """``module``'s finished result for exactly this config and these models, or its
    ``compute(config)`` written as a record (JSON with provenance) — one place for reuse."""
    if not force and (done := finished(module.EXPERIMENT, config)) is not None:
        say(f"{module.EXPERIMENT}-{config.subject}: reusing the finished result (--force recomputes)")
        return done
    started = time.time()
    return write_record(module.EXPERIMENT, config, module.compute(config), started)


def write_record(experiment: str, config: StudyConfig, results: dict, started: float) -> dict:
    path, png = output_paths(experiment, config)
    record = {"experiment": experiment, "config": dataclasses.asdict(config),
              "model_dirs": [str(d) for d in config.run_dirs()],
              "setting": dataclasses.asdict(config.setting), "results": results,
              "wall_s": time.time() - started, "figure": png.name,
              "evaluation_key": record_key(experiment, config), **provenance()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=_jsonable))
    return record


def _jsonable(x):
    if isinstance(x, np.ndarray | np.generic):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every experiment takes (``StudyConfig``'s fields)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", nargs="+", choices=SUBJECTS + MORE_SUBJECTS,
                   default=list(SUBJECTS), help=f"which trained settings to study (default: "
                   f"{' '.join(SUBJECTS)}; {' and '.join(MORE_SUBJECTS)} when asked)")
    p.add_argument("--runs", default="runs",
                   help="root of the trained models, <runs>/<subject>/ad-seed<k> (default: runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds (default: 0 1 2)")
    p.add_argument("--out", default="docs/findings",
                   help="where <experiment>-<subject>.json/.png go (default: docs/findings)")
    p.add_argument("--tasks", type=int, default=300, help="bandits: held-out tasks (default: 300)")
    p.add_argument("--rollouts", type=int, default=8,
                   help="Dark Room: rollouts per held-out goal (default: 8)")
    p.add_argument("--cache", default="", metavar="DIR",
                   help="keep each seed's rollouts and policies in DIR, so that a rerun with more "
                        "seeds computes only the new ones (default: no cache)")
    p.add_argument("--force", action="store_true", help="recompute even if a finished result "
                   "of the same config and models exists")
    return p


def configs_from(args) -> list[StudyConfig]:
    return [StudyConfig(subject=s, runs=args.runs, seeds=tuple(args.seeds), out=args.out,
                        tasks=args.tasks, rollouts_per_task=args.rollouts, cache=args.cache)
            for s in args.subjects]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def fmt(s: dict) -> str:
    """'mean ± ci (per seed a, b, c)' for an ``over_seeds`` dict."""
    per = ", ".join(f"{v:+.3f}" for v in s["per_seed"])
    return f"{s['mean']:+.3f} ± {s['ci95']:.3f} (seeds: {per})"


def main(module, argv=None, subjects=SUBJECTS) -> int:
    """One experiment's command: ``module`` has ``EXPERIMENT``, ``compute(config)`` and
    ``print_summary(record)``, optionally ``SEEDS`` (the default ``--seeds``); its docstring
    is the ``--help``."""
    p = parser(f"python -m experiments.study.{module.EXPERIMENT}", module.__doc__)
    # a module's SEEDS (e.g. over_training: one run) replaces the default 0 1 2
    p.set_defaults(subjects=list(subjects), seeds=list(getattr(module, "SEEDS", (0, 1, 2))))
    args = p.parse_args(argv)
    for config in configs_from(args):
        record = run(module, config, force=args.force)
        module.print_summary(record)
        print("wrote", *output_paths(module.EXPERIMENT, config))
    return 0
