"""Sparse autoencoders on a trained AD model's activations, end to end (docs/sae.md).

    python -m experiments.sae store  --run RUN --out DIR        # activation stores (train, test)
    python -m experiments.sae sweep  --stores DIR --out DIR     # SAE grid per hook + metrics
    python -m experiments.sae downstream --stores DIR --sweep DIR  # splice: return/KL recovered
    python -m experiments.sae label  --stores DIR --sweep DIR   # features vs ground truth
    python -m experiments.sae browse --stores DIR --sweep DIR --out site/   # static browser
    python -m experiments.sae summary --sweeps DIR [DIR ...] --out docs/sae  # figures + JSON

Each step is resumable (stores resume shard by shard; a sweep skips the widths whose
results exist) and writes JSON with its config and provenance. Stores, SAE weights and
generated pages belong under data/ or scratch, never in git.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np


def _store(args) -> None:
    from ad.interp.sae.store import StoreConfig, write_store

    hooks = tuple(args.hooks)
    splits = (("train", args.train_tasks, args.train_rollouts),
              ("test", args.test_tasks, args.test_rollouts))
    for split, num_tasks, rollouts in splits:
        cfg = StoreConfig(run=args.run, hooks=hooks, split=split, num_tasks=num_tasks,
                          rollouts_per_task=rollouts, num_steps=args.steps, seed=args.seed)
        store = write_store(Path(args.out) / split, cfg, shard_size=args.shard_size)
        print(f"{split}: {store.num_histories} histories x {store.num_steps} steps "
              f"({store.num_histories * store.num_steps:,} positions) -> {store.path}")


def _sweep(args) -> None:
    from ad.interp.sae.sweep import SweepConfig, run_sweep
    from ad.interp.sae.train import TrainConfig

    cfg = SweepConfig(hooks=tuple(args.hooks) if args.hooks else None,
                      train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                        lr=args.lr), seed=args.seed)
    records = run_sweep(args.stores, args.out, cfg)
    print(f"{'hook':28s} {'row':14s} {'setting':>8s} {'L0':>7s} {'FVU':>7s} {'cos':>6s} "
          f"{'dead':>5s}")
    for r in records:
        for i, s in enumerate(r["settings"]):
            t = r["test"]
            print(f"{r['hook']:28s} {r['row']:14s} {s:8g} {t['l0'][i]:7.2f} {t['fvu'][i]:7.4f} "
                  f"{t['cosine'][i]:6.3f} {t['dead'][i]:5.2f}")


def _downstream(args) -> None:
    from ad.interp.sae.downstream import DownstreamConfig, run_downstream

    cfg = DownstreamConfig(num_tasks=args.tasks, rollouts_per_task=args.rollouts,
                           num_steps=args.steps, seed=args.seed, kl_histories=args.kl_histories)
    for r in run_downstream(args.stores, args.sweep, cfg):
        rec = r["closed_loop"]["sae"]
        kl = r["action_kl"]["kl_recovered_vs_mean"]
        for i, s in enumerate(r["settings"]):
            ratios = {k: (f"{v:.2f}" if v is not None else "n.s.")
                      for k, v in rec[i]["recovered"].items() if k.endswith("_vs_mean")}
            print(f"{r['hook']:28s} {r['row']:14s} {s:8g} KL-rec {kl[i]:6.3f} {ratios}")


def _rows(sweep: Path, hook: str) -> list[dict]:
    """Every SAE of one hook of a sweep, one dict each (record + downstream, flattened)."""
    from ad.interp.sae.sweep import rows_of

    out = []
    for path in rows_of(sweep, hook):
        rec = json.loads(path.with_suffix(".json").read_text())
        ds_path = path.with_name(path.name + ".downstream.json")
        ds = json.loads(ds_path.read_text()) if ds_path.exists() else None
        for i, setting in enumerate(rec["settings"]):
            entry = {"hook": hook, "row": rec["row"], "kind": rec["kind"], "width": rec["width"],
                     "setting": setting, "index": i, "path": str(path),
                     **{k: v[i] for k, v in rec["test"].items()}}
            if ds is not None:
                entry["closed_loop"] = ds["closed_loop"]["sae"][i]
                entry["kl_recovered_vs_mean"] = ds["action_kl"]["kl_recovered_vs_mean"][i]
                entry["kl_recovered_vs_zero"] = ds["action_kl"]["kl_recovered_vs_zero"][i]
            out.append(entry)
    return out


def best_sae(rows: list[dict], max_fvu: float = 0.05) -> dict:
    """The rule for "the best SAE" of a hook: the lowest L0 among those with held-out
    FVU <= max_fvu (ties: lower FVU); if none qualifies, the lowest FVU."""
    ok = [r for r in rows if r["fvu"] <= max_fvu]
    return min(ok, key=lambda r: (r["l0"], r["fvu"])) if ok else min(rows, key=lambda r: r["fvu"])


def _final_resid(model, store) -> np.ndarray:
    """Held-out final residuals (the LayerNorm scale of the logit effects)."""
    name = f"blocks.{model.config.num_layers - 1}.hook_resid_post"
    if name in store.hooks:
        a = store.activations(name)
        return a.reshape(-1, a.shape[-1])[:20_000]
    from ad.hooks import run_with_hooks
    from ad.interp.streams import to_inputs

    st = store.stream()
    st = type(st)(*(jax.tree.map(lambda x: x[:16], f) for f in st))
    _, cache = run_with_hooks(model.params, model.config, to_inputs(st, model.config),
                              capture=[name])
    a = np.asarray(cache[name])
    return a.reshape(-1, a.shape[-1])


def _label(args) -> None:
    from ad import evaluate as ev
    from ad.checkpoints import load_model
    from ad.interp.sae.labels import causal_check, label_features, logit_effects
    from ad.interp.sae.models import init_params
    from ad.interp.sae.store import ActivationStore
    from ad.interp.sae.sweep import load_row, pick
    from ad.utils import atomic_write_text, provenance

    train = ActivationStore(Path(args.stores) / "train")
    test = ActivationStore(Path(args.stores) / "test")
    model = load_model(train.config["run"])
    for hook in train.hooks:
        target = Path(args.sweep) / hook / "labels.json"
        if target.exists() and not args.force:
            print(f"{target} exists (--force to redo)")
            continue
        best = best_sae(_rows(Path(args.sweep), hook))
        splice = pick(load_row(best["path"]).splice, best["index"])
        lab = label_features(splice, train, test, hook, positions=args.positions)
        # control: an untrained dictionary of the same family, width and input scale
        ctrl = splice.replace(params=init_params(splice.config, jax.random.key(args.seed + 7),
                                                 x_mean=splice.params["b_dec"]))
        lab_ctrl = label_features(ctrl, train, test, hook, positions=args.positions)
        effects = logit_effects(splice, model.params, _final_resid(model, test))
        ranked = sorted(((r["auroc"], r["feature"], r["variable"]) for r in lab["binary"]
                         if r["feature"] in lab["matched_features"]), reverse=True)
        top = []
        for _, f, _ in ranked:
            if f not in top:
                top.append(f)
        top = top[:args.causal_features]
        st = test.stream()
        st = type(st)(*(jax.tree.map(lambda x: x[:args.causal_histories], fld) for fld in st))
        tasks = ev.eval_tasks(model.env, "test", args.causal_tasks, jax.random.key(args.seed))
        causal = causal_check(model, hook, splice, top, st, tasks, jax.random.key(args.seed + 1),
                              args.causal_steps)
        np.savez_compressed(target.with_suffix(".npz"), auroc=lab["auroc"], corr=lab["corr"],
                            effects=effects)
        out = {"hook": hook, "best": {k: best[k] for k in best if k != "closed_loop"},
               "best_closed_loop": best.get("closed_loop"),
               "binary": lab["binary"], "continuous": lab["continuous"],
               "auroc_names": lab["auroc_names"], "corr_names": lab["corr_names"],
               "matched_features": lab["matched_features"], "num_features": lab["num_features"],
               "alive_features": lab["alive_features"], "positions": lab["positions"],
               "control_untrained": {"matched_features": lab_ctrl["matched_features"],
                                     "binary": lab_ctrl["binary"]},
               "causal": causal, "logit_effects_top": {str(f): effects[f].tolist() for f in top},
               **provenance()}
        atomic_write_text(target, json.dumps(out, indent=1) + "\n")
        print(f"{hook}: best {best['row']} setting {best['setting']} (L0 {best['l0']:.2f}, "
              f"FVU {best['fvu']:.4f}); {len(lab['matched_features'])} of "
              f"{lab['alive_features']} live features match a variable at AUROC >= 0.9 "
              f"(untrained control: {len(lab_ctrl['matched_features'])})")
        for r in lab["binary"]:
            if r["matches"]:
                print(f"   {r['variable']:18s} feature {r['feature']:5d} AUROC {r['auroc']:.3f} "
                      f"(shuffled max {r['control_max']:.3f}) bal.acc {r['balanced_accuracy']:.3f} "
                      f"matches {len(r['matches'])}")


def _browse(args) -> None:
    from ad.checkpoints import load_model
    from ad.interp.sae.browser import feature_data, write_site
    from ad.interp.sae.store import ActivationStore
    from ad.interp.sae.sweep import load_row, pick

    pages = []
    for stores, sweep in zip(args.stores, args.sweep):
        test = ActivationStore(Path(stores) / "test")
        model = load_model(test.config["run"])
        for hook in test.hooks:
            lab_path = Path(sweep) / hook / "labels.json"
            if not lab_path.exists():
                raise SystemExit(f"{lab_path}: missing; run `python -m experiments.sae label` first")
            lab = json.loads(lab_path.read_text())
            arrays = np.load(lab_path.with_suffix(".npz"))
            best = lab["best"]
            splice = pick(load_row(best["path"]).splice, best["index"])
            lab["auroc"] = arrays["auroc"]
            title = (f"{model.env_name} · {hook} · {best['row']} (setting {best['setting']}) · "
                     f"L0 {best['l0']:.2f} · FVU {best['fvu']:.3f}")
            pages.append(feature_data(splice, test, hook, lab, arrays["effects"], title))
    index = write_site(args.out, pages)
    print(f"wrote {index} ({len(pages)} SAE pages)")


KIND_STYLE = {"topk": "o", "batchtopk": "s", "jumprelu": "^", "relu": "x"}


def _recovered(entry: dict, metric: str):
    cl = entry.get("closed_loop")
    return None if cl is None else cl["recovered"].get(metric)


def _summary(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ad.utils import atomic_write_text, provenance

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"models": {}, **provenance()}
    for sweep, metric in zip(args.sweeps, args.metrics):
        sweep = Path(sweep)
        hooks = sorted(p.name for p in sweep.iterdir() if p.is_dir())
        fig, axes = plt.subplots(3, len(hooks), figsize=(4.4 * len(hooks), 10), squeeze=False)
        model_sum = {}
        for j, hook in enumerate(hooks):
            rows = _rows(sweep, hook)
            for kind, marker in KIND_STYLE.items():
                for width in sorted({r["width"] for r in rows if r["kind"] == kind}):
                    sel = sorted((r for r in rows if r["kind"] == kind and r["width"] == width),
                                 key=lambda r: r["l0"])
                    label = f"{kind} w{width}"
                    axes[0, j].plot([r["l0"] for r in sel], [r["fvu"] for r in sel],
                                    marker=marker, label=label)
                    pts = [(r["l0"], _recovered(r, metric)) for r in sel]
                    pts = [(a, b) for a, b in pts if b is not None]
                    if pts:
                        axes[1, j].plot(*zip(*pts), marker=marker, label=label)
                    kl = [(r["l0"], r["kl_recovered_vs_mean"]) for r in sel
                          if r.get("kl_recovered_vs_mean") is not None]
                    if kl:
                        axes[2, j].plot(*zip(*kl), marker=marker, label=label)
            axes[0, j].set(xscale="log", yscale="log", xlabel="L0 (held-out)",
                           ylabel="FVU (held-out)", title=hook)
            axes[1, j].axhline(1.0, color="k", lw=0.5)
            axes[1, j].set(xscale="log", xlabel="L0 (held-out)",
                           ylabel=f"{metric} recovered", title=hook)
            axes[2, j].axhline(1.0, color="k", lw=0.5)
            axes[2, j].set(xscale="log", xlabel="L0 (held-out)", ylim=(-0.05, 1.05),
                           ylabel="action-KL recovered (vs mean abl.)", title=hook)
            for ax in axes[:, j]:
                ax.set_xlim(left=0.8)  # dead ReLU settings (L0 << 1) are off the left edge
            best = best_sae(rows)
            lab_path = sweep / hook / "labels.json"
            lab = json.loads(lab_path.read_text()) if lab_path.exists() else None
            ds_files = sorted((sweep / hook).glob("*.downstream.json"))
            ds = json.loads(ds_files[0].read_text()) if ds_files else None
            model_sum[hook] = {
                "num_saes": len(rows),
                "baselines": None if ds is None else {
                    "raw": ds["closed_loop"]["raw"], "ablation_drop": ds["closed_loop"].get(
                        "ablation_drop"), "kl_zero": ds["action_kl"]["kl_zero"],
                    "kl_mean": ds["action_kl"]["kl_mean"], "config": ds["config"]},
                "best": {k: best.get(k) for k in ("row", "kind", "width", "setting", "l0", "fvu",
                                                  "mse", "cosine", "shrinkage", "dead",
                                                  "dense", "kl_recovered_vs_mean",
                                                  "kl_recovered_vs_zero")},
                "best_closed_loop": best.get("closed_loop"),
                "labels": None if lab is None else {
                    "matched_features": len(lab["matched_features"]),
                    "alive_features": lab["alive_features"],
                    "untrained_control_matched": len(lab["control_untrained"]["matched_features"]),
                    "matching_variables": [
                        {k: r[k] for k in ("variable", "feature", "auroc", "control_max",
                                           "balanced_accuracy")} | {"n_matches": len(r["matches"])}
                        for r in lab["binary"] if r["matches"]],
                    "causal": lab["causal"]},
                "grid": [{k: r.get(k) for k in ("row", "setting", "l0", "fvu", "cosine",
                                               "shrinkage", "dead", "dense",
                                               "kl_recovered_vs_mean")}
                         | {"recovered": (r.get("closed_loop") or {}).get("recovered"),
                            "raw": (r.get("closed_loop") or {}).get("raw")} for r in rows],
            }
        axes[0, 0].legend(fontsize=6)
        name = sweep.name.replace("sweep-", "")
        fig.suptitle(f"{name}: SAEs on held-out tasks (closed-loop recovery vs mean ablation)")
        fig.tight_layout()
        fig.savefig(out / f"pareto_{name}.png", dpi=90)
        plt.close(fig)
        summary["models"][name] = model_sum
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'summary.json'} and pareto_*.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.sae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("store", help="closed-loop activation stores on train and test tasks")
    s.add_argument("--run", required=True, help="trained model run directory")
    s.add_argument("--out", required=True, help="directory for <out>/train and <out>/test")
    s.add_argument("--hooks", nargs="+",
                   default=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
                   help="per-position hooks to record (default: both residual outputs)")
    s.add_argument("--steps", type=int, default=100, help="steps per rollout (default 100)")
    s.add_argument("--train-tasks", type=int, default=2048,
                   help="training-split tasks (finite task sets: at most the whole split)")
    s.add_argument("--train-rollouts", type=int, default=2, help="rollouts per training task")
    s.add_argument("--test-tasks", type=int, default=512, help="held-out tasks")
    s.add_argument("--test-rollouts", type=int, default=2, help="rollouts per held-out task")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=int, default=64, help="histories per shard")
    s.set_defaults(func=_store)

    s = sub.add_parser("sweep", help="train the SAE grid on <stores>/train, score on /test")
    s.add_argument("--stores", required=True, help="directory holding train/ and test/ stores")
    s.add_argument("--out", required=True, help="where SAE rows (weights + JSON) are saved")
    s.add_argument("--hooks", nargs="*", help="hooks to sweep (default: all stored)")
    s.add_argument("--steps", type=int, default=300, help="optimiser steps per SAE")
    s.add_argument("--batch-size", type=int, default=512, help="positions per step")
    s.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sweep)

    s = sub.add_parser("downstream", help="splice each SAE into held-out closed-loop rollouts "
                       "and teacher-forced replays (return / regret / action-KL recovered)")
    s.add_argument("--stores", required=True, help="directory holding train/ and test/ stores")
    s.add_argument("--sweep", required=True, help="the sweep's output directory")
    s.add_argument("--tasks", type=int, default=256, help="held-out tasks (default 256)")
    s.add_argument("--rollouts", type=int, default=1, help="rollouts per task")
    s.add_argument("--steps", type=int, default=100,
                   help="steps per rollout (bandit: pulls; Dark Room: 4000 = 200 episodes)")
    s.add_argument("--kl-histories", type=int, default=64,
                   help="held-out store histories replayed for the action-KL")
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=_downstream)

    s = sub.add_parser("label", help="label the best SAE of each hook by ground truth "
                       "(AUROC / correlation vs shuffled and untrained controls, logit "
                       "effects, causal zeroing of the top features)")
    s.add_argument("--stores", required=True)
    s.add_argument("--sweep", required=True)
    s.add_argument("--positions", type=int, default=20_000, help="positions sampled per store")
    s.add_argument("--causal-features", type=int, default=4, help="top matched features zeroed")
    s.add_argument("--causal-histories", type=int, default=32,
                   help="held-out histories replayed for the teacher-forced effect")
    s.add_argument("--causal-tasks", type=int, default=64, help="closed-loop held-out tasks")
    s.add_argument("--causal-steps", type=int, default=100, help="closed-loop steps")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="recompute existing labels")
    s.set_defaults(func=_label)

    s = sub.add_parser("browse", help="static HTML feature browser (opens from disk)")
    s.add_argument("--stores", nargs="+", required=True, help="store directories (one per model)")
    s.add_argument("--sweep", nargs="+", required=True, help="sweep directories, same order")
    s.add_argument("--out", required=True, help="site directory (never commit it)")
    s.set_defaults(func=_browse)

    s = sub.add_parser("summary", help="Pareto figures and one summary JSON over sweeps")
    s.add_argument("--sweeps", nargs="+", required=True, help="sweep directories")
    s.add_argument("--metrics", nargs="+", required=True,
                   help="recovered metric per sweep, e.g. regret_vs_mean return_ep200_vs_mean")
    s.add_argument("--out", required=True, help="output directory (e.g. docs/sae)")
    s.set_defaults(func=_summary)

    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
