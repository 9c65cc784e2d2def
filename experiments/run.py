"""Run one experimental setting end to end: collect -> distill -> evaluate -> plot.

    python -m experiments.run darkroom                 # one AD seed vs its source
    python -m experiments.run darkroom --seeds 0 1 2 --ed
    python -m experiments.run bandit --out results     # the README's demo setting

Every stage caches its output and resumes when interrupted: the dataset lives in
``<data>/<setting>``, each model in ``<runs>/<setting>/{ad,ed}-seed<k>``, the results in
``<out>/<setting>/eval.json`` (curves, summary, configs, provenance) and
``<out>/<setting>/curves.png``. Rerunning the same command reuses what is finished: a
finished dataset is verified (read-only, no lock), finished models are verified when
loaded, and an ``eval.json`` whose ``evaluation_key`` (the models' checksums, the
setting, seeds and temperature) matches is reused instead of re-evaluating (it says
so). Every flag, override, path and seed is checked before the first stage starts.

Evaluation (``ad.evaluate``): on held-out tasks and, beside them, training tasks, AD acts
in context for ``eval_episodes`` episodes with sampled actions; on the same tasks the
source algorithm learns from scratch (its own learning curve), a random policy acts, and
the optimum is exact. Curves are per-episode returns (bandits: reward per pull and
cumulative pseudo-regret) with 95% bands over tasks × rollouts × training seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

import envs
import source_agents
from ad import evaluate as ev
from ad.plots import plot_curves
from ad.checkpoints import load_model, model_files_digest
from ad.config import ArchConfig, ModelConfig
from ad.integrity import IntegrityError, json_digest
from ad.train import DistillConfig, NonFiniteLossError, distill
from ad.utils import (atomic_write_text, check_output_path, coerce_field, field_types,
                      parse_override, provenance, reexec_with_hugepage_malloc)
from experiments.collect import CollectConfig, ConfigError, collect, dataset_spec
from experiments.settings import SETTINGS, Setting, get_setting


def _is_bandit(env) -> bool:
    return env.max_episode_steps == 1


def _pseudo_regret(env, tasks, actions: np.ndarray) -> np.ndarray:
    """Bandits: cumulative expected regret ``sum_t (max mean − mean[a_t])``, (N, S)."""
    means = np.asarray(tasks.means)
    gap = means.max(-1, keepdims=True) - np.take_along_axis(means, np.asarray(actions), -1)
    return np.cumsum(gap, axis=-1)


def evaluate_setting(setting: Setting, ad_models: list, ed_models: list, seed: int = 1234,
                     splits=("test", "train"), quiet: bool = True,
                     temperature: float = 1.0) -> dict:
    """All curves for one setting: ``{split: {label: (rows, E) array}}`` plus optimum.

    AD and ED sample their actions from ``softmax(logits / temperature)``; 1.0 is the
    policy itself (what every figure in the README uses unless it says otherwise).
    """
    def stage(text):  # each stage is one long jitted call: say what is running
        if not quiet:
            print(f"[{time.strftime('%H:%M:%S')}] evaluate: {text}", flush=True)
    env = envs.make(setting.env, **setting.env_overrides)
    E = setting.eval_episodes
    num_steps = E * env.max_episode_steps
    source = source_agents.get(setting.source)
    source_config = source_agents.make_config(source, setting.env, **setting.source_overrides)
    out: dict = {}
    for split in splits:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0 if split == "test" else 1)
        tasks = ev.eval_tasks(env, split, setting.eval_tasks, key)
        if env.finite_tasks:
            tasks = ev.repeat_tasks(tasks, setting.eval_rollouts_per_task)
        n = jax.tree.leaves(tasks)[0].shape[0]
        where = f"{'held-out' if split == 'test' else 'training'} tasks, {n} rollouts x {E} episodes"
        curves, regrets = {}, {}
        for label, models in (("AD", ad_models), ("ED", ed_models)):
            rows, reg = [], []
            for i, m in enumerate(models):
                stage(f"{label} model {i + 1}/{len(models)} on {where}")
                r = ev.ad_rollout(m.params, m.config, env, tasks,
                                  jax.random.fold_in(key, 100 + i), num_steps,
                                  temperature=temperature)
                rows.append(ev.episode_curve(r, E))
                if _is_bandit(env):
                    reg.append(_pseudo_regret(env, tasks, r.action))
            if rows:
                curves[label] = np.concatenate(rows)
                if reg:
                    regrets[label] = np.concatenate(reg)
        stage(f"source ({setting.source}) and random policy on {where}")
        history, curves["source"] = ev.source_learning(source, source_config, env, tasks,
                                                       jax.random.fold_in(key, 7), E)
        if _is_bandit(env):
            regrets["source"] = _pseudo_regret(env, tasks, history.action)[:, :E]
        rnd = ev.random_rollout(env, tasks, jax.random.fold_in(key, 8), num_steps)
        curves["random"] = ev.episode_curve(rnd, E)
        if _is_bandit(env):
            regrets["random"] = _pseudo_regret(env, tasks, rnd.action)
        optimum = np.asarray(jax.vmap(env.optimal_return)(tasks))
        out[split] = {"curves": curves, "regret": regrets, "optimum": optimum, "num_rollouts": n,
                      "rollouts_per_task": setting.eval_rollouts_per_task if env.finite_tasks else 1}
    return out


def improvement(curve: np.ndarray, num_rollouts: int, rollouts_per_task: int,
                early: int = 5, late: int = 10) -> dict | None:
    """In-context improvement: mean return over the last ``late`` episodes minus the mean
    over the first ``early``, with its standard error across *tasks*.

    ``curve`` rows are models x tasks x rollouts (``num_rollouts`` rows per model, each
    task's ``rollouts_per_task`` rollouts adjacent, as ``ev.repeat_tasks`` lays them out);
    each task's rows (all models and rollouts) are averaged first, so the SE is over tasks.
    ``z`` = mean / SE. ``None`` when the curve is too short or there is one task.
    """
    curve = np.asarray(curve, np.float64)
    E = curve.shape[1]
    if E < early + late or curve.shape[0] % num_rollouts or num_rollouts % rollouts_per_task:
        return None
    per_task = curve.reshape(-1, num_rollouts // rollouts_per_task, rollouts_per_task, E)
    per_task = per_task.mean(axis=(0, 2))  # (tasks, E)
    if per_task.shape[0] < 2:
        return None
    first, last = per_task[:, :early].mean(1), per_task[:, E - late:].mean(1)
    diff = last - first
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return {"early_episodes": [1, early], "late_episodes": [E - late + 1, E],
            "early_mean": float(first.mean()), "late_mean": float(last.mean()),
            "mean": float(diff.mean()), "se": se,
            "z": float(diff.mean() / se) if se > 0 else None, "tasks": int(len(diff))}


def summarise(setting: Setting, results: dict) -> dict:
    """Numbers for the README and the closing summary ("by episode k" = mean of k−4..k+5)."""
    summary = {}
    for split, r in results.items():
        opt = float(np.mean(r["optimum"]))
        s = {"optimal_mean_return": opt, "rollouts": r["num_rollouts"]}
        for label, c in r["curves"].items():
            s[label] = {f"by_episode_{k}": ev.by_episode(c, k)
                        for k in setting.report_episodes if k <= c.shape[1]}
            s[label].update({f"fraction_of_optimum_{k}": v / opt if opt else None
                             for k, v in list(s[label].items())})
            s[label]["improvement"] = improvement(c, r["num_rollouts"], r.get(
                "rollouts_per_task", 1))
            if not r["regret"]:  # episodic tasks: is AD faster than its source?
                s[label]["episodes_to_half_optimum"] = ev.episodes_to(c, 0.5 * opt)
        for label, reg in r["regret"].items():
            s[label]["cumulative_regret"] = float(reg[:, -1].mean())
            s[label]["cumulative_regret_se"] = float(reg[:, -1].std(ddof=1) / np.sqrt(len(reg)))
        summary[split] = s
    return summary


def _panels(results: dict, key: str = "curves") -> dict:
    names = {"test": "held-out tasks", "train": "training tasks"}
    panels = {}
    for split, r in results.items():
        panel = {}
        for label, c in r[key].items():
            mean, ci = ev.mean_and_ci(c)
            panel[label] = {"mean": mean, "ci": ci}
        if key == "curves":
            opt = float(np.mean(r["optimum"]))
            panel["optimal"] = {"mean": np.full(c.shape[1], opt), "ci": None}
        panels[names[split]] = panel
    return panels


def _jsonable(results: dict) -> dict:
    out = {}
    for split, r in results.items():
        out[split] = {
            "curves": {k: {"mean": ev.mean_and_ci(v)[0].tolist(), "ci95": ev.mean_and_ci(v)[1].tolist(),
                           "rows": int(v.shape[0])} for k, v in r["curves"].items()},
            "regret": {k: {"mean": ev.mean_and_ci(v)[0].tolist(), "ci95": ev.mean_and_ci(v)[1].tolist()}
                       for k, v in r["regret"].items()},
            "optimal_mean_return": float(np.mean(r["optimum"])),
        }
    return out


def print_summary(setting: Setting, summary: dict) -> None:
    print(f"\n=== {setting.name}: in-context results ({setting.eval_episodes} episodes) ===")
    for split, s in summary.items():
        print(f"-- {'held-out' if split == 'test' else 'training'} tasks "
              f"(optimum {s['optimal_mean_return']:.3f}, {s['rollouts']} rollouts per model)")
        ks = setting.report_episodes
        unit = "pull" if "cumulative_regret" in s.get("source", {}) else "ep"
        print(f"{'':8s}" + "".join(f"{unit + ' ' + str(k):>10s}" for k in ks)
              + ("   cum.regret" if unit == "pull" else ""))
        for label in ("AD", "ED", "source", "random"):
            if label not in s:
                continue
            row = "".join(f"{s[label].get(f'by_episode_{k}', float('nan')):10.3f}" for k in ks)
            reg = s[label].get("cumulative_regret")
            print(f"{label:8s}{row}" + (f"   {reg:8.2f}" if reg is not None else ""))
        half = {label: s[label]["episodes_to_half_optimum"] for label in ("AD", "ED", "source")
                if "episodes_to_half_optimum" in s.get(label, {})}
        if half:
            print("episodes to half the optimum: " + ", ".join(
                f"{label} {'never' if k is None else k}" for label, k in half.items()))
        for label in ("AD", "ED"):
            imp = s.get(label, {}).get("improvement")
            if imp and imp["z"] is not None:
                e, l_ = imp["early_episodes"], imp["late_episodes"]
                print(f"{label} improvement, episodes {l_[0]}-{l_[1]} minus {e[0]}-{e[1]}: "
                      f"{imp['mean']:+.3f} ± {imp['se']:.3f} (SE over {imp['tasks']} tasks), "
                      f"z = {imp['z']:.1f}")


# DistillConfig fields experiments.run sets itself (from --data, --runs and --seeds)
_RESERVED = {"dataset": "--data", "out": "--runs", "seed": "--seeds", "model": "the flat fields"}


def _distill_configs(setting: Setting, seeds, with_ed: bool, data_dir: Path, runs_root,
                     distill_kw: dict, quiet: bool, num_devices: int) -> list[tuple[str, DistillConfig]]:
    """Every run's config, built (and so checked) before any work: ``[(label, config)]``."""
    env = envs.make(setting.env, **setting.env_overrides)
    configs = []
    for seed in seeds:
        config = DistillConfig.from_dict({
            **distill_kw, "dataset": str(data_dir), "seed": seed, "progress": not quiet,
            "out": str(Path(runs_root) / setting.name / f"ad-seed{seed}")},
            where=f"{setting.name} distill settings")
        configs.append(("ad", config))
        if with_ed:
            # ED: windows from the last training window's worth of steps of each history
            configs.append(("ed", dataclasses.replace(
                config, out=str(Path(runs_root) / setting.name / f"ed-seed{seed}"),
                last_steps=setting.ed_last_steps or config.window_steps)))
    for _, config in configs:
        ModelConfig.for_env(env, config.model)  # the architecture fits the env's spaces
        if config.batch_size % num_devices:
            raise ValueError(f"{setting.name} distill settings: batch_size={config.batch_size} "
                             f"must be divisible by the number of devices ({num_devices})")
        check_output_path(Path(config.out), "--runs")
    return configs


def run(setting: Setting, seeds=(0,), with_ed: bool = False, data_root="data", runs_root="runs",
        out_root="results", distill_overrides: dict | None = None, quiet: bool = False,
        temperature: float = 1.0) -> dict:
    # ---- one validation pass: nothing below starts before every value is checked ----
    ev.check_temperature(temperature)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seeds must be ints >= 0, got {seed!r}")
    distill_kw = {**setting.distill, **(distill_overrides or {})}
    data_dir = Path(data_root) / setting.name
    out_dir = Path(out_root) / setting.name
    collect_config = CollectConfig(
        out=data_dir, env=setting.env, env_overrides=setting.env_overrides,
        source=setting.source, source_overrides=setting.source_overrides,
        num_histories=setting.histories, split="train", seed=0,
        subsample_every=setting.subsample_every, subsample_steps=setting.subsample_steps,
        verbose=not quiet)
    dataset_spec(collect_config)  # env, source and their overrides
    configs = _distill_configs(setting, seeds, with_ed, data_dir, runs_root, distill_kw, quiet,
                               jax.device_count())
    check_output_path(data_dir, "--data")
    check_output_path(out_dir, "--out")

    t0 = time.time()
    timings = {}
    collect(collect_config)
    timings["collect_s"] = time.time() - t0
    ad_models, ed_models = [], []
    for label, config in configs:
        t = time.time()
        run_dir = distill(config)
        timings[f"distill_{label}_seed{config.seed}_s"] = time.time() - t
        (ad_models if label == "ad" else ed_models).append(load_model(run_dir))
    key = json_digest({"models": [model_files_digest(m.run_dir) for m in ad_models + ed_models],
                       "setting": dataclasses.asdict(setting), "seeds": list(seeds),
                       "with_ed": with_ed, "temperature": temperature})
    cached = _cached_evaluation(out_dir / "eval.json", key)
    if cached is not None:
        if not quiet:
            print(f"evaluate: reusing {out_dir / 'eval.json'} (same models, setting, seeds and "
                  f"temperature; delete it to recompute)")
            print_summary(setting, cached["summary"])
        return cached
    t = time.time()
    if not quiet:
        print(f"evaluate: computing (no finished evaluation of these models in {out_dir})")
    results = evaluate_setting(setting, ad_models, ed_models, quiet=quiet, temperature=temperature)
    timings["evaluate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    summary = summarise(setting, results)
    plot_curves(_panels(results), out_dir / "curves.png",
                title=f"{setting.name}: AD in context vs its source ({setting.source}), "
                      f"{len(seeds)} seed(s)",
                ylabel="reward per pull" if setting.eval_episodes and _is_bandit(envs.make(setting.env)) else "return per episode",
                xlabel="pull" if _is_bandit(envs.make(setting.env)) else "episode")
    if any(r["regret"] for r in results.values()):
        plot_curves(_panels(results, "regret"), out_dir / "regret.png",
                    title=f"{setting.name}: cumulative regret", ylabel="cumulative regret",
                    xlabel="pull")
    record = {"setting": dataclasses.asdict(setting), "seeds": list(seeds), "with_ed": with_ed,
              "distill": distill_kw, "temperature": temperature, "summary": summary, "timings": timings,
              "results": _jsonable(results), "evaluation_key": key, **provenance()}
    atomic_write_text(out_dir / "eval.json", json.dumps(record, indent=1))
    if not quiet:
        print_summary(setting, summary)
        print("\nwall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
        print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'curves.png'}")
    return record


def _cached_evaluation(path: Path, key: str) -> dict | None:
    """A finished evaluation of exactly these models and settings, or None (a partial or
    unreadable file is recomputed: it is written atomically, so only an edit makes one)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("evaluation_key") == key else None


def _parse_kv(items) -> dict:
    """``--distill-override KEY=VALUE`` items, each typed by its DistillConfig or ArchConfig
    field (lists as ``a,b``); ``SystemExit`` with a message naming the field otherwise."""
    types = {**field_types(ArchConfig), **field_types(DistillConfig)}
    out = {}
    for item in items or []:
        try:
            key, value = parse_override(item)
        except ValueError as e:
            raise SystemExit(f"--distill-override: {e}") from None
        if key in _RESERVED:
            raise SystemExit(f"--distill-override {key}: set by experiments.run from "
                             f"{_RESERVED[key]}, not an override")
        if key not in types:
            valid = sorted(set(types) - set(_RESERVED))
            raise SystemExit(f"--distill-override: unknown field {key!r}; valid fields: {valid}")
        try:
            out[key] = coerce_field(types[key], value, f"--distill-override {key}")
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return out


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description="Collect learning histories, distill AD (and optionally ED), and evaluate it "
                    "in context on held-out tasks against its source, a random policy and the "
                    "optimum. Every stage resumes when rerun.",
        epilog="settings: " + ", ".join(SETTINGS))
    p.add_argument("setting", choices=sorted(SETTINGS), help="which experiment to run")
    p.add_argument("--seeds", type=_seed, nargs="+", default=[0],
                   help="training seeds, ints >= 0 (default: 0)")
    p.add_argument("--ed", action="store_true", help="also train and evaluate Expert Distillation")
    p.add_argument("--data", default="data", help="root of the datasets (default: data)")
    p.add_argument("--runs", default="runs", help="root of the trained models (default: runs)")
    p.add_argument("--out", default="results", help="root of eval.json / curves.png (default: results)")
    p.add_argument("--distill-override", action="append", metavar="KEY=VALUE",
                   help="override a DistillConfig field, e.g. num_steps=500 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.add_argument("--cpu-devices", type=int, default=1, metavar="N",
                   help="on a CPU, split the host into N JAX devices so distillation runs data "
                        "parallel over them (batch sizes must divide by N; see "
                        "benchmarks/ad_throughput.py for the speed-up). Default 1")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="AD/ED act by sampling from softmax(logits / T) in evaluation: 1 is the "
                        "trained policy (default), < 1 sharper, > 1 flatter. Trained models are "
                        "reused, so a rerun with a new --out only re-evaluates")
    args = p.parse_args(argv)
    if not args.temperature > 0:
        p.error(f"--temperature must be > 0, got {args.temperature}")
    if args.cpu_devices < 1:
        p.error(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
    try:
        overrides = _parse_kv(args.distill_override)
    except SystemExit as e:
        p.error(str(e))
    reexec_with_hugepage_malloc()  # ~30% faster training steps on CPU (ad.utils)
    if args.cpu_devices > 1:  # before anything starts the backend
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    try:
        run(get_setting(args.setting), seeds=tuple(args.seeds), with_ed=args.ed,
            data_root=args.data, runs_root=args.runs, out_root=args.out,
            distill_overrides=overrides, quiet=args.quiet, temperature=args.temperature)
    except (ConfigError, IntegrityError, NonFiniteLossError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # a message naming the field or file, no traceback
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
