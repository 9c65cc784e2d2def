"""The AD paper's prompting check: prompted with a half-trained source, does a model improve?

    python -m experiments.prompting darkroom --seeds 0 --ed

Loads the models ``experiments.run`` trained (``<runs>/<setting>/{ad,ed}-seed<k>``; run
that first, with ``--ed`` for ED) and, on held-out tasks:

1. the source algorithm learns from scratch on each task (its full budget);
2. the *half-trained* point is the first episode ``e`` at which the source's mean return
   over tasks (smoothed over 10 episodes) reaches half the optimum (``--level 0.5``, the
   paper's; ``--level 0.9`` prompts with a nearly trained source instead: does a model
   hold a level its context shows?);
3. each model's KV cache is teacher-forced with that task's own source episodes
   ``e − P … e − 1``, the last ``P`` episodes before the half-trained point, where ``P``
   covers the model's receptive field (``ModelConfig.receptive_field`` steps; for varying
   episode lengths see below);
4. the model then acts in context for ``--episodes`` fresh episodes, sampling its actions.

AD distilled from *learning* histories should keep improving past the prompt's level;
Expert Distillation, trained only on final expert episodes, has never seen a context
that improves and is expected not to. Both are also shown without a prompt, beside the
source's own continuation from episode ``e`` (what it does next with gradient updates).

Writes ``<out>/<setting>/prompting.json`` (curves, summary, provenance) and
``prompting.png`` (``prompting-level<L>.{json,png}`` at another level). Episodes of
varying length (Key-to-Door ends at the door): the prompt is then the last
``receptive_field`` steps before the half-trained episode, whose first step may fall
mid-episode (fed as a stream start, at the edge of the receptive field); the summary
counts the whole episodes it holds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np

import envs
import source_agents
from ad import evaluate as ev
from ad.plots import plot_curves
from ad.checkpoints import load_model
from ad.utils import atomic_write_text, provenance, reexec_with_hugepage_malloc
from experiments.settings import SETTINGS, Setting, get_setting
from source_agents.history import LearningHistory


def trained_episode(source_curve: np.ndarray, optimum: float, level: float = 0.5,
                    smooth: int = 10) -> int:
    """First episode (0-based) whose smoothed mean return reaches ``level`` × the optimum."""
    if not 0 < level <= 1:
        raise ValueError(f"level must be in (0, 1], got {level}")
    mean = source_curve.mean(0)
    smoothed = np.convolve(mean, np.ones(smooth) / smooth, mode="valid")  # [i] = mean of i..i+smooth-1
    hits = np.flatnonzero(smoothed >= level * optimum)
    if not len(hits):
        raise ValueError(f"the source never reaches {level:g} of the optimum "
                         f"({level * optimum:.3f}); its best smoothed mean return is "
                         f"{smoothed.max():.3f}")
    return int(hits[0] + smooth // 2)


def episode_starts(done: np.ndarray, num_episodes: int) -> np.ndarray:
    """(N, num_episodes) step index at which each row's episodes 0, 1, … start."""
    starts = np.zeros((done.shape[0], num_episodes), np.int64)
    for i, row in enumerate(done):
        ends = np.flatnonzero(row)
        if len(ends) < num_episodes - 1:
            raise ValueError(f"row {i} has only {len(ends)} finished episodes, "
                             f"{num_episodes - 1} needed")
        starts[i, 1:] = ends[:num_episodes - 1] + 1
    return starts


def steps_before(history: LearningHistory, end: np.ndarray, steps: int) -> LearningHistory:
    """Steps ``end[i] − steps … end[i] − 1`` of each row ``i``, leaves (N, steps)."""
    idx = np.asarray(end)[:, None] - steps + np.arange(steps)[None]
    if idx.min() < 0:
        raise ValueError(f"a row has fewer than {steps} steps before its prompt end")

    def take(x):
        x = np.asarray(x)
        return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    return jax.tree.map(take, history)


def per_task(curve: np.ndarray, rows_per_model: int, rollouts_per_task: int) -> np.ndarray:
    """Each task's mean curve: rows are blocks of ``rows_per_model`` (one block per model),
    each task's ``rollouts_per_task`` rollouts adjacent (``ev.repeat_tasks``) -> (tasks, E)."""
    E = curve.shape[1]
    return curve.reshape(-1, rows_per_model // rollouts_per_task, rollouts_per_task, E).mean((0, 2))


def improvement(curve: np.ndarray, first=(0, 5), last=(-10, None)) -> dict:
    """Mean return over the last episodes minus the first ones, its SE across rows (pass
    ``per_task`` curves for the SE across tasks), z."""
    diff = curve[:, slice(*last)].mean(1) - curve[:, slice(*first)].mean(1)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    return {"first": float(curve[:, slice(*first)].mean()), "last": float(curve[:, slice(*last)].mean()),
            "gain": float(diff.mean()), "se": se, "z": float(diff.mean() / se) if se > 0 else None}


def run_prompting(setting: Setting | str, seeds=(0,), with_ed: bool = True, runs_root="runs",
                  out_root="results", episodes: int = 50, seed: int = 4321,
                  level: float = 0.5) -> dict:
    """Prompt the trained models of ``setting`` on held-out tasks (module docstring)."""
    setting = get_setting(setting) if isinstance(setting, str) else setting
    env = envs.make(setting.env, **setting.env_overrides)
    horizon = env.max_episode_steps
    runs = Path(runs_root) / setting.name
    models = {"AD": [load_model(runs / f"ad-seed{s}") for s in seeds]}
    if with_ed:
        models["ED"] = [load_model(runs / f"ed-seed{s}") for s in seeds]
    cfg = models["AD"][0].config

    key = jax.random.PRNGKey(seed)
    tasks = ev.eval_tasks(env, "test", setting.eval_tasks, key)
    rollouts = setting.eval_rollouts_per_task if env.finite_tasks else 1
    tasks = ev.repeat_tasks(tasks, rollouts)
    optimum = float(np.mean(jax.vmap(env.optimal_return)(tasks)))

    source = source_agents.get(setting.source)
    source_config = source_agents.make_config(source, setting.env, **setting.source_overrides)
    n = jax.tree.leaves(tasks)[0].shape[0]
    history, source_curve = ev.source_learning(source, source_config, env, tasks,
                                               jax.random.fold_in(key, 1))
    done = np.asarray(history.terminated | history.truncated)
    num_episodes = source_curve.shape[1]
    e = trained_episode(source_curve, optimum, level)
    starts = episode_starts(done, min(e + 1, num_episodes))
    receptive = cfg.receptive_field  # steps: the cache can use no more
    fixed = bool((np.diff(np.flatnonzero(done[0])) == horizon).all())
    if fixed:  # whole episodes covering the receptive field
        prompt_steps = min(e, math.ceil(receptive / horizon)) * horizon
    else:  # episodes vary (Key-to-Door): the last `receptive` steps, so the prompt's
        # first step may fall mid-episode; the model sees it as a stream start, at the
        # edge of what any later step can see
        prompt_steps = min(receptive, int(starts[:, e].min()))
    prompt = steps_before(history, starts[:, e], prompt_steps)
    in_prompt = (starts >= starts[:, e:e + 1] - prompt_steps)[:, :e]  # whole episodes inside
    prompt_episodes = float(in_prompt.sum(1).mean())

    curves = {}
    num_steps = episodes * horizon
    for label, ms in models.items():
        for prompted in (True, False):
            rows = [ev.episode_curve(ev.ad_rollout(m.params, m.config, env, tasks,
                                                   jax.random.fold_in(key, 100 + i), num_steps,
                                                   prompt=prompt if prompted else None), episodes)
                    for i, m in enumerate(ms)]
            curves[f"{label} ({'prompted' if prompted else 'no prompt'})"] = np.concatenate(rows)
    curves["source (continues)"] = source_curve[:, e:e + episodes]
    prompt_level = float(source_curve[:, :e][in_prompt].mean())

    summary = {"optimal_mean_return": optimum, "level": level, "prompt_episode": e + 1,
               "prompt_steps": prompt_steps, "prompt_episodes": prompt_episodes,
               "prompt_mean_return": prompt_level,
               "rows": n * len(seeds), "tasks": n // rollouts,
               # SE across tasks: each task's rollouts (and models) are averaged first
               **{k: improvement(per_task(v, n, rollouts)) for k, v in curves.items()}}
    panel = {k: {"mean": ev.mean_and_ci(v)[0], "ci": ev.mean_and_ci(v)[1],
                 **({"style": {"ls": "--", "lw": 1.0}} if "no prompt" in k else {})}
             for k, v in curves.items()}
    panel["prompt level"] = {"mean": np.full(episodes, prompt_level), "ci": None,
                             "style": {"color": "tab:orange", "ls": "-.", "lw": 1.0}}
    panel["optimal"] = {"mean": np.full(episodes, optimum), "ci": None}
    out_dir = Path(out_root) / setting.name
    stem = output_stem(level)
    plot_curves({"held-out tasks": panel}, out_dir / f"{stem}.png",
                title=f"{setting.name}: prompted with the source's last {prompt_steps} steps\n"
                      f"before episode {e + 1} (at {level:g} of the optimum)")
    record = {"setting": setting.name, "seeds": list(seeds), "episodes": episodes,
              "summary": summary,
              "curves": {k: {"mean": ev.mean_and_ci(v)[0].tolist(), "ci95": ev.mean_and_ci(v)[1].tolist()}
                         for k, v in curves.items()},
              **provenance()}
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=1))
    return record


def output_stem(level: float) -> str:
    """``prompting`` at the paper's level 0.5, else ``prompting-level<level>``."""
    return "prompting" if level == 0.5 else f"prompting-level{level:g}"


def print_summary(record: dict) -> None:
    s = record["summary"]
    print(f"\n=== {record['setting']}: prompting check (held-out, {s['rows']} rollouts per model "
          f"on {s['tasks']} tasks; SE across tasks) ===")
    print(f"source reaches {s['level']:g} of the optimum ({s['optimal_mean_return']:.2f}) at "
          f"episode {s['prompt_episode']}; prompt = its last {s['prompt_steps']} steps before it "
          f"({s['prompt_episodes']:.1f} whole episodes, mean return {s['prompt_mean_return']:.2f})")
    print(f"{'':22s}{'ep 1-5':>9s}{'last 10':>9s}{'gain':>8s}{'z':>7s}")
    for k, v in s.items():
        if isinstance(v, dict):
            z = f"{v['z']:7.1f}" if v["z"] is not None else "      -"
            print(f"{k:22s}{v['first']:9.2f}{v['last']:9.2f}{v['gain']:8.2f}{z}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.prompting", description=__doc__.split("\n")[0],
                                epilog="settings: " + ", ".join(SETTINGS))
    p.add_argument("setting", choices=sorted(SETTINGS), help="a setting trained by experiments.run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--ed", action="store_true", help="also prompt the ED models (run experiments.run --ed first)")
    p.add_argument("--episodes", type=int, default=50, help="episodes after the prompt (default: 50)")
    p.add_argument("--level", type=float, default=0.5,
                   help="prompt with the source's episodes before it first reaches this fraction "
                        "of the optimum (default: 0.5, half-trained, as in the paper)")
    p.add_argument("--runs", default="runs", help="root of the trained models (default: runs)")
    p.add_argument("--out", default="results", help="root of prompting.json / .png (default: results)")
    args = p.parse_args(argv)
    if not 0 < args.level <= 1:
        p.error(f"--level must be in (0, 1], got {args.level}")
    reexec_with_hugepage_malloc()
    record = run_prompting(args.setting, tuple(args.seeds), args.ed, args.runs, args.out,
                           args.episodes, level=args.level)
    print_summary(record)
    stem = output_stem(args.level)
    print(f"wrote {Path(args.out) / args.setting / stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
